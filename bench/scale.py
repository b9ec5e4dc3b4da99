"""Every CPU stage priced at 82,500 images: CPU seconds per 2048^2 image, core-hours, files and bytes.

Runs the real stage verbs on one shard of ``--images`` synthetic 2048^2 images, each in its own
process on one thread (``--threads 1``), and reads each process' CPU time (user + system, from
``wait4``): convert, segment, measure, tiles, and predict on the CPU (a ResNet-50 cell model at the
default 256 px input with flip TTA, random weights: prediction costs the same whatever the weights).
Prints per stage: CPU s/image, the extrapolation to 82,500 images in core-hours, and files and
bytes written per image. Then prices tile writing against its floor: a bare loop that reads each
image's s0 and cell labels, crops every cell, maps it to uint8, resizes it with the same Pillow call
and packs it into one array, writing nothing (ratio floor / stage; the rest is the stage's own
overhead), and a cProfile of the tiles stage's top functions. Every stage runs on a shard of n and
of 2n images: the difference is the per-image cost (imports and model loading, paid once per shard
job, cancel) and is what is extrapolated; the per-job cost is printed beside it.

    python bench/scale.py [--images 4] [--out bench/out/scale]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import zarr

from hpa_batch.spec import ModelSpec

N_HPA = 82_500
SHARD = "u-2-os-0000"


def make_dataset(out: Path, n: int, size: int) -> Path:
    from hpa_batch.synth import synthesize_dataset

    meta = out / "data" / "train.csv"
    if meta.is_file() and len(pd.read_csv(meta)) >= n:
        return out / "data"
    synthesize_dataset(out / "data", n, seed=5, sizes=(size,), cell_lines=["U-2 OS"], fmt="png", workers=2)
    return out / "data"


def run_stage(argv: list[str]) -> tuple[float, float]:
    """CPU seconds (user + system) and wall seconds of one ``hpa-batch`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hpa_batch.cli", *argv], stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.read().decode()[-3000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def tree(paths: list[Path]) -> tuple[int, int]:
    """Files and bytes under ``paths`` (files or folders)."""
    files = nbytes = 0
    for p in paths:
        for f in [p] if p.is_file() else (q for q in p.rglob("*") if q.is_file()):
            files += 1
            nbytes += f.stat().st_size
    return files, nbytes


def label_trees(store: Path) -> list[Path]:
    return [p / "labels" for p in store.iterdir() if (p / "labels").is_dir()]


def image_trees(store: Path) -> list[Path]:
    """The image groups without their labels (the conversion's own files)."""
    out = []
    for image in (p for p in store.iterdir() if p.is_dir()):
        out += [q for q in image.iterdir() if q.name != "labels"]
    return out


def write_model(path: Path, spec: ModelSpec) -> None:
    """A ResNet-50 checkpoint in the pipeline's format (random weights)."""
    import torch

    from hpa_batch.core.labels import CATALOGS
    from hpa_batch.models.checkpoint import write_model as save
    from hpa_batch.models.factory import create_model, input_stats

    catalog = CATALOGS["hpa2021"]
    model = create_model(spec.arch, spec.channels, catalog.n_classes)
    mean, std = input_stats(model, spec.channels)
    save(
        path,
        weights=model.state_dict(),
        thresholds=torch.full((catalog.n_classes,), 0.5),
        spec=spec,
        catalog=catalog,
        mean=mean,
        std=std,
        summary={"bench": True},
    )


def tile_floor(store: Path, cells: pd.DataFrame, size: int, margin: float) -> float:
    """Seconds of the bare tile loop over every image of ``store`` (read, crop, map, resize, pack)."""
    from hpa_batch.cells.tiles import crop_box, resize

    t0 = time.perf_counter()
    for image_id, rows in cells.groupby("image_id"):
        group = zarr.open_group(store / image_id, mode="r")
        image, labels = group["s0"][...], group["labels/cells/s0"][...]
        lo, hi = np.percentile(image[:, ::8, ::8], [0.1, 99.9], axis=(1, 2))
        scale = (255.0 / np.maximum(hi - lo, 1)).astype(np.float32)[:, None, None]
        packed = np.zeros((len(rows), 4, size, size), np.uint8)
        h, w = labels.shape
        for i, r in enumerate(rows.itertuples()):
            top, left, bottom, right = crop_box((r.bbox_y0, r.bbox_x0, r.bbox_y1, r.bbox_x1), margin)
            sy0, sx0, sy1, sx1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
            canvas = np.zeros((4, bottom - top, right - left), np.float32)
            crop = np.clip((image[:, sy0:sy1, sx0:sx1] - lo[:, None, None]) * scale, 0, 255)
            canvas[:, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = crop
            packed[i] = np.clip(np.rint(resize(canvas, size)), 0, 255).astype(np.uint8)
    return time.perf_counter() - t0


def profile_tiles(cfg_path: Path, out: Path) -> list[tuple[str, float]]:
    """Top functions (cumulative seconds) of the tiles stage, run in this process."""
    from hpa_batch.cli import main as cli

    prof = cProfile.Profile()
    prof.enable()
    cli(["tiles", "--config", str(cfg_path), "--shard", SHARD, "--out", str(out)])
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():
        if "hpa_batch" in file or name in {"resize", "__getitem__", "_encode", "write_table"}:
            rows.append((f"{Path(file).name}:{name}", cum))
    return sorted(rows, key=lambda r: -r[1])[:12]


def run_chain(data: Path, work: Path, n: int) -> tuple[dict[str, tuple[float, int, int]], Path, Path]:
    """Every CPU stage on a shard of ``n`` images under ``work``: stage -> (CPU s, files, bytes)."""
    from hpa_batch.config import load_config

    shutil.rmtree(work, ignore_errors=True)
    res = work / "results"
    cfg = {
        "results_dir": str(res),
        "logs_dir": str(work / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": n,
        "models": [{"name": "r50", "arch": "resnet50", "level": "cell", "folds": [0]}],
    }
    work.mkdir(parents=True)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    model = res / "models" / "r50" / "fold0" / "model.pt"
    model.parent.mkdir(parents=True)
    write_model(model, load_config(cfg_path).model("r50"))
    c = ["--config", str(cfg_path), "--shard", SHARD]
    store = res / "zarr" / f"{SHARD}.zarr"
    run_stage(["manifest", *c])
    predict = ["predict", "--config", str(cfg_path), "--model", "r50", "--shard", SHARD, "--models", str(model)]
    stages = [
        ("convert", ["convert", *c, "--threads", "1"], lambda: image_trees(store)),
        ("segment", ["segment", *c, "--threads", "1"], lambda: label_trees(store)),
        ("measure", ["measure", *c], lambda: [res / "cells" / f"{SHARD}.parquet"]),
        ("tiles", ["tiles", *c], lambda: [res / "tiles" / f"{SHARD}.zarr"]),
        (PREDICT, [*predict, "--device", "cpu"], lambda: [res / "predictions" / "r50" / f"{SHARD}.parquet"]),
    ]
    out = {}
    for name, argv, written in stages:
        cpu, _ = run_stage(argv)
        out[name] = (cpu, *tree(written()))
    return out, cfg_path, store


PREDICT = "predict (CPU, ResNet-50, TTA)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4, help="the small shard; the large one has twice as many")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("bench/out/scale"))
    args = ap.parse_args()
    n = args.images
    data = make_dataset(args.out, 2 * n, args.size)
    small, _, _ = run_chain(data, args.out / "run_n", n)
    large, cfg_path, store = run_chain(data, args.out / "run", 2 * n)
    from hpa_batch.config import load_config

    rows = []
    for name, (cpu2, files2, bytes2) in large.items():
        cpu1 = small[name][0]
        per_image = (cpu2 - cpu1) / n  # the shard's per-job costs (imports, model load) cancel
        rows.append(
            {
                "stage": name,
                "cpu_s_per_image": round(per_image, 3),
                "per_job_cpu_s": round(2 * cpu1 - cpu2, 2),
                "core_hours_82500": round(per_image * N_HPA / 3600, 1),
                "files_per_image": round(files2 / (2 * n), 1),
                "MB_per_image": round(bytes2 / (2 * n) / 1e6, 3),
            }
        )
    res = store.parent.parent
    cells = pd.read_parquet(res / "cells" / f"{SHARD}.parquet")
    tiles_cfg = load_config(cfg_path).tiles
    kept = cells if tiles_cfg.include_border else cells[~cells["border"]]
    floor = tile_floor(store, kept, tiles_cfg.size, tiles_cfg.margin)
    tiles_cpu = next(r for r in rows if r["stage"] == "tiles")["cpu_s_per_image"] * 2 * n
    top = profile_tiles(cfg_path, store.parent.parent.parent / "tiles-profiled.zarr")
    table = pd.DataFrame(rows)
    total = table["core_hours_82500"].sum()
    print(json.dumps({"images": [n, 2 * n], "size": args.size, "stages": rows}, indent=1))
    print(table.to_string(index=False))
    print(f"all CPU stages: {total:.0f} core-hours for {N_HPA:,} images (per-job costs excluded: see per_job_cpu_s)")
    print(
        f"tiles: {len(kept)} tiles of {2 * n} images, stage {tiles_cpu:.2f} CPU s without per-job costs "
        f"({len(kept) / tiles_cpu:.0f} tiles/s/core; it also makes each image's input and feature row), floor "
        f"(read s0 + labels, crop, map, resize, pack) {floor:.2f} s ({len(kept) / floor:.0f} tiles/s), "
        f"ratio floor / stage {floor / tiles_cpu:.2f}"
    )
    print("tiles stage, top functions by cumulative seconds (in-process profile):")
    for name, seconds in top:
        print(f"  {seconds:7.2f} s  {name}")


if __name__ == "__main__":
    main()
