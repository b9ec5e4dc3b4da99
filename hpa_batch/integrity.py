"""Damaged outputs: what is wrong with a file under ``results_dir``, found by a walk of the whole tree
(``hpa-batch validate --deep results/``), before a run schedules a job (:func:`refuse_damaged`), and
what ``hpa-batch repair`` removes. The top floor: it knows every stage's formats, nothing imports it
but the CLI, the repair tool and the Snakefile.

:data:`CHECKS` holds one check per output kind of :data:`hpa_batch.layout.RESULTS` (and per file of a
fold folder); :data:`NO_CHECK` names the kinds without one and why. A test keeps both in step with
``RESULTS``: a new output kind needs a line in one of them. Each check calls the check that lives
beside its format (:mod:`hpa_batch.core.tables`, :mod:`hpa_batch.core.stamps`,
:mod:`hpa_batch.models.checkpoint`, :mod:`hpa_batch.results.h5ad`, ...) and adds what only the tree
knows (row counts against the shard's cells table or tile store, a model file against its folder).
"""

from __future__ import annotations

import errno
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpa_batch.core.atomic import STAGING, temporary_of
from hpa_batch.core.errors import printable, reason_of
from hpa_batch.core.stamps import EmbeddingStamp, TileStamp, chunk_store_problem, read_record, store_kind
from hpa_batch.core.tables import parquet_problem, parquet_rows, text_table_problem
from hpa_batch.layout import FOLD_FILES, RESULTS, result, result_key

__all__ = [
    "CHECKS",
    "NO_CHECK",
    "Damage",
    "DamagedOutputsError",
    "check_output",
    "find_damaged",
    "leftover",
    "refuse_damaged",
    "results_root",
    "scan",
]


@dataclass(frozen=True)
class Damage:
    """One damaged output: the file (or store) and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{printable(self.path)}: {printable(self.reason)}"


@dataclass(frozen=True)
class Target:
    """An output to check: its path, the results tree it belongs to, its layout fields, how deep."""

    path: Path
    root: Path
    fields: dict[str, str] = field(default_factory=dict)
    deep: bool = False

    @property
    def shard(self) -> str:
        return self.fields.get("shard") or self.path.name.split(".")[0]


Check = Callable[[Target], "str | None"]


@dataclass(frozen=True)
class OutputCheck:
    """The check of one output kind; ``quick`` is what the pre-scheduling check runs (None: nothing,
    e.g. an image store, which conversion checks itself)."""

    full: Check
    quick: Check | None = None


# --------------------------------------------------------------------------------------- tables
#: Columns each table's readers need.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "manifest": ("image_id", "cell_line"),
    "cells": ("image_id", "cell_id"),
    "splits": ("image_id", "fold"),
    "predictions": ("image_id",),
    "cells_table": ("image_id", "cell_id"),
    "images_table": ("image_id",),
    "truth_pairs": ("image_id", "cell_id", "truth_cell_id", "iou"),
    "baseline_cells": ("image_id", "cell_id"),
}


#: Column prefixes each table's readers need at least one column of.
REQUIRED_PREFIXES: dict[str, tuple[str, ...]] = {"predictions": ("prob_",)}


def _table(key: str) -> Check:
    def check(t: Target) -> str | None:
        problem = parquet_problem(
            t.path, columns=REQUIRED_COLUMNS.get(key, ()), prefixes=REQUIRED_PREFIXES.get(key, ()), deep=t.deep
        )
        return f"{problem} (a {key} table has it)" if problem and problem.startswith("no column") else problem

    return check


def _predictions(t: Target) -> str | None:
    """A predictions table: its columns, one ``prob_*`` per class and, ``deep``, one row per row of the
    shard's tile store (cells, or images for an image-level model)."""
    problem = _table("predictions")(t)
    if problem is not None or not t.deep:
        return problem
    tiles = result(t.root, "tiles", shard=t.shard)
    stamp = read_record(tiles, TileStamp)
    if stamp is None:
        return None
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(t.path)
    names = pf.schema_arrow.names
    cell_ids = pf.read(columns=["cell_id"]).column(0).to_numpy() if "cell_id" in names else None
    cells = cell_ids is not None and bool((cell_ids >= 0).any())  # -1: an image model's rows
    expected, found = (stamp.n_cells if cells else stamp.n_images), pf.metadata.num_rows
    what = "cells" if cells else "images"
    return None if found == expected else f"{found} rows, but {tiles} holds {expected} {what}"


def _cells_rows(root: Path, shard: str, *, include_border: bool = True) -> int | None:
    """Rows of ``cells/{shard}.parquet`` (the non-border ones unless ``include_border``), None if absent."""
    path = result(root, "cells", shard=shard)
    if not path.is_file() or parquet_problem(path, columns=REQUIRED_COLUMNS["cells"]) is not None:
        return None  # no table to compare with (a damaged one is reported for itself)
    if include_border:
        return parquet_rows(path)
    import pyarrow.parquet as pq

    return int((~pq.read_table(path, columns=["border"]).column("border").to_numpy()).sum())


def _tsv(t: Target) -> str | None:
    return text_table_problem(t.path, "\t")


def _csv(t: Target) -> str | None:
    return text_table_problem(t.path, ",")


def _text(t: Target) -> str | None:
    try:
        t.path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text: {reason_of(exc)}"
    return None


# --------------------------------------------------------------------------------------- JSON
def _json_object(t: Target) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(t.path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 (text that does not parse is the damage)
        return None, f"not valid JSON: {reason_of(exc)}"
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    return data, None


def _json(t: Target) -> str | None:
    return _json_object(t)[1]


def _metrics(t: Target) -> str | None:
    data, problem = _json_object(t)
    if data is None:
        return problem
    from hpa_batch.results.metrics_file import metrics_problem

    return metrics_problem(data)


def _thresholds(t: Target) -> str | None:
    data, problem = _json_object(t)
    if data is None:
        return problem
    from hpa_batch.models.checkpoint import thresholds_problem

    return thresholds_problem(data)


# --------------------------------------------------------------------------------------- stores
def _tiles(t: Target) -> str | None:
    problem, stamp = chunk_store_problem(t.path, TileStamp, deep=t.deep)
    if problem is not None or stamp is None:
        return problem or "no readable stamp (zarr.json)"
    expected = _cells_rows(t.root, t.shard, include_border=bool(stamp.settings.get("include_border", True)))
    if expected is not None and expected != stamp.n_cells:
        cells = result(t.root, "cells", shard=t.shard)
        return f"{stamp.n_cells} cell tiles, but {cells} has {expected} cells to tile"
    return None


def _tiles_quick(t: Target) -> str | None:
    if read_record(t.path, TileStamp) is None:
        return "no readable stamp (zarr.json): an interrupted or overwritten tile store"
    return None


def _embeddings(t: Target) -> str | None:
    """An embedding store: sound on its own, and as many cells as the shard's tile store."""
    problem, stamp = chunk_store_problem(t.path, EmbeddingStamp, deep=t.deep)
    if problem is not None or stamp is None:
        return problem or "no readable stamp (zarr.json)"
    tiles = read_record(result(t.root, "tiles", shard=t.shard), TileStamp)
    if tiles is not None and tiles.n_cells != stamp.n_cells:
        return f"{stamp.n_cells} embeddings, but the shard's tile store has {tiles.n_cells} cells"
    return None


def _image_store(t: Target) -> str | None:
    from hpa_batch.convert.validate import validate_store

    problems = validate_store(t.path, deep=t.deep).problems
    return "; ".join(problems) if problems else None


def _spatialdata(t: Target) -> str | None:
    from hpa_batch.results.spatialdata import store_problem

    return store_problem(t.path, deep=t.deep)


# --------------------------------------------------------------------------------------- files
def _checkpoint(t: Target) -> str | None:
    from hpa_batch.models.checkpoint import checkpoint_problem

    return checkpoint_problem(t.path, deep=t.deep, model=t.fields.get("model"), fold=t.fields.get("fold"))


def _h5ad(t: Target) -> str | None:
    from hpa_batch.results.h5ad import h5ad_problem

    return h5ad_problem(t.path, deep=t.deep)


def _same(check: Check) -> OutputCheck:
    return OutputCheck(check, check)


CHECKS: dict[str, OutputCheck] = {
    "manifest": _same(_table("manifest")),
    "manifest_rejected": _same(_tsv),
    "store": OutputCheck(_image_store),
    "convert_summary": _same(_json),
    "rejected": _same(_tsv),
    "qc_table": _same(_tsv),
    "qc_summary": OutputCheck(_text),
    "segment_summary": _same(_json),
    "segment_qc": _same(_tsv),
    "cells": _same(_table("cells")),
    "tiles": OutputCheck(_tiles, _tiles_quick),
    "splits": _same(_table("splits")),
    "predictions": _same(_predictions),
    "embeddings": _same(_embeddings),
    "cells_table": _same(_table("cells_table")),
    "images_table": _same(_table("images_table")),
    "truth_pairs": _same(_table("truth_pairs")),
    "submission": OutputCheck(_csv),
    "baseline_cells": _same(_table("baseline_cells")),
    "baseline_summary": _same(_json),
    "metrics": _same(_metrics),
    "cells_h5ad": _same(_h5ad),
    "spatialdata": _same(_spatialdata),
    # the files of a fold folder (layout.FOLD_FILES), keyed as layout.result_key names them
    "fold:model.pt": _same(_checkpoint),
    "fold:history.csv": OutputCheck(_csv),
    "fold:thresholds.json": _same(_thresholds),
}
"""The check of every output kind (:data:`hpa_batch.layout.RESULTS` keys and ``fold:<file>``)."""

NO_CHECK: dict[str, str] = {
    "model_dir": "a folder: its fold folders' files are checked (fold:*)",
    "fold_dir": "a folder: its files are checked (fold:model.pt, fold:history.csv, fold:thresholds.json)",
    "baseline_model": "a scikit-learn pickle: loading it would run its code; written with baseline_summary",
    "report": "HTML for people, written last from checked inputs; nothing reads it",
    "report_figures": "a folder of PNGs embedded in the report; nothing reads them",
}
"""Output kinds without a check, and why."""

assert set(CHECKS) | set(NO_CHECK) == set(RESULTS) | {f"fold:{f}" for f in FOLD_FILES}, "integrity: unchecked kind"

#: Outside a results tree (a copied file), the suffix picks the check.
_BY_SUFFIX: dict[str, OutputCheck] = {
    ".parquet": _same(_table("")),
    ".pt": _same(_checkpoint),
    ".json": _same(_json),
    ".tsv": _same(_tsv),
    ".csv": OutputCheck(_csv),
    ".h5ad": _same(_h5ad),
}
_BY_STAMP: dict[str | None, OutputCheck] = {
    "tiles": CHECKS["tiles"],
    "embeddings": CHECKS["embeddings"],
    "spatialdata": CHECKS["spatialdata"],
}


def output_check(path: Path, root: Path) -> tuple[OutputCheck | None, Target]:
    """The check of ``path`` in the tree ``root`` (its layout key; else, for a zarr group, its stamp,
    an image store when it has none of another stage; else its suffix) and its target."""
    key, fields = result_key(root, path) or (None, {})
    target = Target(path, root, fields)
    if key is not None:
        return CHECKS.get(key), target
    if path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file()):
        return _BY_STAMP.get(store_kind(path), CHECKS["store"]), target
    return _BY_SUFFIX.get(path.suffix), target


def is_image_store(path: Path) -> bool:
    """Whether the zarr group ``path`` is checked as an image store (a shard store, an image group, a
    stray group), not as a tile, embedding or SpatialData store."""
    return output_check(path, results_root(path))[0] is CHECKS["store"]


def check_output(path: str | Path, results_dir: str | Path | None = None, *, deep: bool = False) -> str | None:
    """Why the output ``path`` is damaged, or None when it is sound (or of a kind without a check).

    Parameters
    ----------
    path : str or Path
        A file or store under ``results_dir`` (its layout key picks the check; outside it, the suffix
        or the store's stamp).
    deep : bool
        Decode everything (every parquet page, tile chunk, image level, the checkpoint); without it only
        what readers open first (footers, headers, store stamps).
    """
    path = Path(path)
    check, target = output_check(path, Path(results_dir) if results_dir is not None else path.parent)
    if check is None:
        return None
    return check.full(Target(target.path, target.root, target.fields, deep))


def _quick_problem(path: Path, root: Path) -> str | None:
    """What readers open first of ``path`` (:attr:`OutputCheck.quick`)."""
    check, target = output_check(path, root)
    return check.quick(target) if check is not None and check.quick is not None else None


# --------------------------------------------------------------------------------------- walking
def _outputs(results_dir: Path) -> Iterator[Path]:
    """Every output under ``results_dir``: files, and ``*.zarr`` stores as one each (not descended).

    Symbolic links are never followed (a link out of the tree, or a loop, is not walked): a link is
    yielded as one entry, which only its own name can make an output."""
    stack = [results_dir]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                yield entry
            elif entry.is_dir() and (entry.suffix == ".zarr" or entry.name.startswith(".")):
                yield entry  # a store, or a staging / temporary folder: one output each
            elif entry.is_dir():
                stack.append(entry)
            elif entry.is_file():
                yield entry


#: Staging folders of the stages that write a shard store: ``.{store}.staging``, ``.{store}.segment-staging``.
_STAGING = re.compile(r"^\.(?P<name>.+\.zarr)\.(" + "|".join(map(re.escape, STAGING.values())) + ")$")


@dataclass(frozen=True)
class Leftover:
    """What an interrupted write left beside an output: the output it stands for, the pid that wrote it
    (None for a staging folder), and why it is damage."""

    output: Path
    pid: int | None
    reason: str


def leftover(path: Path) -> Leftover | None:
    """``path`` as a temporary of :func:`hpa_batch.core.atomic.atomic_path` or a stage's staging folder;
    None for any other name (a user's hidden folder is not a leftover)."""
    found = temporary_of(path)
    if found is not None:
        return Leftover(found[0], found[1], "temporary file left by an interrupted write")
    m = _STAGING.match(path.name)
    if m:
        return Leftover(path.with_name(m.group("name")), None, "staging directory left by an interrupted run")
    return None


def scan(results_dir: str | Path, *, deep: bool = False, root: str | Path | None = None) -> tuple[int, list[Damage]]:
    """Check every output under ``results_dir`` (a results tree, or a folder of the tree ``root``): the
    number checked and the damaged ones, in path order. A link is checked only when its name is an
    output of the tree; the tree's own folder (``.hpa_batch``) is not an output."""
    folder = Path(results_dir)
    root = Path(root) if root is not None else folder
    checked, found = 0, []
    for path in _outputs(folder):
        left = leftover(path)
        reason = left.reason if left is not None else None
        if reason is None and path.name.startswith("."):
            continue
        if path.is_symlink() and result_key(root, path) is None:
            continue
        checked += 1
        reason = reason or _link_problem(path) or check_output(path, root, deep=deep)
        if reason:
            found.append(Damage(path, reason))
    if folder == root:  # outputs changed since their stage wrote them, though they still decode
        named = {d.path for d in found}
        found += [d for d in receipt_damage(root, deep_when_unsure=not deep) if d.path not in named]
    return checked, sorted(set(found), key=lambda d: str(d.path))


def _link_problem(path: Path) -> str | None:
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing"
    return None


def receipt_damage(root: Path, *, deep_when_unsure: bool) -> list[Damage]:
    """Outputs of the tree ``root`` that differ from their write receipts (:mod:`hpa_batch.core.receipts`).

    An output whose mtime moved with no digest to compare is decoded whole when ``deep_when_unsure``
    (and its receipt follows it when sound); otherwise it is left to the caller's own deep check."""
    from hpa_batch.core.receipts import changed, receipts, refresh

    found = []
    for path, entry in receipts(root):
        reason, unsure = changed(path, entry)
        if reason is None and unsure and deep_when_unsure:
            reason = check_output(path, root, deep=True)
            if reason is None:
                refresh(path)
        if reason:
            found.append(Damage(path, reason))
    return found


class DamagedOutputsError(Exception):
    """Outputs a new run would read are damaged: refused before any job is scheduled."""


def refuse_damaged(results_dir: str | Path) -> None:
    """Refuse a run over damaged outputs, before Snakemake schedules a job: a consumer that failed on
    one would otherwise be rerun after its own good outputs were deleted. Checks what every reader
    opens first (:attr:`OutputCheck.quick`: parquet footers, JSON, TSV, checkpoint archives, tile-store
    stamps), and every output against its write receipt (size, mtime, digest of small files, chunk
    sizes of tile and embedding stores): damage that still decodes, such as bytes overwritten in place,
    is refused too.

    Raises
    ------
    DamagedOutputsError
        Listing each damaged file with its reason and the repair command.
    """
    root = Path(results_dir)
    if not root.is_dir():
        return
    found = []
    for path in _outputs(root):
        if path.name.startswith("."):
            continue
        reason = _quick_problem(path, root)
        if reason:
            found.append(Damage(path, reason))
    named = {d.path for d in found}
    found += [d for d in receipt_damage(root, deep_when_unsure=True) if d.path not in named]
    if found:
        lines = "\n".join(f"  {d}" for d in found)
        raise DamagedOutputsError(
            f"{len(found)} output(s) under {printable(root)} are damaged; no job was started, so nothing was "
            f"deleted:\n{lines}\nrun: hpa-batch repair {shlex.quote(str(root))}  (it removes exactly these and "
            "prints the command that redoes them)"
        )


# --------------------------------------------------------------------------------------- validate / repair
def results_root(path: str | Path) -> Path:
    """The results folder ``path`` belongs to: the nearest ancestor under which it is a known output,
    spelt as ``path`` is (relative stays relative, so targets printed from it match the rules)."""
    for parent in Path(path).parents:
        if result_key(parent, path) is not None:
            return parent
    return Path(path).parent


def find_damaged(path: str | Path, *, deep: bool, root: str | Path | None = None) -> tuple[int, list[Damage]]:
    """(outputs checked, damaged ones) of a results folder (walked whole), a store or one file, in the
    results tree ``root`` (default: found from the path's layout).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path))
    if path.is_dir() and not path.is_symlink() and path.suffix != ".zarr":
        return scan(path, deep=deep, root=root)
    reason = _link_problem(path) or check_output(path, root if root is not None else results_root(path), deep=deep)
    return 1, [Damage(path, reason)] if reason else []
