"""The manifest stage: admit or refuse every image of a shard, cheaply, before any decoding.

Checks per image (each refusal is a row in the shard's rejected table with a reason):
id safe as a path component, labels known to the catalog, all four channel files present and not
empty, every header readable, 2-D grayscale, uint8/uint16, the four shapes equal, size within the
configured limits. Pixel decoding (truncated files) is checked during conversion.

An id listed more than once in the metadata: identical rows (same labels and cell line) are admitted
once with a ``warning`` in the manifest row (and the log); rows that disagree refuse the id with a
reason that quotes every row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from hpa_batch import CHANNELS
from hpa_batch.config import Config
from hpa_batch.convert.imageio import ImageHeader, ImageReadError, find_channel_file, probe
from hpa_batch.convert.plan import Shard, check_images_dirs, plan_shards, read_metadata
from hpa_batch.convert.validate import Report
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.labels import LabelCatalog, LabelError, format_labels, parse_labels
from hpa_batch.core.progress import get_logger
from hpa_batch.core.tables import read_parquet, with_classes, write_table

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("cell_line", pa.string()),
        ("labels", pa.list_(pa.int16())),
        ("label_string", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source_dtype", pa.string()),
        *[(f"path_{c}", pa.string()) for c in CHANNELS],
        ("source_bytes", pa.int64()),
        ("warning", pa.string()),
    ]
)

REJECTED_COLUMNS: tuple[str, ...] = ("image_id", "shard", "cell_line", "stage", "reason")


class Rejection(ValueError):
    """An image refused by a check; the message is the reason recorded in QC."""


@dataclass(frozen=True)
class ShardManifest:
    """Admitted and refused images of a shard.

    Attributes
    ----------
    admitted : pandas.DataFrame
        Rows following :data:`MANIFEST_SCHEMA`, sorted by ``image_id``.
    rejected : pandas.DataFrame
        Columns :data:`REJECTED_COLUMNS`.
    """

    admitted: pd.DataFrame
    rejected: pd.DataFrame


def _check_id(image_id: str, rows: pd.DataFrame) -> str | None:
    """Refuse unsafe ids and conflicting duplicate rows; return a warning for identical duplicates.

    ``rows`` are the metadata rows of this id (canonical columns, ``row`` 0-based after the header).
    """
    if not SAFE_ID.fullmatch(image_id) or ".." in image_id:
        raise Rejection(f"id {image_id!r} is not safe as a path component ([A-Za-z0-9._-], no '..')")
    if len(rows) < 2:
        return None
    lines = ", ".join(str(int(r) + 2) for r in rows["row"])
    values = rows[["label_string", "cell_line"]].astype(str).drop_duplicates()
    if len(values) == 1:
        return f"id listed {len(rows)} times in the metadata table (lines {lines}) with identical rows; one kept"
    quoted = "; ".join(
        f"line {int(r.row) + 2}: labels {r.label_string!r}, cell line {r.cell_line!r}" for r in rows.itertuples()
    )
    raise Rejection(f"id listed {len(rows)} times in the metadata table with conflicting rows: {quoted}")


def _check_labels(label_string: str | None, cfg: Config) -> tuple[int, ...]:
    if cfg.dataset.label_column is None:
        return ()
    try:
        return parse_labels(label_string, cfg.catalog, cfg.dataset.label_separator)
    except LabelError as exc:
        raise Rejection(f"labels: {exc}") from None


def _check_channels(image_id: str, cfg: Config) -> tuple[dict[str, Path], ImageHeader]:
    paths: dict[str, Path] = {}
    headers: dict[str, ImageHeader] = {}
    for channel in CHANNELS:
        path = find_channel_file(cfg.dataset.images_dirs, image_id, channel, cfg.dataset.extensions)
        if path is None:
            tried = "|".join(cfg.dataset.extensions)
            raise Rejection(f"missing {channel} channel ({image_id}_{channel}.{{{tried}}} not found)")
        try:
            headers[channel] = probe(path)
        except ImageReadError as exc:
            raise Rejection(str(exc)) from None
        paths[channel] = path
    shapes = {c: h.shape for c, h in headers.items()}
    if len(set(shapes.values())) != 1:
        raise Rejection(f"channel shapes differ: {shapes}")
    dtypes = {c: h.dtype for c, h in headers.items()}
    if len(set(dtypes.values())) != 1:
        raise Rejection(f"channel dtypes differ: {dtypes}")
    header = headers[CHANNELS[0]]
    height, width = header.shape
    if height * width > cfg.qc.max_pixels:
        raise Rejection(f"{height}x{width} exceeds qc.max_pixels={cfg.qc.max_pixels}")
    if min(height, width) < cfg.qc.min_side:
        raise Rejection(f"{height}x{width} is below qc.min_side={cfg.qc.min_side}")
    return paths, header


def build_manifest(cfg: Config, shard: Shard, meta: pd.DataFrame) -> ShardManifest:
    """Check every image of ``shard`` and split it into admitted and refused rows.

    Parameters
    ----------
    cfg : Config
        Validated configuration.
    shard : Shard
        The shard (from :func:`hpa_batch.convert.plan.find_shard`).
    meta : pandas.DataFrame
        Canonical metadata table (:func:`hpa_batch.convert.plan.read_metadata`).
    """
    check_images_dirs(cfg)
    wanted = meta[meta["image_id"].isin(set(shard.ids))]
    by_id = {k: g for k, g in wanted.groupby("image_id", sort=False)}
    rows = wanted.drop_duplicates("image_id").set_index("image_id")
    admitted, rejected = [], []
    for image_id in shard.ids:
        label_string = rows.at[image_id, "label_string"]
        try:
            warning = _check_id(image_id, by_id[image_id])
            labels = _check_labels(label_string, cfg)
            paths, header = _check_channels(image_id, cfg)
        except Rejection as exc:
            rejected.append((image_id, shard.name, shard.cell_line, "manifest", str(exc)))
            continue
        admitted.append(
            {
                "image_id": image_id,
                "shard": shard.name,
                "cell_line": shard.cell_line,
                "labels": list(labels),
                "label_string": format_labels(labels, cfg.catalog) if labels else None,
                "height": header.shape[0],
                "width": header.shape[1],
                "source_dtype": header.dtype,
                **{f"path_{c}": str(p) for c, p in paths.items()},
                "source_bytes": sum(p.stat().st_size for p in paths.values()),
                "warning": warning,
            }
        )
        if warning:
            get_logger().warning("manifest %s: %s: %s", shard.name, image_id, warning)
    return ShardManifest(
        admitted=pd.DataFrame(admitted, columns=MANIFEST_SCHEMA.names),
        rejected=pd.DataFrame(rejected, columns=list(REJECTED_COLUMNS)),
    )


def write_manifest(manifest: ShardManifest, parquet_path: Path, rejected_path: Path, catalog: LabelCatalog) -> None:
    """Write the admitted table (parquet, naming ``catalog``'s classes of its ``labels`` in its metadata)
    and the refused table (TSV), each atomically."""
    write_table(manifest.admitted, with_classes(MANIFEST_SCHEMA, catalog), parquet_path)
    write_rejected(manifest.rejected, rejected_path)


def write_rejected(rejected: pd.DataFrame, path: Path) -> None:
    """Write a rejected-images TSV atomically (header only when nothing was refused)."""
    with atomic_path(path) as tmp:
        rejected.reindex(columns=list(REJECTED_COLUMNS)).to_csv(tmp, sep="\t", index=False)


def read_rejected(path: Path) -> pd.DataFrame:
    """Read a rejected-images TSV (all columns as strings)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest parquet written by :func:`write_manifest`."""
    return read_parquet(path)


def validate_dataset(cfg: Config) -> tuple[Report, pd.DataFrame]:
    """Run the manifest checks over every planned shard of the configured dataset.

    Returns
    -------
    Report, pandas.DataFrame
        Report over all images; the refused rows (image_id, shard, cell_line, stage, reason).
    """
    meta = read_metadata(cfg.dataset)
    report = Report()
    refused = []
    for shard in plan_shards(meta, cfg.cell_lines, cfg.shard_size):
        manifest = build_manifest(cfg, shard, meta)
        report.checked += len(shard.ids)
        refused.append(manifest.rejected)
        report.problems += [f"{r.image_id}: {r.reason}" for r in manifest.rejected.itertuples()]
    table = pd.concat(refused, ignore_index=True) if refused else pd.DataFrame()
    return report, table
