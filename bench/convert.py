"""Conversion benchmark: ``hpa-batch convert`` against a floor measured in the same run.

The floor is the best bare script for the unavoidable work and nothing else: decode the 4 PNGs with the
fastest imagecodecs PNG decoder that decodes them correctly (png, apng, spng compared; the fastest is
printed), build the same 2x-mean pyramid with numpy, and Blosc-compress every 512^2 chunk with the
same codec settings, writing nothing; run on threads and on processes, whichever is faster (printed).
The pipeline is the real ``hpa-batch convert`` on the same shard with the same thread count
(manifest prebuilt, so only conversion is timed), with ``conversion.parallelism: threads`` (the
default) and, as its peer, ``processes``.

Prints floor and pipeline seconds per image, their ratio (goal >= 0.9), MB/s per core, files per image,
peak RSS of the convert process, the extrapolation to 82,500 images, and peak RSS when the shard size
doubles (it must not grow).

    python bench/convert.py [--images 8] [--size 2048] [--threads 2] [--out bench/out/convert]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numcodecs.blosc
import numpy as np
import pandas as pd
import yaml
from numcodecs import Blosc

from hpa_batch import CHANNELS
from hpa_batch.core.ngff import count_files, downsample2x, level_shapes

N_HPA = 82_500


def make_dataset(out: Path, n: int, size: int) -> Path:
    """Synthetic HPA-layout dataset of ``n`` 16-bit PNG images at ``size`` (reused if present)."""
    from hpa_batch.synth import synthesize_dataset

    meta = out / "data" / "train.csv"
    if meta.is_file() and len(pd.read_csv(meta)) >= n:
        return out / "data"
    shutil.rmtree(out / "data", ignore_errors=True)
    synthesize_dataset(out / "data", n, seed=7, sizes=(size,), cell_lines=["HeLa"], fmt="png", workers=2)
    return out / "data"


DECODERS = ("png_decode", "apng_decode", "spng_decode")


def pick_decoder(path: Path, reps: int = 5) -> str:
    """The fastest imagecodecs PNG decoder that decodes ``path`` to the same pixels as libpng."""
    data = path.read_bytes()
    reference = imagecodecs.png_decode(data)
    best, best_s = "png_decode", float("inf")
    for name in DECODERS:
        decode = getattr(imagecodecs, name, None)
        try:
            usable = decode is not None and np.array_equal(decode(data), reference)
        except Exception:  # noqa: BLE001 (a decoder that cannot read this PNG variant is not a candidate)
            usable = False
        if not usable:
            continue
        t0 = time.perf_counter()
        for _ in range(reps):
            decode(data)
        seconds = (time.perf_counter() - t0) / reps
        if seconds < best_s:
            best, best_s = name, seconds
    return best


def floor_image(paths: list[Path], chunk: int, min_level: int, codec: Blosc, decoder: str = "png_decode") -> int:
    """Decode, pyramid, compress one image; return compressed bytes (discarded).

    Blosc runs single-threaded, as it does inside zarr (which encodes off the main thread, where
    numcodecs' automatic choice turns Blosc's own threads off): called from a process' main thread it
    would otherwise spread each chunk over every core, a floor no one-core-per-image pipeline has.
    """
    numcodecs.blosc.use_threads = False
    decode = getattr(imagecodecs, decoder)
    planes = [decode(p.read_bytes()) for p in paths]
    level = np.stack(planes)
    total = 0
    shapes = level_shapes(level.shape[1], level.shape[2], min_level)
    for k in range(len(shapes)):
        if k:
            level = downsample2x(level)
        for c in range(level.shape[0]):
            for y in range(0, level.shape[1], chunk):
                for x in range(0, level.shape[2], chunk):
                    block = np.zeros((chunk, chunk), level.dtype)
                    tile = level[c, y : y + chunk, x : x + chunk]
                    block[: tile.shape[0], : tile.shape[1]] = tile
                    total += len(codec.encode(block))
    return total


def run_floor(images: Path, ids: list[str], threads: int, decoder: str, mode: str) -> float:
    """Seconds for the floor over ``ids`` on ``threads`` threads or processes (``mode``); a process pool
    is started before the clock (the pipeline's worker start is inside its time: the floor is a floor)."""
    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    jobs = [[images / f"{i}_{c}.png" for c in CHANNELS] for i in ids]
    work = functools.partial(floor_image, chunk=512, min_level=512, codec=codec, decoder=decoder)
    if mode == "threads":
        pool = ThreadPoolExecutor(threads)
    else:
        pool = ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn"))
        list(pool.map(abs, range(threads)))  # workers up
    with pool:
        t0 = time.perf_counter()
        list(pool.map(work, jobs))
        return time.perf_counter() - t0


def run_pipeline(data: Path, work: Path, n: int, threads: int, parallelism: str = "threads") -> tuple[float, int, Path]:
    """Run manifest (untimed) then ``hpa-batch convert`` (timed) on a shard of ``n`` images.

    Returns seconds, peak RSS in bytes of the convert process, and the store path.
    """
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = {
        "results_dir": str(work / "results"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": n,
        "conversion": {"parallelism": parallelism},
    }
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    exe = [sys.executable, "-m", "hpa_batch.cli"]
    subprocess.run(
        [*exe, "manifest", "--config", str(cfg_path), "--shard", "hela-0000"], check=True, capture_output=True
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*exe, "convert", "--config", str(cfg_path), "--shard", "hela-0000", "--threads", str(threads)],
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest process (workers are children)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"convert failed: {proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss * 1024, work / "results" / "zarr" / "hela-0000.zarr"


def startup_seconds() -> float:
    """Seconds a fresh interpreter needs to import the conversion code (paid once per shard job)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import hpa_batch.cli, hpa_batch.convert.stage"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def warm_cache(images: Path) -> None:
    """Read every file once so floor and pipeline both start from a warm page cache."""
    for p in images.iterdir():
        p.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/out/convert"))
    args = ap.parse_args()
    n, t = args.images, args.threads
    data = make_dataset(args.out, 2 * n, args.size)
    ids = sorted(pd.read_csv(data / "train.csv")["ID"])
    warm_cache(data / "images")
    raw_mb = 4 * args.size * args.size * 2 / 1e6

    decoder = pick_decoder(data / "images" / f"{ids[0]}_green.png")
    floors = {m: run_floor(data / "images", ids[:n], t, decoder, m) / n for m in ("threads", "processes")}
    pipe_s, rss, store = run_pipeline(data, args.out / "run_n", n, t)
    pipe = pipe_s / n
    peer_s, _, _ = run_pipeline(data, args.out / "run_processes", n, t, "processes")
    floors = {m: min(s, run_floor(data / "images", ids[:n], t, decoder, m) / n) for m, s in floors.items()}
    floor_mode = min(floors, key=floors.get)
    floor_best = floors[floor_mode]
    _, rss2, _ = run_pipeline(data, args.out / "run_2n", 2 * n, t)
    startup = startup_seconds()
    steady = (pipe_s - startup) / n
    images = [p for p in store.iterdir() if p.is_dir()]
    files = sorted({count_files(p) for p in images})
    levels = len(level_shapes(args.size, args.size, 512))
    result = {
        "images": n,
        "size": args.size,
        "threads": t,
        "floor_decoder": decoder,
        "floor_parallelism": floor_mode,
        "floor_s_per_image": round(floor_best, 4),
        "floor_s_per_image_threads": round(floors["threads"], 4),
        "floor_s_per_image_processes": round(floors["processes"], 4),
        "pipeline_processes_s_per_image": round(peer_s / n, 4),
        "ratio_floor_over_pipeline_processes": round(floor_best / (peer_s / n), 3),
        "pipeline_s_per_image": round(pipe, 4),
        "ratio_floor_over_pipeline": round(floor_best / pipe, 3),
        "process_startup_s": round(startup, 3),
        "pipeline_steady_s_per_image": round(steady, 4),
        "ratio_floor_over_steady_pipeline": round(floor_best / steady, 3),
        "pipeline_MB_per_s_per_core": round(raw_mb / pipe / t, 1),
        "files_per_image": files,
        "files_per_image_goal": levels * 2 + 1,
        "peak_rss_MB_shard_n": round(rss / 1e6, 1),
        "peak_rss_MB_shard_2n": round(rss2 / 1e6, 1),
        "rss_growth_2n_over_n": round(rss2 / rss, 3),
        "core_hours_for_82500": round(pipe * t * N_HPA / 3600, 1),
    }
    print(json.dumps(result, indent=1))
    print(
        f"floor {floor_best:.3f} s/image ({decoder}, {floor_mode}) | pipeline {pipe:.3f} s/image | ratio "
        f"{floor_best / pipe:.2f} (goal >= 0.9) | pipeline on processes {peer_s / n:.3f} s/image, ratio "
        f"{floor_best / (peer_s / n):.2f} | without the {startup:.2f} s process start: {steady:.3f} s/image, ratio "
        f"{floor_best / steady:.2f} | {raw_mb / pipe / t:.1f} MB/s/core | files/image {files} "
        f"(goal {levels * 2 + 1}) | peak RSS {rss / 1e6:.0f} MB (n={n}) vs {rss2 / 1e6:.0f} MB "
        f"(n={2 * n}) | 82,500 images = {pipe * t * N_HPA / 3600:.0f} core-hours"
    )


if __name__ == "__main__":
    main()
