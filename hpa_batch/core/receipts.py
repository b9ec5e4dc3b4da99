"""Write receipts: what each finished output of a results tree was when its stage wrote it, so that damage
that leaves a file readable (bytes overwritten in place, a chunk cut short) is found before a run reads it.

A stage run through ``hpa-batch`` drops the receipts of its outputs when it takes their locks and writes
new ones once it has succeeded (:func:`record`); a failed or interrupted stage leaves none, so an output
without a receipt is checked as before, by what its readers open first. A receipt lives at
``<results_dir>/.hpa_batch/receipts/<output path>.json``:

* a file: size, mtime and, up to :data:`SMALL_FILE` bytes, its SHA-256;
* a tile or embedding store: each file's size and mtime (its chunks; image stores are rewritten in place
  by segmentation and checked by conversion, SpatialData stores hold links: neither gets one);
* a folder that is not a store (a trained fold): each file directly in it, as files.

:func:`changed` compares an output with its receipt: same size and mtime is sound; a size that differs
or a file gone is damage; a new mtime with the same SHA-256 is a copy or a touch (the receipt follows);
a new mtime without a digest to compare is left to the caller's deep check (:func:`refresh` then).
Snakemake touches each output file after its job (``check_and_touch_output``), so the first check after
a job re-hashes that job's small files (or decodes a large one) once and refreshes their receipts; the
chunk files inside a store are not touched.

Imports nothing of the package above :mod:`hpa_batch.core`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from hpa_batch.core.stamps import EmbeddingStamp, TileStamp, store_kind
from hpa_batch.core.tree import find_tree, tree_dir

__all__ = ["SMALL_FILE", "changed", "drop", "receipts", "record", "refresh"]

#: Files up to this size get a content digest in their receipt (hashing them at the pre-run check
#: costs ~0.1 s each; larger ones are deep-checked when their mtime changes).
SMALL_FILE = 64 << 20
#: Store kinds whose chunk files get a receipt (by their path's suffix and stamp, see :func:`_kind`).
_RECEIPT = "receipts"


def _rel(root: Path, path: Path) -> Path | None:
    try:
        rel = Path(os.path.relpath(path, root))
    except ValueError:
        return None
    return None if rel.parts and rel.parts[0] == ".." else rel


def _receipt_file(root: Path, rel: Path) -> Path:
    return tree_dir(root) / _RECEIPT / f"{rel}.json"


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks: the one file digest of the package (receipts,
    encoder weight files, a trained baseline's model)."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _file_entry(path: Path, *, digest: bool = True) -> dict:
    st = path.stat()
    entry: dict[str, int | str] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if digest and st.st_size <= SMALL_FILE:
        entry["sha256"] = file_sha256(path)
    return entry


def _store_files(store: Path) -> dict[str, list[int]]:
    """Every file of a store (not hidden, links not followed): relative path -> [size, mtime_ns]."""
    out = {}
    for folder, dirs, names in os.walk(store):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            st = path.lstat()
            out[str(path.relative_to(store))] = [st.st_size, st.st_mtime_ns]
    return out


def _is_chunk_store(path: Path) -> bool:
    """A tile or embedding store (stamped rows, written once): not an image or SpatialData store."""
    return store_kind(path) in (TileStamp.kind, EmbeddingStamp.kind)


def _entries(output: Path) -> Iterator[tuple[Path, dict]]:
    """(path, receipt) of what ``output`` writes: a file, a chunk store, or the files of a folder."""
    if output.is_symlink() or not output.exists():
        return
    if output.is_file():
        yield output, {"kind": "file", **_file_entry(output)}
    elif output.suffix == ".zarr":
        if _is_chunk_store(output):
            yield output, {"kind": "store", "files": _store_files(output)}
    else:
        for child in sorted(output.iterdir()):
            if child.is_file() and not child.is_symlink() and not child.name.startswith("."):
                yield child, {"kind": "file", **_file_entry(child)}


def drop(output: str | Path) -> None:
    """Remove the receipts of ``output`` (its stage is about to rewrite it)."""
    output = Path(output)
    root = find_tree(output.parent)
    rel = _rel(root, output) if root is not None else None
    if root is None or rel is None:
        return
    receipt = _receipt_file(root, rel)
    receipt.unlink(missing_ok=True)
    folder = receipt.with_suffix("")  # the receipts of a folder's files
    if folder.is_dir():
        for child in folder.glob("*.json"):
            child.unlink(missing_ok=True)


def _write(root: Path, path: Path, entry: dict) -> None:
    rel = _rel(root, path)
    if rel is None:
        return
    receipt = _receipt_file(root, rel)
    receipt.parent.mkdir(parents=True, exist_ok=True)
    tmp = receipt.with_name(f".{receipt.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(rel), **entry}), encoding="utf-8")
    os.replace(tmp, receipt)


def record(output: str | Path) -> int:
    """Write the receipts of a finished ``output`` of a results tree; the number written (0 outside a
    tree, for a missing output or a store kind without receipts)."""
    output = Path(output)
    root = find_tree(output.parent)
    if root is None:
        return 0
    n = 0
    for path, entry in _entries(output):
        _write(root, path, entry)
        n += 1
    return n


def receipts(root: str | Path) -> Iterator[tuple[Path, dict]]:
    """(output path, receipt) of every receipt of the tree ``root``, in path order."""
    root = Path(root)
    base = tree_dir(root) / _RECEIPT
    if not base.is_dir():
        return
    for receipt in sorted(base.rglob("*.json")):
        if receipt.name.startswith("."):
            continue
        try:
            entry = json.loads(receipt.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        yield root / entry.get("path", str(receipt.relative_to(base).with_suffix(""))), entry


def changed(path: Path, entry: dict) -> tuple[str | None, bool]:
    """Compare an output with its receipt: (the damage, or None; whether a deep check must decide).

    A missing output is no damage here (a repair removed it, or Snakemake will write it)."""
    if not path.exists() or path.is_symlink():
        return None, False
    if entry.get("kind") == "store":
        return _store_changed(path, entry.get("files", {}))
    st = path.stat()
    if st.st_size != entry.get("size"):
        return f"changed since it was written: {st.st_size} bytes, its stage wrote {entry.get('size')}", False
    if st.st_mtime_ns == entry.get("mtime_ns"):
        return None, False
    if "sha256" in entry:
        if file_sha256(path) != entry["sha256"]:
            return "changed since it was written: same size, other content (overwritten in place)", False
        refresh(path)
        return None, False
    return None, True


def _store_changed(store: Path, files: dict[str, list[int]]) -> tuple[str | None, bool]:
    now = _store_files(store)
    missing = sorted(set(files) - set(now))
    if missing:
        return f"changed since it was written: {len(missing)} file(s) gone, e.g. {missing[0]}", False
    sizes = sorted(k for k in files if now[k][0] != files[k][0])
    if sizes:
        k = sizes[0]
        return f"changed since it was written: {k} is {now[k][0]} bytes, its stage wrote {files[k][0]}", False
    return None, any(now[k][1] != files[k][1] for k in files)


def refresh(path: Path) -> None:
    """Rewrite ``path``'s receipt after a check found it sound (a copy or a touch moved its mtime)."""
    root = find_tree(path.parent)
    if root is None:
        return
    for p, entry in _entries(path):
        _write(root, p, entry)
