"""Segmentation benchmark: speed of the default backend against a bare scikit-image watershed, and
quality against the synthetic ground truth, per cell line.

Speed: seconds per 2048^2 image per core (one thread) for (a) the default ``watershed`` backend on the
working level chosen by the default config (1024 px), (b) the whole ``segment`` stage per image
(read level, segment, filter, write + verify labels at every level), and (c) a bare baseline: Otsu
nuclei + seeded watershed of the cell-channel Sobel gradient with scikit-image at the same level.
Prints the ratio baseline / backend.

Quality: AP at IoU 0.5 and 0.6 (TP / (TP + FP + FN), averaged over images), the fraction of images with
zero cells and the border-cell count, per cell line, with default settings, on synthetic images of
1728 and 2048 px. Writes docs/segmentation_overlay.png.

    python bench/segment.py [--per-line 2] [--out bench/out/segment]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml
from scipy import ndimage as ndi
from skimage.filters import sobel, threshold_otsu
from skimage.measure import label
from skimage.segmentation import watershed

from hpa_batch.cli import main as cli
from hpa_batch.config import load_config
from hpa_batch.ngff import downsample2x
from hpa_batch.plan import plan_from_config
from hpa_batch.segment import create_segmenter
from hpa_batch.segment.quality import average_precision
from hpa_batch.synth import DEFAULT_CELL_LINES, synthesize_dataset
from hpa_batch.viz import save_png, store_overlay


def baseline(level: np.ndarray) -> np.ndarray:
    """Bare scikit-image seeded watershed: ``(4, h, w)`` -> ``(h, w)`` cell labels."""
    blue = level[2].astype(np.float32)
    markers = label(ndi.binary_fill_holes(blue > threshold_otsu(blue)))
    ref = (level[0].astype(np.float32) + level[3]) / 2
    mask = ref > threshold_otsu(ref) * 0.5
    return watershed(sobel(ref), markers, mask=mask | (markers > 0))


def timed(fn, *args, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-line", type=int, default=2, help="images per cell line")
    ap.add_argument("--lines", type=int, default=6, help="number of cell lines")
    ap.add_argument("--out", type=Path, default=Path("bench/out/segment"))
    args = ap.parse_args()
    lines = list(DEFAULT_CELL_LINES[: args.lines])
    data = args.out / "data"
    n = args.per_line * len(lines)
    if not (data / "train.csv").is_file() or len(pd.read_csv(data / "train.csv")) != n:
        synthesize_dataset(data, n, seed=21, sizes=(2048, 1728), cell_lines=lines, workers=2)
    cfg_path = args.out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "results_dir": str(args.out / "results"), "logs_dir": str(args.out / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": 50,
    }))
    cfg = load_config(cfg_path)
    shards = plan_from_config(cfg)
    stage_s, n_images = 0.0, 0
    for shard in shards:
        cli(["convert", "--config", str(cfg_path), "--shard", shard.name, "--threads", "2"])
        t0 = time.perf_counter()
        cli(["segment", "--config", str(cfg_path), "--shard", shard.name, "--threads", "1"])
        stage_s += time.perf_counter() - t0
        n_images += len(shard.ids)

    meta = pd.read_csv(data / "train.csv")
    seg = create_segmenter("watershed", **cfg.segmentation.options)
    rows, speed = [], {"backend": [], "baseline": []}
    for shard in shards:
        store = cfg.results_dir / "zarr" / f"{shard.name}.zarr"
        for image_id in shard.ids:
            import zarr

            g = zarr.open_group(store / image_id, mode="r")
            truth = tifffile.imread(data / "truth" / f"{image_id}_cells.tif").astype(np.int64)
            pred = g["labels/cells/s0"][...].astype(np.int64)
            if g["s0"].shape[-1] == 2048:
                level = g["s1"][...]
                speed["backend"].append(timed(seg.segment, level, 2.0))
                speed["baseline"].append(timed(baseline, level))
            rows.append({
                "cell_line": shard.cell_line, "image_id": image_id, "size": g["s0"].shape[-1],
                "ap50": average_precision(truth, pred, 0.5), "ap60": average_precision(truth, pred, 0.6),
                "n_cells": int(pred.max()), "n_truth": int(truth.max()),
                "border": len(g["labels"].attrs["hpa_batch"]["border_cells"]),
            })
    table = pd.DataFrame(rows)
    per_line = table.groupby("cell_line").agg(
        images=("image_id", "size"), ap50=("ap50", "mean"), ap60=("ap60", "mean"),
        zero_cell_fraction=("n_cells", lambda s: float((s == 0).mean())),
        cells=("n_cells", "sum"), truth_cells=("n_truth", "sum"), border_cells=("border", "sum"),
    ).round(3)
    backend, base = np.median(speed["backend"]), np.median(speed["baseline"])
    result = {
        "images": n_images,
        "backend_s_per_2048_image_per_core": round(float(backend), 3),
        "stage_s_per_image_per_core": round(stage_s / n_images, 3),
        "baseline_s_per_2048_image_per_core": round(float(base), 3),
        "ratio_baseline_over_backend": round(float(base / backend), 3),
        "ap50_mean": round(float(table.ap50.mean()), 3),
        "ap60_mean": round(float(table.ap60.mean()), 3),
        "zero_cell_fraction": round(float((table.n_cells == 0).mean()), 3),
    }
    print(per_line.to_string())
    print(json.dumps(result, indent=1))
    first = cfg.results_dir / "zarr" / f"{shards[0].name}.zarr" / shards[0].ids[0]
    save_png(store_overlay(first, level=1), Path("docs/segmentation_overlay.png"), size=1024)
    print(f"overlay: docs/segmentation_overlay.png ({first.name}, {shards[0].cell_line})")


if __name__ == "__main__":
    main()
