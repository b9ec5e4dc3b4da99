"""Weak-label training quality across image styles, on CPU: the deep cell model against the baseline.

Writes a synthetic set (512 px images, every generator style, a seed used for no tuning: 2027 by
default; development used seed 5), runs the real workflow (``snakemake --cores 2``, target
``report``) and prints, for the held-out validation fold (images no model trained on), the deep
model's fused confidences (what ``cells.parquet`` and ``submission.csv`` carry) and the scikit-learn
baseline side by side: per-cell macro-F1 and exact label-set accuracy on cells matched to true cells
(IoU >= 0.5), the HPA-2021 instance mAP at IoU 0.6, image mAP, per style, the worst style, and the
prediction guard (classes predicted for more than 60 % of cells). Goal of issue 11: deep cell
mAP@0.6 >= baseline + 0.05 and deep macro-F1 >= 0.80.

    python bench/demo_quality.py [--images 600] [--epochs 5] [--arch resnet18] [--no-features]
                                 [--refine-after 3] [--seed 2027] [--out bench/out/quality]
                                 [--recipe demo] [--score-seed 3031 [--score-images 300]]

``--recipe demo`` trains the cell-level models of ``config/demo.yaml`` (what the demo ships) instead of
the bench's own model. ``--score-seed S`` then writes a second set with seed ``S`` and runs the workflow
on it with every model and the baseline taken from the first run (``models[].trained``,
``baseline.trained``): nothing is trained on it, so every number printed for it is about images no
model has seen, the deep submission (fused confidences) against the baseline, class by class.

The run's report is ``<out>/results/report.html``; the numbers also go to ``<out>/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hpa_batch.config import load_config
from hpa_batch.convert.plan import plan_from_config
from hpa_batch.results.evaluate import (
    baseline_view,
    evaluate_run,
    held_out_images,
    predicted_ids,
)
from hpa_batch.results.truth import image_ious
from hpa_batch.synth import ALL_STYLES, parse_styles, synthesize_dataset

KEYS = ("cell_map", "cell_macro_f1", "cell_accuracy", "image_map", "matched_cells")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2027, help="dataset seed (5 was used for development)")
    ap.add_argument("--styles", default="all")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hybrid model: the cell's hand-crafted features joined to the CNN embedding",
    )
    ap.add_argument("--shard-size", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--buffer-chunks", type=int, default=64)
    ap.add_argument("--refine-after", type=int, default=3, help="epochs before the weak labels are refined (0 = off)")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--fusion", default="product", choices=["product", "mean", "cell"])
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    ap.add_argument("--recipe", choices=["bench", "demo"], default="bench", help="demo: config/demo.yaml's cell models")
    ap.add_argument("--score-seed", type=int, help="score the trained run on a second set of this seed")
    ap.add_argument("--score-images", type=int, help="images of the second set (default --images)")
    return ap.parse_args()


def recipe_models(args: argparse.Namespace) -> list[dict]:
    """The models trained: the bench's own (see :func:`workflow_config`) or config/demo.yaml's cell-level
    models without an encoder (an encoder head needs its encoder's embeddings of the same init)."""
    if args.recipe == "bench":
        return [bench_model(args)]
    entries = yaml.safe_load(Path("config/demo.yaml").read_text())["models"]
    return [m for m in entries if not m.get("encoder") and m.get("level", "cell") == "cell"]


def workflow_config(
    args: argparse.Namespace, out: Path, data: Path, models: list[dict], baseline: dict | None = None
) -> dict:
    f = args.size / 2048
    return {
        "results_dir": str(out / "results"),
        "logs_dir": str(out / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": args.shard_size,
        "conversion": {"min_level_size": 128, "chunk": 256},
        "segmentation": {"max_size": args.size, "min_cell_area": int(500 * f * f)},
        "tiles": {"size": args.tile_size, "image_size": 128, "chunk_tiles": 64, "mask_outside": True},
        "splits": {"n_folds": 5, "min_combination": 2},
        "evaluation": {"truth_dir": str(data / "truth")},
        "merge": {"fusion": args.fusion},
        "baseline": {"n_jobs": 2, **(baseline or {})},
        "models": models,
    }


def bench_model(args: argparse.Namespace) -> dict:
    """The bench's own cell model (``--recipe bench``)."""
    return {
        "name": "q",
        "arch": args.arch,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "features": args.features,
        "batch_size": args.batch_size,
        "optimizer": "adamw",
        "weight_decay": 1e-4,
        "buffer_chunks": args.buffer_chunks,
        "refine_labels": {"after_epochs": args.refine_after, "keep_ratio": args.keep_ratio},
        "schedule": {
            "kind": "cosine",
            "lr": args.lr,
            "lr_min": args.lr / 100,
            "warmup_epochs": 1,
            "warmup_lr": args.lr / 10,
        },
        "loss": {"kind": "bce", "class_weights": "none"},
        "num_workers": 0,
        "early_stopping_patience": 0,
        "folds": [0],
    }


def side_by_side(
    cells: pd.DataFrame,
    images: pd.DataFrame,
    base: tuple[pd.DataFrame, pd.DataFrame],
    ids: set[str],
    stores: list[Path],
    truth: Path,
    catalog,
    ious,
) -> dict[str, dict]:
    """Deep and baseline metrics on the images ``ids``."""
    out = {}
    for name, (c, i) in {"deep": (cells, images), "baseline": base}.items():
        r = evaluate_run(c[c.image_id.isin(ids)], i[i.image_id.isin(ids)], ious, truth, catalog, iou_threshold=0.6)
        out[name] = {k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in KEYS}
    return out


def worst_images(
    cells: pd.DataFrame, base_cells: pd.DataFrame, held: set[str], style_of: pd.Series, catalog
) -> dict[str, object]:
    """Per held-out image: exact label-set accuracy of its matched cells, deep and baseline; the worst
    image of each and how many images have no cell right."""
    out: dict[str, object] = {}
    for name, c in {"deep": cells, "baseline": base_cells}.items():
        m = c[c.image_id.isin(held) & (c.truth_cell_id > 0)]
        truth = [frozenset(map(int, v)) if len(v) else frozenset({catalog.negative}) for v in m.truth_labels]
        pred = [frozenset(predicted_ids(p, catalog)) for p in m.predicted]
        acc = pd.Series([a == b for a, b in zip(truth, pred)], index=m.image_id.to_numpy()).groupby(level=0).mean()
        worst = acc.idxmin() if len(acc) else None
        out[name] = {
            "worst_image": worst,
            "worst_style": style_of.get(worst),
            "worst_accuracy": round(acc.min(), 4),
            "images_with_no_cell_right": int((acc == 0).sum()),
            "median_image_accuracy": round(float(acc.median()), 4),
        }
    return out


def per_class(
    views: dict[str, tuple[pd.DataFrame, pd.DataFrame]], held: set[str], stores: list[Path], truth: Path, catalog, ious
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Class by class on the held-out images, for each view (deep, baseline): the HPA-2021 instance AP
    at IoU 0.6, the F1 of the emitted label sets on cells matched to true cells, and the number of
    matched cells that truly hold the class."""
    from sklearn.metrics import f1_score

    from hpa_batch.models.split import multi_hot

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for name, (c, i) in views.items():
        r = evaluate_run(c[c.image_id.isin(held)], i[i.image_id.isin(held)], ious, truth, catalog, iou_threshold=0.6)
        m = c[c.image_id.isin(held) & (c.truth_cell_id > 0)]
        n = catalog.n_classes
        y = multi_hot([list(v) if len(v) else [catalog.negative] for v in m.truth_labels], n)
        pred = multi_hot([predicted_ids(v, catalog) for v in m.predicted], n)
        f1 = f1_score(y, pred, average=None, zero_division=0) if len(m) else np.zeros(n)
        for k, cls in enumerate(catalog.classes):
            row = out.setdefault(cls, {"positives": int(y[:, k].sum())})
            ap = r.get("cell_ap_per_class", {}).get(cls)
            row[f"{name}_ap"] = None if ap is None else round(float(ap), 4)
            row[f"{name}_f1"] = round(float(f1[k]), 4)
    return out


def print_per_class(table: dict[str, dict[str, float | int | None]]) -> None:
    """One line per class, most positive cells first; the worst class of each view by AP."""
    print(
        f"\n{'class (held-out, matched cells)':<44}{'pos':>6}{'deep AP':>9}{'base AP':>9}{'deep F1':>9}{'base F1':>9}"
    )
    for cls, v in sorted(table.items(), key=lambda kv: -int(kv[1]["positives"] or 0)):
        cells = [v.get(k) for k in ("deep_ap", "baseline_ap", "deep_f1", "baseline_f1")]
        print(f"{cls:<44}{v['positives']!s:>6}" + "".join(f"{'-' if x is None else f'{x:.3f}':>9}" for x in cells))
    for view in ("deep", "baseline"):
        scored = [
            (v[f"{view}_ap"], c) for c, v in table.items() if v[f"{view}_ap"] is not None and v["positives"] >= 30
        ]
        if scored:
            print(f"worst class with >= 30 positive cells, {view}: {min(scored)[1]} (AP {min(scored)[0]:.3f})")


def make_set(args: argparse.Namespace, data: Path, seed: int, images: int) -> None:
    """A synthetic set of every style (or ``--styles``) at ``--size`` px, once."""
    styles = ALL_STYLES if args.styles == "all" else parse_styles(args.styles)
    if not (data / "train.csv").is_file():
        synthesize_dataset(
            data,
            images,
            seed=seed,
            sizes=(args.size,),
            workers=2,
            cell_lines=["U-2 OS", "A-431", "U-251 MG", "HeLa"],
            styles=styles,
        )


def run_workflow(cfg_path: Path) -> float:
    """``snakemake --cores 2 report`` on ``cfg_path``; its seconds."""
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(cfg_path)]
    cmd += ["--directory", str(Path.cwd()), "--snakefile", "Snakefile", "report"]
    # the rules call `hpa-batch`: this interpreter's environment, activated or not
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(cmd, check=True, env={**os.environ, "PATH": path})
    return time.monotonic() - t0


def score(cfg_path: Path, data: Path, held: set[str] | None) -> dict:
    """Deep (fused) against baseline on the ``held`` images of a finished run (None: every admitted
    image), overall, per style, per image and per class."""
    c = load_config(cfg_path)
    r = c.results_dir
    cells = pd.read_parquet(r / "tables/cells.parquet")
    images = pd.read_parquet(r / "tables/images.parquet")
    baseline = pd.read_parquet(r / "baseline/cells.parquet")
    b_thr = np.asarray(json.loads((r / "baseline/summary.json").read_text())["thresholds"])
    base = baseline_view(cells, images, baseline, b_thr, c.catalog)
    stores = [r / "zarr" / f"{s.name}.zarr" for s in plan_from_config(c)]
    ious = image_ious(stores, data / "truth")
    held = held if held is not None else set(images.loc[~images["rejected"], "image_id"])
    style_of = pd.read_csv(data / "truth/images.csv").set_index("ID")["style"]
    result: dict = {"scored_images": len(held)}
    result["held_out"] = side_by_side(cells, images, base, held, stores, data / "truth", c.catalog, ious)
    result["per_style"] = {}
    for style in sorted(set(style_of.reindex(sorted(held)))):
        ids = {i for i in held if style_of.get(i) == style}
        result["per_style"][style] = side_by_side(cells, images, base, ids, stores, data / "truth", c.catalog, ious)
    result["per_image"] = worst_images(cells, base[0], held, style_of, c.catalog)
    views = {"deep": (cells, images), "baseline": base}
    result["per_class"] = per_class(views, held, stores, data / "truth", c.catalog, ious)
    metrics = json.loads((r / "metrics.json").read_text())
    result["prediction_guard"] = {k: metrics["prediction_guard"][k] for k in ("over_predicted", "single_prediction")}
    deep, bl = result["held_out"]["deep"], result["held_out"]["baseline"]
    per = result["per_style"]
    result["worst_style"] = {
        "deep_macro_f1": min((v["deep"]["cell_macro_f1"] or 0, s) for s, v in per.items()) if per else None,
        "baseline_macro_f1": min((v["baseline"]["cell_macro_f1"] or 0, s) for s, v in per.items()) if per else None,
    }
    behind = [
        c
        for c, v in result["per_class"].items()
        if v["positives"] >= 30
        and None not in (v["deep_ap"], v["baseline_ap"])
        and v["baseline_ap"] > v["deep_ap"] + 0.05
    ]
    result["goal"] = {
        "map_gain": round(deep["cell_map"] - bl["cell_map"], 4),
        "macro_f1_gain": round((deep["cell_macro_f1"] or 0) - (bl["cell_macro_f1"] or 0), 4),
        "map_gain_met": deep["cell_map"] >= bl["cell_map"] + 0.05,
        "macro_f1_gain_met": (deep["cell_macro_f1"] or 0) >= (bl["cell_macro_f1"] or 0) + 0.05,
        "classes_where_baseline_leads_by_over_0.05": behind,
        "guard_clean": not result["prediction_guard"]["over_predicted"],
    }
    return result


def print_scores(title: str, result: dict) -> None:
    deep, bl = result["held_out"]["deep"], result["held_out"]["baseline"]
    print(f"\n{title:<28}{'deep':>10}{'baseline':>10}")
    for k in KEYS:
        print(f"{k:<28}{deep[k]!s:>10}{bl[k]!s:>10}")
    for s, v in result["per_style"].items():
        print(
            f"  {s:<26}{v['deep']['cell_map']!s:>10}{v['baseline']['cell_map']!s:>10}   macro-F1 "
            f"{v['deep']['cell_macro_f1']} vs {v['baseline']['cell_macro_f1']}"
        )
    print(f"worst image: {result['per_image']}")
    print_per_class(result["per_class"])
    print(f"goal: {result['goal']}")


def trained_elsewhere(models: list[dict], results: Path) -> list[dict]:
    """The same models, each applied from ``results`` (``trained:``) instead of trained."""
    return [
        {"name": m["name"], "level": m.get("level", "cell"), "trained": str(results / "models" / m["name"])}
        for m in models
    ]


def main() -> None:
    args = parse()
    out = args.out.resolve()
    data = out / "data"
    make_set(args, data, args.seed, args.images)
    models = recipe_models(args)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(workflow_config(args, out, data, models)))
    seconds = run_workflow(cfg_path)
    images = pd.read_parquet(load_config(cfg_path).results_dir / "tables/images.parquet")
    result = {
        "seed": args.seed,
        "images": args.images,
        "recipe": args.recipe,
        "models": [m["name"] for m in models],
        "arch": args.arch,
        "input_size": args.input_size,
        "features": args.features,
        "epochs": args.epochs,
        "refine_after": args.refine_after,
        "fusion": args.fusion,
        "workflow_seconds": round(seconds, 1),
        **score(cfg_path, data, held_out_images(images, {0})),
    }
    hist = pd.read_csv(load_config(cfg_path).results_dir / f"models/{models[0]['name']}/fold0/history.csv")
    result["history"] = hist[["epoch", "train_loss", "val_loss", "val_map", "seconds"]].round(4).to_dict("records")
    print_scores(f"held-out fold, seed {args.seed}", result)
    if args.score_seed is not None:
        other = out / f"set-{args.score_seed}"
        make_set(args, other / "data", args.score_seed, args.score_images or args.images)
        trained = load_config(cfg_path).results_dir
        cfg_b = other / "config.yaml"
        config = workflow_config(
            args, other, other / "data", trained_elsewhere(models, trained), {"trained": str(trained / "baseline")}
        )
        cfg_b.write_text(yaml.safe_dump(config))
        seconds_b = run_workflow(cfg_b)
        result["other_set"] = {"seed": args.score_seed, "workflow_seconds": round(seconds_b, 1)}
        result["other_set"] |= score(cfg_b, other / "data", None)
        print_scores(f"unseen set, seed {args.score_seed}", result["other_set"])
    (out / "quality.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
