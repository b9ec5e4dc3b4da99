"""Cost of the Snakefile's damage check (``hpa_batch.integrity.refuse_damaged``), which every
``snakemake`` invocation pays before its DAG is scheduled, against a floor measured in the same run.

A results tree of ``--shards`` shards is written with the real writers' file kinds: per shard a
manifest, a cells table and one predictions table per model (parquet, ``--rows`` rows each), two
QC TSVs, the convert/segment JSON summaries and a tile store's ``zarr.json`` stamp; plus merged
tables and checkpoints. The floor is the least any check must do: walk the tree
and open + read the last 8 bytes of every file it checks (a parquet footer's length and magic). The
peer is ``pyarrow.parquet.read_metadata`` on the parquet files alone. The check is timed ``--repeats``
times in turns with the floor; the fastest of each counts.

The same tree is built twice: once as before write receipts existed, once marked as a results tree with
a receipt per output (:mod:`hpa_batch.core.receipts`: size, mtime and SHA-256 of each file, each chunk
file of a tile store), as every stage now writes them; the check then also compares every output with
its receipt, which is what refuses damage that still decodes.

Prints the seconds, the ratio check / floor, the cost per checked file and the extrapolation to the
full HPA set (82,500 images in shards of ``--shard-size``), without and with receipts.

    python bench/damage.py [--shards 400] [--models 2] [--rows 2000] [--repeats 3] [--chunks 20]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hpa_batch.core.receipts import record
from hpa_batch.core.tree import mark_tree
from hpa_batch.integrity import refuse_damaged
from hpa_batch.layout import result


def build(root: Path, *, shards: int, models: int, rows: int, chunks: int = 20, receipts: bool = False) -> int:
    """Write the tree (``chunks`` chunk files per tile store; with ``receipts`` marked and receipted as the
    stages leave it); return the number of files the check opens."""
    outputs: list[Path] = []
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"image_id": [f"i{k % 50}" for k in range(rows)], "cell_id": np.arange(rows, dtype=np.int32)}
        | {f"prob_{c}": rng.random(rows, dtype=np.float32) for c in range(19)}
    )
    manifest = pd.DataFrame({"image_id": [f"i{k}" for k in range(50)], "cell_line": ["U-2 OS"] * 50})
    n = 0
    for k in range(shards):
        shard = f"u-2-os-{k:04d}"
        paths = [result(root, "manifest", shard=shard), result(root, "cells", shard=shard)]
        paths += [result(root, "predictions", model=f"m{m}", shard=shard) for m in range(models)]
        for i, path in enumerate(paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            (manifest if i == 0 else table).to_parquet(path)
        for key in ("rejected", "segment_qc"):
            path = result(root, key, shard=shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("image_id\tshard\tcell_line\tstage\treason\n")
        for key in ("convert_summary", "segment_summary"):
            result(root, key, shard=shard).parent.mkdir(parents=True, exist_ok=True)
            result(root, key, shard=shard).write_text(json.dumps({"shard": shard, "images": 50}))
        tiles = result(root, "tiles", shard=shard)
        tiles.mkdir(parents=True, exist_ok=True)
        stamp = {"hpa_batch": {"n_cells": rows, "n_images": 50, "complete": True}}
        (tiles / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": stamp}))
        (tiles / "cells" / "c").mkdir(parents=True, exist_ok=True)
        for c in range(chunks):
            (tiles / "cells" / "c" / str(c)).write_bytes(rng.bytes(1024))
        outputs += [*paths, tiles, *(result(root, k, shard=shard) for k in ("rejected", "segment_qc"))]
        outputs += [result(root, k, shard=shard) for k in ("convert_summary", "segment_summary")]
        n += len(paths) + 5
    if receipts:
        mark_tree(root)
        for path in outputs:
            record(path)
    return n


def floor(root: Path) -> int:
    """Walk the tree and read the last 8 bytes of every checked file (and each tile stamp)."""
    n = 0
    for folder, dirs, files in os.walk(root):
        if folder.endswith(".zarr"):
            dirs[:] = []
            files = ["zarr.json"]
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - 8, 0))
                f.read(8)
            n += 1
    return n


def peer(root: Path) -> int:
    files = list(root.rglob("*.parquet"))
    for path in files:
        pq.read_metadata(path)
    return len(files)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=400)
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=20, help="chunk files per tile store")
    args = ap.parse_args()
    sizes = {"shards": args.shards, "models": args.models, "rows": args.rows, "chunks": args.chunks}
    with tempfile.TemporaryDirectory() as tmp:
        root, receipted = Path(tmp) / "plain" / "results", Path(tmp) / "receipted" / "results"
        n = build(root, **sizes)
        build(receipted, **sizes, receipts=True)
        best = {"check": float("inf"), "floor": float("inf"), "peer": float("inf"), "receipts": float("inf")}
        for _ in range(args.repeats):
            best["floor"] = min(best["floor"], timed(floor, root))
            best["check"] = min(best["check"], timed(refuse_damaged, root))
            best["receipts"] = min(best["receipts"], timed(refuse_damaged, receipted))
            best["peer"] = min(best["peer"], timed(peer, root))
    full = 82_500 / args.shard_size / args.shards
    print(f"results tree: {args.shards} shards, {n} files checked, {args.chunks} chunk files per tile store")
    print(f"floor (walk + read 8 B of each): {best['floor']:.3f} s")
    print(f"peer (pyarrow read_metadata, parquet only): {best['peer']:.3f} s")
    print(f"refuse_damaged: {best['check']:.3f} s = {1e3 * best['check'] / n:.3f} ms per file")
    print(
        f"refuse_damaged with write receipts: {best['receipts']:.3f} s = {1e3 * best['receipts'] / n:.3f} ms per file"
    )
    print(
        f"ratio check / floor: {best['check'] / best['floor']:.1f}; check / peer: {best['check'] / best['peer']:.2f}; "
        f"with receipts / without: {best['receipts'] / best['check']:.2f}"
    )
    print(
        f"full HPA set (82,500 images, shards of {args.shard_size}): {best['check'] * full:.1f} s per invocation, "
        f"{best['receipts'] * full:.1f} s with receipts"
    )


if __name__ == "__main__":
    main()
