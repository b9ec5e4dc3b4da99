"""Tile store benchmark: reading random minibatches as the training loader does, and writing.

Read: a tile store of ``--tiles`` cell tiles (256 px, real synthetic cells replicated) is read for one
epoch the way training reads it (:func:`hpa_batch.models.loader.epoch_plan` over a
:class:`~hpa_batch.models.loader.TileIndex`, :class:`~hpa_batch.models.loader.GroupDataset` buffers of 16 whole
chunks through :func:`~hpa_batch.models.loader.iterate_batches`, minibatches of 64) in one process; prints
tiles/s/core (goal >= 1,000) and, as the peer, the rate of reading the same store in order, chunk by
chunk. Write: ``hpa-batch tiles`` on segmented shards (crop, resize, uint8
mapping, packing), tiles/s on one core.

    python bench/tiles.py [--tiles 4096] [--out bench/out/tiles]
Needs the segmented shards of bench/segment.py (run it first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from hpa_batch.cells.tiles import TileReader, tiles_shard
from hpa_batch.config import load_config
from hpa_batch.convert.plan import plan_from_config
from hpa_batch.models.loader import GroupDataset, build_index, epoch_plan, iterate_batches


def write_rate(seg_out: Path, out: Path) -> tuple[float, Path]:
    cfg = load_config(seg_out / "config.yaml")
    total_tiles, total_s, stores = 0, 0.0, []
    for shard in plan_from_config(cfg):
        store = cfg.results_dir / "zarr" / f"{shard.name}.zarr"
        cells = cfg.results_dir / "cells" / f"{shard.name}.parquet"
        if not cells.is_file():
            from hpa_batch.cells.measure import measure_shard

            measure_shard(cfg, store, cfg.results_dir / "manifest" / f"{shard.name}.parquet", cells)
        t0 = time.perf_counter()
        attrs = tiles_shard(cfg, store, cells, out / f"{shard.name}.zarr")
        total_s += time.perf_counter() - t0
        total_tiles += attrs["n_cells"]
        stores.append(out / f"{shard.name}.zarr")
    return total_tiles / total_s, stores[0]


def big_store(source: Path, path: Path, n: int, chunk: int) -> Path:
    tiles = zarr.open_group(source, mode="r")["cells"][:]
    reps = np.resize(np.arange(len(tiles)), n)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    arr = root.create_array(
        "cells",
        shape=(n, *tiles.shape[1:]),
        dtype="uint8",
        chunks=(chunk, *tiles.shape[1:]),
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    )
    for start in range(0, n, chunk):
        arr[start : start + chunk] = tiles[reps[start : start + chunk]]
    ids = np.array([f"img{k // 32:05d}" for k in range(n)], dtype=object)  # 32 cells per image
    root.create_array("cell_image", shape=(n,), dtype=str, chunks=(n,))[:] = ids
    root.create_array("cell_id", shape=(n,), dtype="int32", chunks=(n,))[:] = np.arange(n, dtype=np.int32)
    return path


def training_read_rate(store: Path) -> tuple[int, float]:
    """Tiles and tiles/s of one epoch read by the training loader's own path (labels and folds made up:
    they do not change what is read)."""
    import pandas as pd

    ids = sorted(set(zarr.open_group(store, mode="r")["cell_image"][:]))
    splits = pd.DataFrame({"image_id": ids, "labels": [[k % 19] for k in range(len(ids))], "fold": 0})
    index = build_index([store], splits, "cell", 19)
    t0 = time.perf_counter()
    plan = epoch_plan(index, np.arange(len(index)), 64, seed=1, epoch=0, buffer_chunks=16)
    seen = sum(len(x) for _, x, _, _, _ in iterate_batches(GroupDataset(index, plan, [0, 1, 2, 3]), 0))
    return seen, seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=4096)
    ap.add_argument("--seg", type=Path, default=Path("bench/out/segment"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/tiles"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    zarr.config.set({"threading.max_workers": 1})
    w_rate, first = write_rate(args.seg, args.out)
    store = big_store(first, args.out / "big.zarr", args.tiles, 64)
    seen, shuffled = training_read_rate(store)
    reader = TileReader(store)
    t0 = time.perf_counter()
    for start in range(0, reader.n, reader.chunk):
        reader.read_rows(start, start + reader.chunk)
    sequential = reader.n / (time.perf_counter() - t0)
    mb = reader.array.nbytes / 1e6
    disk = sum(p.stat().st_size for p in (store / "cells").rglob("*") if p.is_file()) / 1e6
    result = {
        "tiles": seen,
        "read_shuffled_tiles_per_s_per_core": round(shuffled),
        "read_sequential_tiles_per_s_per_core": round(sequential),
        "ratio_shuffled_over_sequential": round(shuffled / sequential, 3),
        "write_tiles_per_s_per_core": round(w_rate, 1),
        "store_MB_raw": round(mb, 1),
        "store_MB_on_disk": round(disk, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
