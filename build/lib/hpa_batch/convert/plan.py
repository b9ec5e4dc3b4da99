"""The shard plan: which images go into which cluster job.

A shard holds images of ONE cell line in sorted id order, ``shard_size`` at most, named
``{cell_line_slug}-{k:04d}``. A shard's membership depends only on its own cell line's ids and the
shard size, so adding a cell line to the config adds shards and leaves every other shard (and its
digest, which Snakemake sees as a param) untouched. The plan is computed from the metadata table alone
(one table read, no filesystem scan).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hpa_batch.config import Config, DatasetConfig

#: Canonical metadata columns after :func:`read_metadata`.
META_COLUMNS: tuple[str, ...] = ("image_id", "label_string", "cell_line", "row")
UNKNOWN_CELL_LINE = "unknown"


class PlanError(ValueError):
    """A metadata table or cell-line selection that cannot be planned."""


@dataclass(frozen=True)
class Shard:
    """One unit of cluster work.

    Attributes
    ----------
    name : str
        ``{cell_line_slug}-{k:04d}``.
    cell_line : str
        Cell line as spelled in the metadata.
    ids : tuple of str
        Image ids, sorted.
    digest : str
        Hash of the shard's metadata rows (ids, labels, cell line); changes iff a row changes.
    """

    name: str
    cell_line: str
    ids: tuple[str, ...]
    digest: str


def slugify(cell_line: str) -> str:
    """File-name-safe lower-case slug of a cell line: ``"U-2 OS"`` -> ``"u-2-os"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", cell_line.strip().lower()).strip("-")
    return slug or UNKNOWN_CELL_LINE


def read_metadata(dataset: DatasetConfig) -> pd.DataFrame:
    """Read the metadata table into canonical columns.

    Returns
    -------
    pandas.DataFrame
        Columns ``image_id`` (str), ``label_string`` (str or None), ``cell_line`` (str),
        ``row`` (int, 0-based row in the file), in file order. Duplicated ids are kept (the
        manifest step refuses them with a reason).

    Raises
    ------
    PlanError
        Missing file or missing column, naming the file.
    """
    path = Path(dataset.metadata)
    if not path.is_file():
        raise PlanError(f"metadata table {path} does not exist")
    if path.suffix.lower() == ".parquet":
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    needed = [c for c in (dataset.id_column, dataset.cell_line_column, dataset.label_column) if c is not None]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        hint = (
            "; set dataset.cell_line_column: null for a table without cell lines (the public 2021 "
            "table has only ID,Label)"
            if dataset.cell_line_column in missing
            else ""
        )
        raise PlanError(f"metadata table {path}: missing column(s) {missing}; has {list(raw.columns)}{hint}")
    labels = raw[dataset.label_column] if dataset.label_column else pd.Series([None] * len(raw))
    if dataset.cell_line_column is None:  # every image in cell line "unknown": shards unknown-0000, ...
        cell_lines = pd.Series([UNKNOWN_CELL_LINE] * len(raw), index=raw.index)
    else:
        cell_lines = raw[dataset.cell_line_column].fillna(UNKNOWN_CELL_LINE).astype(str).str.strip()
    return pd.DataFrame(
        {
            "image_id": raw[dataset.id_column].fillna("").astype(str).str.strip(),
            "label_string": labels.astype(object).where(labels.notna(), None).values,
            "cell_line": cell_lines.replace("", UNKNOWN_CELL_LINE).values,
            "row": range(len(raw)),
        }
    )


def select_cell_lines(meta: pd.DataFrame, wanted: Iterable[str] | None) -> list[str]:
    """Cell lines to process, sorted; ``None`` means all present in the table.

    Raises
    ------
    PlanError
        A requested cell line absent from the table, or two cell lines with the same slug.
    """
    present = sorted(set(meta["cell_line"]))
    slugs: dict[str, str] = {}
    for line in present:
        other = slugs.setdefault(slugify(line), line)
        if other != line:
            raise PlanError(f"cell lines {other!r} and {line!r} have the same slug {slugify(line)!r}")
    if wanted is None:
        return present
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise PlanError(f"cell line(s) {unknown} from the config are not in the metadata; known: {present}")
    return sorted(set(wanted))


def _digest(rows: pd.DataFrame) -> str:
    h = hashlib.sha1()
    for image_id, label, line in zip(rows["image_id"], rows["label_string"], rows["cell_line"]):
        h.update(f"{image_id}\t{label}\t{line}\n".encode())
    return h.hexdigest()[:16]


def plan_cell_line(meta: pd.DataFrame, cell_line: str, shard_size: int) -> list[Shard]:
    """Shards of one cell line: its unique ids in sorted order, cut every ``shard_size``.

    An id that occurs more than once belongs to the cell line of its first occurrence.
    """
    first = meta.drop_duplicates("image_id", keep="first")
    rows = meta[meta["image_id"].isin(first.loc[first["cell_line"] == cell_line, "image_id"])]
    rows = rows.sort_values(["image_id", "row"], kind="stable")
    ids = list(dict.fromkeys(rows["image_id"]))
    slug = slugify(cell_line)
    shards = []
    for k, start in enumerate(range(0, len(ids), shard_size)):
        chunk = ids[start : start + shard_size]
        chunk_rows = rows[rows["image_id"].isin(chunk)]
        shards.append(Shard(f"{slug}-{k:04d}", cell_line, tuple(chunk), _digest(chunk_rows)))
    return shards


def plan_shards(meta: pd.DataFrame, cell_lines: Iterable[str] | None, shard_size: int) -> list[Shard]:
    """All shards for the selected cell lines, ordered by cell line then index."""
    if shard_size < 1:
        raise PlanError(f"shard_size must be >= 1, got {shard_size}")
    return [shard for line in select_cell_lines(meta, cell_lines) for shard in plan_cell_line(meta, line, shard_size)]


def check_images_dirs(cfg: Config) -> None:
    """Refuse a configured image directory that does not exist, before any job runs (otherwise every
    image would be refused as "missing red channel", never naming the directory).

    Raises
    ------
    PlanError
        Naming every missing directory.
    """
    missing = [str(d) for d in cfg.dataset.images_dirs if not Path(d).is_dir()]
    if missing:
        raise PlanError(f"dataset.images_dirs: {', '.join(missing)} does not exist (or is not a directory)")


def plan_from_config(cfg: Config) -> list[Shard]:
    """Read the configured metadata table and plan its shards."""
    return plan_shards(read_metadata(cfg.dataset), cfg.cell_lines, cfg.shard_size)


def find_shard(cfg: Config, name: str) -> tuple[Shard, pd.DataFrame]:
    """Recompute one shard by name (only its cell line is planned) and return it with the table.

    Raises
    ------
    PlanError
        If no shard of that name exists under this config.
    """
    meta = read_metadata(cfg.dataset)
    lines = {slugify(c): c for c in select_cell_lines(meta, None)}
    slug = name.rsplit("-", 1)[0]
    if slug in lines:
        for shard in plan_cell_line(meta, lines[slug], cfg.shard_size):
            if shard.name == name:
                return shard, meta
    raise PlanError(f"no shard named {name!r} in {cfg.dataset.metadata} with shard_size {cfg.shard_size}")
