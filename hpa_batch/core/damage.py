"""Damaged outputs: what is wrong with a file under ``results_dir``, found where it is read and by a walk
of the whole tree (``hpa-batch validate --deep results/``), and what ``hpa-batch repair`` removes.

Every output kind of :data:`hpa_batch.layout.RESULTS` has a check: parquet tables and predictions
(footer, the columns their readers need, every page decoded with ``deep``, row counts against the
shard's cells table), tile stores (stamp, array lengths against the cells table, every chunk present
and, with ``deep``, decoded), image stores (:func:`hpa_batch.convert.validate.validate_store`), model
checkpoints (a zip archive; with ``deep`` loaded as a safe checkpoint whose spec names its folder), JSON
outputs (``metrics.json``, summaries, thresholds), TSV tables and ``cells.h5ad``.

:class:`DamagedFileError` is the one error a stage raises for a damaged input: one line naming the
file, the reason and the repair command. :func:`reading` turns a decode failure inside a read into it.
"""

from __future__ import annotations

import json
import re
import shlex
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpa_batch.core.atomic import STAGING
from hpa_batch.layout import MODEL_FILE, result, result_key

__all__ = [
    "Damage",
    "DamagedFileError",
    "UnsafeCheckpointError",
    "check_output",
    "find_damaged",
    "printable",
    "reading",
    "results_root",
    "scan",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): an id or a reason printed
    into a log or a summary can never start a line of its own or drive the terminal."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


class DamagedFileError(Exception):
    """A stage's input cannot be decoded: ``<file> is damaged (<reason>): run hpa-batch repair <file>``."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:  # re-raised from its message (a DataLoader worker's exception)
            super().__init__(str(path))
            self.path, self.reason = Path(), ""
            return
        self.path, self.reason = Path(path), printable(reason)
        super().__init__(
            f"{printable(self.path)} is damaged ({self.reason}): run hpa-batch repair {printable(shlex.quote(str(self.path)))}"
            " (it removes the damaged file and prints the command that redoes it)"
        )

    @staticmethod
    def line_of(exc: BaseException) -> str | None:
        """The one "<file> is damaged (...)" line in ``exc``'s message (a worker's wraps it), or None."""
        for line in reversed(str(exc).splitlines()):
            if " is damaged (" in line:
                return line.split("DamagedFileError: ")[-1].strip()
        return None


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle refers to code (a global outside torch's safe list): never loaded;
    the message is "<file> is not a safe checkpoint (<global>)"."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


#: Errors a decoder raises on bytes that are not what they should be (a missing file is not damage).
def _is_decode_error(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, MemoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # a system error (disk full, I/O) is reported as such, not as damage
    return isinstance(exc, Exception)


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a decode failure of ``path`` inside the block into :class:`DamagedFileError` (a missing or
    unreadable file and system errors pass through unchanged)."""
    try:
        yield
    except DamagedFileError:
        raise
    except Exception as exc:
        if not _is_decode_error(exc):
            raise
        raise DamagedFileError(path, _reason(exc)) from exc


@dataclass(frozen=True)
class Damage:
    """One damaged output: the file (or store) and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{printable(self.path)}: {printable(self.reason)}"


#: Columns each table's readers need.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "manifest": ("image_id", "cell_line"),
    "cells": ("image_id", "cell_id"),
    "splits": ("image_id", "fold"),
    "predictions": ("image_id",),
    "cells_table": ("image_id", "cell_id"),
    "images_table": ("image_id",),
    "truth_pairs": ("image_id", "cell_id", "truth_cell_id", "iou"),
    "baseline_cells": ("image_id", "cell_id"),
}


# --------------------------------------------------------------------------------------- checks
def _parquet_problem(path: Path, key: str | None, deep: bool) -> str | None:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if deep:
            for k in range(pf.num_row_groups):
                pf.read_row_group(k)
    except Exception as exc:  # noqa: BLE001 (any decoder failure is the damage to report)
        return f"not a readable parquet table: {_reason(exc)}"
    missing = [c for c in _COLUMNS.get(key or "", ()) if c not in names]
    if missing:
        return f"no column {', '.join(missing)} (a {key} table has it)"
    if key == "predictions" and not any(n.startswith("prob_") for n in names):
        return "no prob_* column (a predictions table has one per class)"
    return None


def _rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 (the cells table's own check reports it)
        return None


def _cells_rows(results_dir: Path, shard: str, *, include_border: bool = True) -> int | None:
    """Rows of ``cells/{shard}.parquet`` (the non-border ones unless ``include_border``), None if absent."""
    path = result(results_dir, "cells", shard=shard)
    if not path.is_file() or _parquet_problem(path, "cells", deep=False) is not None:
        return None  # no table to compare with (a damaged one is reported for itself)
    if include_border:
        return _rows(path)
    import pyarrow.parquet as pq

    return int((~pq.read_table(path, columns=["border"]).column("border").to_numpy()).sum())


def _predictions_rows_problem(results_dir: Path, path: Path, shard: str) -> str | None:
    import pyarrow.parquet as pq

    tiles = result(results_dir, "tiles", shard=shard)
    stamp = _tiles_stamp(tiles)
    if stamp is None:
        return None
    pf = pq.ParquetFile(path)
    cell_ids = pf.read(columns=["cell_id"]).column(0).to_numpy() if "cell_id" in pf.schema_arrow.names else None
    what = "cells" if cell_ids is not None and bool((cell_ids >= 0).any()) else "images"  # -1: an image model
    expected, found = int(stamp[f"n_{what}"]), pf.metadata.num_rows
    return None if found == expected else f"{found} rows, but {tiles} holds {expected} {what}"


def _tiles_stamp(tiles: Path) -> dict | None:
    """The ``hpa_batch`` attributes of a tile store (``n_cells``, ``n_images``), None if unreadable."""
    try:
        stamp = json.loads((tiles / "zarr.json").read_text())["attributes"]["hpa_batch"]
        int(stamp["n_cells"]), int(stamp["n_images"])
    except Exception:  # noqa: BLE001 (the tile store's own check reports it)
        return None
    return stamp


def zarr_kind(path: Path) -> str | None:
    """A stage's zarr store told by its stamp when its path does not say (a copy outside a results
    tree): ``embeddings`` (an encoder's), ``tiles``, or None (an image store, or unknown)."""
    try:
        stamp = json.loads((path / "zarr.json").read_text())["attributes"]["hpa_batch"]
    except Exception:  # noqa: BLE001 (no stage stamp: not one of these)
        return None
    if "encoder" in stamp:
        return "embeddings"
    if "n_images" in stamp and "n_cells" in stamp:
        return "tiles"
    return None


def _open_stamped(path: Path) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The arrays and ``hpa_batch`` stamp of a zarr v3 store written by a stage."""
    import zarr

    with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp in a directory output
        warnings.simplefilter("ignore")
        group = zarr.open_group(path, mode="r", zarr_format=3)
        arrays = list(group.arrays())
    return arrays, dict(group.attrs).get("hpa_batch", {})


def _rows_problem(arrays: list[tuple[str, Any]], n: dict[str, int], deep: bool) -> str | None:
    """Each array's rows against the stamp's count of its axis (``image*`` arrays: images, the rest:
    cells), its missing chunks and, ``deep``, every chunk decoded."""
    for name, arr in arrays:
        axis = "image" if name.startswith("image") else "cell"  # images, image_id, image_features
        if arr.shape[0] != n[axis]:
            return f"array {name} has {arr.shape[0]} rows, the store's stamp says {n[axis]} {axis}s"
        if n[axis] and arr.nchunks_initialized < arr.nchunks:
            return f"array {name}: {arr.nchunks - arr.nchunks_initialized} of its {arr.nchunks} chunks are missing"
        if deep:
            step = arr.chunks[0]
            for start in range(0, arr.shape[0], step):
                try:
                    arr[start : start + step]
                except Exception as exc:  # noqa: BLE001 (a chunk that does not decode is the damage)
                    return f"array {name}, rows {start}-{min(start + step, arr.shape[0]) - 1}: {_reason(exc)}"
    return None


def _tiles_problem(path: Path, results_dir: Path, shard: str, deep: bool) -> str | None:
    try:
        arrays, stamp = _open_stamped(path)
        if not stamp.get("complete"):
            return "not stamped complete (an interrupted write)"
        n = {"cell": int(stamp["n_cells"]), "image": int(stamp["n_images"])}
        problem = _rows_problem(arrays, n, deep)
        if problem:
            return problem
    except Exception as exc:  # noqa: BLE001 (a store that does not open is the damage)
        return f"not a readable tile store: {_reason(exc)}"
    include = bool(stamp.get("settings", {}).get("include_border", True))
    expected = _cells_rows(results_dir, shard, include_border=include)
    if expected is not None and expected != n["cell"]:
        return f"{n['cell']} cell tiles, but {result(results_dir, 'cells', shard=shard)} has {expected} cells to tile"
    return None


def _embeddings_problem(path: Path, results_dir: Path, shard: str, deep: bool) -> str | None:
    """An embedding store: stamped complete, every array one row per cell, as many cells as the
    shard's tile store."""
    try:
        arrays, stamp = _open_stamped(path)
        if not stamp.get("complete"):
            return "not stamped complete (an interrupted write)"
        problem = _rows_problem(arrays, {"cell": int(stamp["n_cells"])}, deep)
        if problem:
            return problem
    except Exception as exc:  # noqa: BLE001 (a store that does not open is the damage)
        return f"not a readable embedding store: {_reason(exc)}"
    tiles = _tiles_stamp(result(results_dir, "tiles", shard=shard))
    if tiles is not None and int(tiles["n_cells"]) != int(stamp["n_cells"]):
        return f"{stamp['n_cells']} embeddings, but the shard's tile store has {tiles['n_cells']} cells"
    return None


def _checkpoint_problem(path: Path, fields: dict[str, str], deep: bool) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except Exception as exc:  # noqa: BLE001 (torch checkpoints are zip archives: this is the quick check)
        return f"not a torch checkpoint archive: {_reason(exc)}"
    if not deep:
        return None
    from hpa_batch.models.checkpoint import load_checkpoint, read_model

    try:
        if path.name != MODEL_FILE:  # a training state (state/last.pt, best.pt): loadable is enough
            load_checkpoint(path)
            return None
        ckpt = read_model(path)
    except UnsafeCheckpointError as exc:
        return str(exc).removeprefix(f"{path} ")
    except DamagedFileError as exc:
        return exc.reason
    spec = ckpt.get("spec", {})
    if fields.get("model") and spec.get("name") != fields["model"]:
        return f"holds model {spec.get('name')!r}, its folder is models/{fields['model']}"
    if fields.get("fold") is not None and str(ckpt.get("fold", fields["fold"])) != fields["fold"]:
        return f"holds fold {ckpt.get('fold')}, its folder is fold{fields['fold']}"
    return None


def _json_problem(path: Path, key: str | None) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 (text that does not parse is the damage)
        return f"not valid JSON: {_reason(exc)}"
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if key == "fold:thresholds.json" and not isinstance(data.get("thresholds"), list):
        return "no thresholds list"
    if key == "metrics":
        from hpa_batch.results.metrics_file import metrics_problem

        return metrics_problem(data)
    return None


def _text_table_problem(path: Path, sep: str) -> str | None:
    """A TSV / CSV table: UTF-8, and every row as many fields as its header (the csv module)."""
    import csv

    kind = "TSV" if sep == "\t" else "CSV"
    csv.field_size_limit(2**31 - 1)  # a submission's PredictionString holds every cell of an image
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter=sep)
            header = next(rows, None)
            for k, row in enumerate(rows, start=2):
                if header is not None and len(row) != len(header):
                    return f"not a readable {kind} table: line {k} has {len(row)} fields, the header {len(header)}"
    except (UnicodeDecodeError, csv.Error) as exc:
        return f"not a readable {kind} table: {_reason(exc)}"
    return None


def _h5ad_problem(path: Path, deep: bool) -> str | None:
    try:
        if deep:
            import anndata

            anndata.read_h5ad(path)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                list(f.keys())
    except Exception as exc:  # noqa: BLE001 (a file that does not open is the damage)
        return f"not a readable h5ad file: {_reason(exc)}"
    return None


def check_output(path: str | Path, results_dir: str | Path | None = None, *, deep: bool = False) -> str | None:
    """Why the output ``path`` is damaged, or None when it is sound (or of a kind without a check).

    Parameters
    ----------
    path : str or Path
        A file or store under ``results_dir`` (its layout key picks the check; outside it, the suffix).
    deep : bool
        Decode everything (every parquet page, tile chunk, image level, the checkpoint); without it only
        what readers open first (footers, headers, store stamps).
    """
    path = Path(path)
    root = Path(results_dir) if results_dir is not None else path.parent
    key, fields = result_key(root, path) or (None, {})
    shard = fields.get("shard") or path.name.split(".")[0]
    if path.suffix == ".zarr" and path.is_dir():
        key = key or zarr_kind(path)
        if key == "tiles":
            return _tiles_problem(path, root, shard, deep)
        if key == "embeddings":
            return _embeddings_problem(path, root, shard, deep)
        if key == "spatialdata":
            from hpa_batch.results.spatialdata import store_problem

            return store_problem(path, deep=deep)
        from hpa_batch.convert.validate import validate_store

        problems = validate_store(path, deep=deep).problems
        return "; ".join(problems) if problems else None
    if path.suffix == ".parquet":
        problem = _parquet_problem(path, key, deep)
        if problem is None and key == "predictions" and deep:
            problem = _predictions_rows_problem(root, path, shard)
        return problem
    if path.suffix == ".pt":
        return _checkpoint_problem(path, fields, deep)
    if path.suffix == ".json":
        return _json_problem(path, key)
    if path.suffix in (".tsv", ".csv"):
        return _text_table_problem(path, "\t" if path.suffix == ".tsv" else ",")
    if path.suffix == ".h5ad":
        return _h5ad_problem(path, deep)
    return None


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
    from hpa_batch.core.atomic import temporary_of

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


def _quick_problem(path: Path, root: Path) -> str | None:
    """What readers open first of ``path`` (no image store: conversion checks its own images)."""
    if path.suffix == ".zarr":
        key = (result_key(root, path) or ("", {}))[0]
        if key in ("spatialdata", "embeddings"):
            return check_output(path, root, deep=False)
        if key != "tiles":
            return None
        if _tiles_stamp(path) is None:
            return "no readable stamp (zarr.json): an interrupted or overwritten tile store"
        return None
    if path.suffix in (".parquet", ".pt", ".json", ".tsv", ".h5ad"):
        return check_output(path, root, deep=False)
    return None


def refuse_damaged(results_dir: str | Path) -> None:
    """Refuse a run over damaged outputs, before Snakemake schedules a job: a consumer that failed on
    one would otherwise be rerun after its own good outputs were deleted. Checks what every reader
    opens first (parquet footers, JSON, TSV, checkpoint archives, tile-store stamps), and every output
    against its write receipt (size, mtime, digest of small files, chunk sizes of tile and embedding
    stores): damage that still decodes, such as bytes overwritten in place, is refused too.

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
    import errno

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path))
    if path.is_dir() and not path.is_symlink() and path.suffix != ".zarr":
        return scan(path, deep=deep, root=root)
    reason = _link_problem(path) or check_output(path, root if root is not None else results_root(path), deep=deep)
    return 1, [Damage(path, reason)] if reason else []
