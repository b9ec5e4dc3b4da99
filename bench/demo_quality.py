"""Weak-label training quality on synthetic data, on CPU: cell-level macro-F1 and mAP on the
validation fold, against the generator's per-cell ground truth (goal macro-F1 >= 0.9).

Runs the real workflow (``snakemake --cores 2``, target ``report``) on a synthetic set of 512 px images
with a small timm model, then matches segmented cells to true cells (IoU > 0.5) and scores the
validation fold's cells with the trained thresholds. Prints those metrics and, from the run's
``metrics.json``, the held-out metrics of the deep model (fused) next to the scikit-learn baseline's.
The run's report is ``bench/out/quality/results/report.html``.

    python bench/demo_quality.py [--images 150] [--epochs 12] [--arch resnet18] [--refine-after 0]

Tiles are masked to their cell (``mask_outside``): an unmasked tile shows its neighbours' patterns,
which the per-cell truth does not credit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from hpa_batch.config import load_config
from hpa_batch.evaluate import score_cells, truth_cell_labels, truth_matches
from hpa_batch.plan import plan_from_config
from hpa_batch.synth import synthesize_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--buffer-chunks", type=int, default=64)
    ap.add_argument("--refine-after", type=int, default=0, help="epochs before the weak labels are refined (0 = off)")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    args = ap.parse_args()
    out = args.out.resolve()
    data = out / "data"
    if not (data / "train.csv").is_file():
        synthesize_dataset(data, args.images, seed=5, sizes=(args.size,), workers=2,
                           cell_lines=["U-2 OS", "A-431", "U-251 MG", "HeLa"])
    f = args.size / 2048
    cfg = {
        "results_dir": str(out / "results"), "logs_dir": str(out / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": args.shard_size,
        "conversion": {"min_level_size": 128, "chunk": 256},
        "segmentation": {"max_size": args.size, "min_cell_area": int(500 * f * f)},
        "tiles": {"size": 64, "image_size": 128, "chunk_tiles": 64, "mask_outside": True},
        "splits": {"n_folds": 5, "min_combination": 2},
        "evaluation": {"truth_dir": str(data / "truth")},
        "models": [{"name": "q", "arch": args.arch, "input_size": args.input_size, "epochs": args.epochs,
                    "batch_size": args.batch_size, "optimizer": "adamw", "weight_decay": 1e-4,
                    "buffer_chunks": args.buffer_chunks,
                    "refine_labels": {"after_epochs": args.refine_after, "keep_ratio": args.keep_ratio},
                    "schedule": {"kind": "cosine", "lr": args.lr, "lr_min": args.lr / 100, "warmup_epochs": 1,
                                 "warmup_lr": args.lr / 10},
                    "loss": {"kind": "bce", "class_weights": "none"}, "num_workers": 0,
                    "early_stopping_patience": 0, "folds": [0]}],
    }
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cfg_path),
                    "--directory", str(Path.cwd()), "--snakefile", "Snakefile", "report"], check=True)
    seconds = time.monotonic() - t0
    c = load_config(cfg_path)
    splits = pd.read_parquet(c.results_dir / "splits.parquet")
    val_images = set(splits.loc[splits.fold == 0, "image_id"])
    truth = truth_cell_labels(data / "truth", c.catalog)
    ckpt = torch.load(c.results_dir / "models/q/fold0/model.pt", weights_only=True)
    thresholds = ckpt["thresholds"].numpy()
    preds, matches = [], []
    for shard in plan_from_config(c):
        preds.append(pd.read_parquet(c.results_dir / "predictions/q" / f"{shard.name}.parquet"))
        matches.append(truth_matches(c.results_dir / "zarr" / f"{shard.name}.zarr", data / "truth"))
    pred = pd.concat(preds, ignore_index=True)
    val = pred[pred.image_id.isin(val_images)]
    result = {"images": args.images, "val_images": len(val_images), "arch": args.arch,
              "epochs": args.epochs, "refine_after": args.refine_after, "workflow_seconds": round(seconds, 1),
              "cell_level_val": score_cells(val, pd.concat(matches), truth, c.catalog, thresholds),
              "cell_level_val_at_0.5": score_cells(val, pd.concat(matches), truth, c.catalog, 0.5)}
    metrics = json.loads((c.results_dir / "metrics.json").read_text())
    keys = ("images", "cell_map", "cell_accuracy", "image_macro_f1", "image_map")
    result["held_out_deep_fused"] = {k: metrics["held_out"].get(k) for k in keys}
    result["held_out_baseline"] = {k: metrics["baseline"]["held_out"].get(k) for k in keys}
    hist = pd.read_csv(c.results_dir / "models/q/fold0/history.csv")
    result["history_last"] = hist.iloc[-1].round(4).to_dict()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
