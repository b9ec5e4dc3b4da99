"""Conversion benchmark: ``hpa-batch convert`` against a floor measured in the same run.

The floor is the best bare script for the unavoidable work and nothing else: decode the 4 PNGs with the
fastest imagecodecs PNG decoder that decodes them correctly (png, apng, spng compared; the fastest is
printed), build the same 2x-mean pyramid with numpy, Blosc-compress every 512^2 chunk with the same
codec settings, and write each level's compressed chunks to one file (a converter must write its
output; no index, no metadata, no verification); run on threads and on processes, whichever is faster
(printed). The same floor writing nothing is printed beside it, so the cost of writing shows.

The pipeline is the real ``hpa-batch convert`` with the same worker count (manifest prebuilt, so only
conversion is timed), on shards of n and 2n images. Its seconds per image are what each further image
adds to the job's own time (from the start of the shard's conversion to its summary: the
``seconds`` of ``{shard}.convert.json``): what a 250-image shard pays per image. What a job pays
once (interpreter start, imports of pandas, zarr and dask, config, worker start, its first images in
a fresh process) is printed beside it, with the whole-command ratio for a shard of n and of 250
images. Both parallelisms run: the default (``conversion.parallelism``) and the other one as its
peer. Floors and pipelines take turns, ``--repeats`` rounds, so the drift of a shared machine touches
all alike; the fastest of each counts. Memory is the peak for n and for 2n images.

Then the per-image work alone: the floor and the stage's ``convert_image`` on the same threads of this
process, taking turns, which leaves out what a job pays once and the drift between whole commands.

Then the writers alone, on the same precomputed pyramids and threads: zarr-python's own write path,
the pipeline's one-pass shard writer (:mod:`hpa_batch.core.shards`) and tensorstore's zarr3 driver (a
native writer that releases the GIL; skipped when tensorstore is not installed), with every chunk's
CRC32C compared with zarr-python's.

Prints floor and pipeline seconds per image, their ratio (goal >= 0.9), MB/s per core, files per
image, the extrapolation to 82,500 images, and the peak memory of the convert job (its processes'
summed PSS, sampled) for shards of n and 2n images (it must not grow).

    python bench/convert.py [--images 8] [--size 2048] [--threads 2] [--repeats 3] [--out bench/out/convert]
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
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import google_crc32c
import imagecodecs
import numcodecs.blosc
import numpy as np
import pandas as pd
import yaml
import zarr
from numcodecs import Blosc

from hpa_batch import CHANNELS
from hpa_batch.config import CodecConfig, load_config
from hpa_batch.core.ngff import count_files, downsample2x, level_shapes
from hpa_batch.core.shards import create_array, write_array, write_group

N_HPA = 82_500
DEFAULT_PARALLELISM = load_config().conversion.parallelism  # what a user gets
PEER_PARALLELISM = "threads" if DEFAULT_PARALLELISM == "processes" else "processes"
CODEC = CodecConfig("zstd", 5, "bitshuffle")


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


def floor_image(
    paths: list[Path], chunk: int, min_level: int, codec: Blosc, decoder: str = "png_decode", out: Path | None = None
) -> int:
    """Decode, pyramid, compress one image; write each level's compressed chunks to one file under
    ``out`` (no index, no metadata) or nothing (``out=None``). Returns the compressed bytes.

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
        pieces = []
        for c in range(level.shape[0]):
            for y in range(0, level.shape[1], chunk):
                for x in range(0, level.shape[2], chunk):
                    block = np.zeros((chunk, chunk), level.dtype)
                    tile = level[c, y : y + chunk, x : x + chunk]
                    block[: tile.shape[0], : tile.shape[1]] = tile
                    pieces.append(codec.encode(block))
        total += sum(len(p) for p in pieces)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"s{k}", "wb") as fh:
                fh.writelines(pieces)
    return total


def _floor_job(paths: list[Path], out: Path | None, **kwargs: Any) -> int:
    return floor_image(paths, out=out, **kwargs)


def run_floor(images: Path, ids: list[str], threads: int, decoder: str, mode: str, out: Path | None) -> float:
    """Seconds for the floor over ``ids`` on ``threads`` threads or processes (``mode``), writing under
    ``out`` (emptied first) or nothing; a process pool is started before the clock (the pipeline's worker
    start is inside its time: the floor is a floor)."""
    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    jobs = [([images / f"{i}_{c}.png" for c in CHANNELS], None if out is None else out / i) for i in ids]
    work = functools.partial(_floor_job, chunk=512, min_level=512, codec=codec, decoder=decoder)
    if mode == "threads":
        pool = ThreadPoolExecutor(threads)
    else:
        pool = ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn"))
        list(pool.map(abs, range(threads)))  # workers up
    with pool:
        t0 = time.perf_counter()
        list(pool.map(work, *zip(*jobs, strict=True)))
        return time.perf_counter() - t0


class TreeMemory:
    """Peak memory of a process and its descendants (a convert job and its worker processes): the sum of
    their proportional set sizes (``Pss`` of ``/proc/<pid>/smaps_rollup``: pages shared between a job and
    its forked workers count once), sampled every ``interval`` seconds while the context is open.

    ``ru_maxrss`` cannot be used: a child started by fork + exec inherits its parent's high-water mark,
    so it reports the benchmark's own peak whenever that is larger than the job's.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        """The process and its descendants (``/proc/<pid>/task/<tid>/children``)."""
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in children.read_text().split()]
                except OSError:
                    continue
        return tree

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, sum(self._pss(pid) for pid in self._tree()))


@dataclass
class Run:
    """One ``hpa-batch convert`` command: its wall seconds, the seconds the job itself timed from the
    start of the shard's conversion to its summary (``seconds`` of ``{shard}.convert.json``: the
    interpreter start, imports and config are outside), its peak memory and its store."""

    seconds: float
    in_job: float
    memory: int
    store: Path


def run_pipeline(data: Path, work: Path, n: int, threads: int, parallelism: str) -> Run:
    """Run manifest (untimed) then ``hpa-batch convert`` (timed) on a shard of ``n`` images."""
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
    with TreeMemory(proc.pid) as memory:
        _, status, _ = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"convert failed: {proc.stderr.read().decode()}")
    summary = json.loads((work / "results" / "zarr" / "hela-0000.convert.json").read_text())
    return Run(seconds, summary["seconds"], memory.peak, work / "results" / "zarr" / "hela-0000.zarr")


@dataclass
class Pipeline:
    """One parallelism: the fastest of ``repeats`` runs on a shard of n images and on one of 2n."""

    n: int
    best: Run
    double: Run

    @property
    def per_image(self) -> float:
        """Seconds each further image adds inside the job (``in_job`` of 2n minus that of n, over n): what
        a 250-image shard pays per image. What a job pays once inside it (the worker start, its first
        images in a fresh process, the store set-up and the tables) cancels."""
        return (self.double.in_job - self.best.in_job) / self.n

    @property
    def per_job(self) -> float:
        """Seconds a job pays once, whatever its size (interpreter start, imports, config, warm-up)."""
        return self.best.seconds - self.n * self.per_image

    def whole_command(self, shard_size: int) -> float:
        """Seconds per image of the whole command on a shard of ``shard_size`` images."""
        return self.per_image + self.per_job / shard_size


@dataclass
class Floors:
    """Fastest floor seconds per image, by ``(mode, writes)``: threads or processes, writing or not."""

    seconds: dict[tuple[str, bool], float]

    def best(self, writes: bool) -> tuple[str, float]:
        """The faster mode and its seconds per image."""
        mode = min(("threads", "processes"), key=lambda m: self.seconds[m, writes])
        return mode, self.seconds[mode, writes]


def measure(
    data: Path, out: Path, ids: list[str], threads: int, decoder: str, repeats: int
) -> tuple[Floors, dict[str, Pipeline]]:
    """Floors and both pipeline parallelisms, the pipelines on shards of n and 2n images, ``repeats``
    rounds in which each takes its turn (the machine's drift touches all alike); the fastest of each
    counts."""
    n = len(ids)
    modes = (DEFAULT_PARALLELISM, PEER_PARALLELISM)
    floors: dict[tuple[str, bool], float] = {}
    runs: dict[tuple[str, int], list[Run]] = {(m, k): [] for m in modes for k in (n, 2 * n)}
    for _ in range(repeats):
        for mode in ("threads", "processes"):
            for writes in (True, False):
                target = out / "floor_out" if writes else None
                seconds = run_floor(data / "images", ids, threads, decoder, mode, target) / n
                floors[mode, writes] = min(floors.get((mode, writes), float("inf")), seconds)
        for (m, k), done in runs.items():
            done.append(run_pipeline(data, out / f"run_{m}_{k}", k, threads, m))
    shutil.rmtree(out / "floor_out", ignore_errors=True)
    fastest = {key: min(rs, key=lambda r: r.in_job) for key, rs in runs.items()}
    pipelines = {m: Pipeline(n, fastest[m, n], fastest[m, 2 * n]) for m in modes}
    return Floors(floors), pipelines


def image_levels(images: Path, image_id: str) -> list[np.ndarray]:
    """The pyramid of one image, ``(4, y_k, x_k)`` uint16 per level."""
    level = np.stack([imagecodecs.png_decode((images / f"{image_id}_{c}.png").read_bytes()) for c in CHANNELS])
    levels = [level]
    for _ in level_shapes(level.shape[1], level.shape[2], 512)[1:]:
        levels.append(downsample2x(levels[-1]))
    return levels


def write_zarr_python(path: Path, levels: list[np.ndarray]) -> None:
    """zarr-python's own write path (``array[...] = data``) for the same arrays."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    for k, data in enumerate(levels):
        create_array(group, f"s{k}", data.shape, chunk=512, codec=CODEC, dtype=data.dtype.name)[...] = data


def write_one_pass(path: Path, levels: list[np.ndarray]) -> None:
    """The pipeline's writer (:func:`hpa_batch.core.shards.write_array`)."""
    write_group(path, {})
    for k, data in enumerate(levels):
        write_array(path / f"s{k}", data, chunk=512, codec=CODEC)


def write_tensorstore(path: Path, levels: list[np.ndarray], context: Any) -> None:
    """tensorstore's zarr3 driver (native, releases the GIL) into the same array metadata; ``context``
    caps its encoding threads at the benchmark's thread count, like every other writer."""
    import tensorstore

    group = zarr.open_group(path, mode="w", zarr_format=3)
    for k, data in enumerate(levels):
        create_array(group, f"s{k}", data.shape, chunk=512, codec=CODEC, dtype=data.dtype.name)
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(path / f"s{k}")},
            "open": True,
            "store_data_equal_to_fill_value": True,  # every chunk stored, as the pipeline's completeness check needs
        }
        tensorstore.open(spec, context=context).result().write(data).result()


def chunk_checksums(path: Path) -> list[int]:
    """CRC32C of every stored chunk's bytes, level by level in index order."""
    sums = []
    for shard in sorted(path.glob("s*/c/0/0/0")):
        raw = shard.read_bytes()
        arr = zarr.open_array(shard.parents[3], mode="r")
        n_chunks = int(np.prod([s // c for s, c in zip(arr.shards, arr.chunks)]))
        index = np.frombuffer(raw[-(n_chunks * 16 + 4) : -4], dtype="<u8").reshape(n_chunks, 2)
        sums += [google_crc32c.value(raw[o : o + size]) for o, size in index]
    return sums


def per_image_work(
    data: Path, out: Path, ids: list[str], threads: int, decoder: str, rounds: int
) -> tuple[float, float]:
    """The per-image work alone, in this process on ``threads`` threads, floor (writing) and the stage's
    :func:`hpa_batch.convert.stage.convert_image` taking turns ``rounds`` times on the same images
    (no process start, no job set-up, no warm-up; the drift of the machine touches both alike).

    Returns the fastest floor and stage seconds per image.
    """
    from hpa_batch.convert.manifest import read_manifest
    from hpa_batch.convert.stage import convert_image

    run = out / f"run_{DEFAULT_PARALLELISM}_{len(ids)}"
    cfg = load_config(run / "config.yaml")
    rows = [r for _, r in read_manifest(run / "results" / "manifest" / "hela-0000.parquet").iterrows()]
    store, staging = out / "ab_store", out / "ab_staging"
    best = {"floor": float("inf"), "stage": float("inf")}
    for _ in range(rounds):
        for name in ("floor", "stage"):
            for path in (store, staging):
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir(parents=True)
            t0 = time.perf_counter()
            if name == "floor":
                run_floor(data / "images", ids, threads, decoder, "threads", out / "floor_out")
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda r: convert_image(r, store, staging, cfg.conversion), rows))
            best[name] = min(best[name], (time.perf_counter() - t0) / len(ids))
    for path in (store, staging, out / "floor_out"):
        shutil.rmtree(path, ignore_errors=True)
    return best["floor"], best["stage"]


def compare_writers(images: Path, ids: list[str], threads: int, out: Path) -> dict[str, Any]:
    """Write the same precomputed pyramids with each writer on ``threads`` threads (s/image, wall), and
    compare every chunk's checksum with zarr-python's."""
    writers = {"zarr_python": write_zarr_python, "one_pass": write_one_pass}
    try:
        import tensorstore

        context = tensorstore.Context({"data_copy_concurrency": {"limit": threads}})
        writers["tensorstore"] = functools.partial(write_tensorstore, context=context)
    except ImportError:
        pass
    levels = {i: image_levels(images, i) for i in ids}
    result: dict[str, Any] = {}
    with zarr.config.set({"threading.max_workers": threads}):
        for name, write in writers.items():
            root = out / "writers" / name
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            with ThreadPoolExecutor(threads) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda i, w=write, r=root: w(r / i, levels[i]), ids))
                result[f"{name}_s_per_image"] = round((time.perf_counter() - t0) / len(ids), 4)
    reference = [chunk_checksums(out / "writers" / "zarr_python" / i) for i in ids]
    for name in writers:
        same = [chunk_checksums(out / "writers" / name / i) for i in ids] == reference
        result[f"{name}_chunks_identical_to_zarr_python"] = same
    return result


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
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the fastest counts")
    ap.add_argument("--out", type=Path, default=Path("bench/out/convert"))
    args = ap.parse_args()
    n, t = args.images, args.threads
    data = make_dataset(args.out, 2 * n, args.size)
    ids = sorted(pd.read_csv(data / "train.csv")["ID"])
    warm_cache(data / "images")
    raw_mb = 4 * args.size * args.size * 2 / 1e6

    decoder = pick_decoder(data / "images" / f"{ids[0]}_green.png")
    floors, pipelines = measure(data, args.out, ids[:n], t, decoder, args.repeats)
    floor_mode, floor = floors.best(writes=True)
    compute_mode, compute_floor = floors.best(writes=False)
    pipe, peer = pipelines[DEFAULT_PARALLELISM], pipelines[PEER_PARALLELISM]
    ab_floor, ab_stage = per_image_work(data, args.out, ids[:n], t, decoder, args.repeats)
    writers = compare_writers(data / "images", ids[: min(n, 2 * t)], t, args.out)
    startup = startup_seconds()
    images = [p for p in pipe.best.store.iterdir() if p.is_dir()]
    files = sorted({count_files(p) for p in images})
    levels = len(level_shapes(args.size, args.size, 512))
    result = {
        "images": n,
        "size": args.size,
        "threads": t,
        "floor_decoder": decoder,
        "floor_parallelism": floor_mode,
        "floor_s_per_image": round(floor, 4),
        "floor_s_per_image_threads": round(floors.seconds["threads", True], 4),
        "floor_s_per_image_processes": round(floors.seconds["processes", True], 4),
        "compute_floor_s_per_image": round(compute_floor, 4),
        "compute_floor_parallelism": compute_mode,
        "ratio_compute_floor_over_pipeline": round(compute_floor / pipe.per_image, 3),
        "pipeline_s_per_image": round(pipe.per_image, 4),
        "ratio_floor_over_pipeline": round(floor / pipe.per_image, 3),
        "pipeline_per_job_s": round(pipe.per_job, 3),
        "process_import_s": round(startup, 3),
        "pipeline_whole_command_s_per_image_n": round(pipe.whole_command(n), 4),
        "ratio_whole_command_n": round(floor / pipe.whole_command(n), 3),
        "ratio_whole_command_250": round(floor / pipe.whole_command(250), 3),
        "pipeline_parallelism": DEFAULT_PARALLELISM,
        "in_process_floor_s_per_image": round(ab_floor, 4),
        "in_process_convert_image_s_per_image": round(ab_stage, 4),
        "ratio_in_process_per_image_work": round(ab_floor / ab_stage, 3),
        f"pipeline_{PEER_PARALLELISM}_s_per_image": round(peer.per_image, 4),
        f"pipeline_{PEER_PARALLELISM}_per_job_s": round(peer.per_job, 3),
        f"ratio_floor_over_pipeline_{PEER_PARALLELISM}": round(floor / peer.per_image, 3),
        "pipeline_MB_per_s_per_core": round(raw_mb / pipe.per_image / t, 1),
        **{f"writer_{k}": v for k, v in writers.items()},
        "files_per_image": files,
        "files_per_image_goal": levels * 2 + 1,
        "peak_pss_MB_shard_n": round(pipe.best.memory / 1e6, 1),
        "peak_pss_MB_shard_2n": round(pipe.double.memory / 1e6, 1),
        "memory_growth_2n_over_n": round(pipe.double.memory / pipe.best.memory, 3),
        f"peak_pss_MB_{PEER_PARALLELISM}_n_2n": [round(peer.best.memory / 1e6, 1), round(peer.double.memory / 1e6, 1)],
        "core_hours_for_82500": round(pipe.whole_command(250) * t * N_HPA / 3600, 1),
    }
    print(json.dumps(result, indent=1))
    print(
        f"floor {floor:.3f} s/image ({decoder}, {floor_mode}, writing; {compute_floor:.3f} without) | pipeline {pipe.per_image:.3f} s/image "
        f"(each further image in the job; {pipe.per_job:.2f} s per job, {startup:.2f} s of it imports) | ratio "
        f"{floor / pipe.per_image:.2f} (goal >= 0.9; {compute_floor / pipe.per_image:.2f} against the floor that writes "
        f"nothing) | per-image work alone, in one process (floor {ab_floor:.3f} vs convert_image {ab_stage:.3f}): "
        f"ratio {ab_floor / ab_stage:.2f} | whole command, shard of {n} / 250 images: ratio "
        f"{result['ratio_whole_command_n']:.2f} / {result['ratio_whole_command_250']:.2f} | on {PEER_PARALLELISM} "
        f"{peer.per_image:.3f} s/image, ratio {floor / peer.per_image:.2f} | writers alone (s/image): "
        + ", ".join(f"{k.removesuffix('_s_per_image')} {v}" for k, v in writers.items() if k.endswith("_s_per_image"))
        + f" | {raw_mb / pipe.per_image / t:.1f} MB/s/core | files/image {files} (goal {levels * 2 + 1}) | peak memory "
        f"{pipe.best.memory / 1e6:.0f} MB (n={n}) vs {pipe.double.memory / 1e6:.0f} MB (n={2 * n}) | 82,500 images = "
        f"{pipe.whole_command(250) * t * N_HPA / 3600:.0f} core-hours (shards of 250)"
    )


if __name__ == "__main__":
    main()
