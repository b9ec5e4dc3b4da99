"""The hybrid cell model's feature branch alone against the baseline, on the same cells (issue 36).

Reads a finished results tree with per-cell truth (e.g. the one ``bench/demo_quality.py`` writes),
fits on the cells of every image but fold 0 with the weak labels (each cell carries its image's
labels): (a) the baseline (one-vs-rest HistGradientBoosting on the 47 hand-crafted features,
``hpa_batch.results.baseline``), (b) an MLP of the shape of ``HybridNet``'s feature branch (two layers
of 128 with batch norm, features standardised with the training cells' statistics, AdamW, cosine,
40 epochs), (c) the same MLP on quantile-normalised features. Prints each one's AP per class on the
held-out cells matched to true cells (classes with >= 5 positives), their mean and the classes where
the baseline leads by more than 0.05.

    python bench/feature_branch.py RESULTS_DIR [--epochs 40] [--hidden 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import QuantileTransformer

from hpa_batch.core.labels import get_catalog
from hpa_batch.models.split import multi_hot
from hpa_batch.results.baseline import create_baseline, features, predict_proba, weak_targets


def per_class_ap(truth: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AP of every class with >= 5 positive cells: ``(n, c)`` 0/1 truth and probabilities."""
    return {
        classes[k]: float(average_precision_score(truth[:, k], prob[:, k]))
        for k in range(truth.shape[1])
        if truth[:, k].sum() >= 5
    }


def fit_mlp(x: np.ndarray, y: np.ndarray, *, hidden: int, epochs: int, seed: int = 0) -> torch.nn.Module:
    """The feature branch of ``HybridNet`` with a linear head, trained with BCE on ``(n, f)`` rows."""
    torch.manual_seed(seed)
    n = y.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, n),
    )
    a, t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(a))
        for i in range(0, len(a), 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(a[idx]), t[idx]).backward()
            opt.step()
        sched.step()
    return net.eval()


def scaled(train: np.ndarray, held: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Features standardised (``std``, clipped at 10 sigmas) or quantile-normalised with the training rows."""
    if how == "quantile":
        q = QuantileTransformer(n_quantiles=200, output_distribution="normal", random_state=0).fit(train)
        return q.transform(train), q.transform(held)
    mu, sd = train.mean(0), train.std(0)
    sd[sd < 1e-6] = 1
    return np.clip((train - mu) / sd, -10, 10), np.clip((held - mu) / sd, -10, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args()
    cat = get_catalog("hpa2021")
    cells = pd.read_parquet(args.results / "tables/cells.parquet")
    held = (cells.fold == 0).to_numpy()
    train = ((cells.fold >= 0) | (cells.fold == -1)).to_numpy() & ~held
    x = features(cells)
    y = weak_targets(cells.image_labels.tolist(), cat.n_classes, cat.negative).astype(np.float32)
    matched = held & (cells.truth_cell_id.to_numpy() > 0)
    truth = multi_hot([list(v) if len(v) else [cat.negative] for v in cells.truth_labels[matched]], cat.n_classes)
    t0 = time.perf_counter()
    base = create_baseline("hist_gradient_boosting", seed=0, n_jobs=2).fit(x[train], y[train].astype(int))
    results = {"baseline (HGB)": per_class_ap(truth, predict_proba(base, x[matched], 2), list(cat.classes))}
    print(f"baseline fitted in {time.perf_counter() - t0:.0f} s")
    for how in ("std", "quantile"):
        a, b = scaled(x[train], x[matched], how)
        net = fit_mlp(a, y[train], hidden=args.hidden, epochs=args.epochs)
        with torch.no_grad():
            prob = torch.sigmoid(net(torch.tensor(b, dtype=torch.float32))).numpy()
        results[f"feature MLP ({how})"] = per_class_ap(truth, prob, list(cat.classes))
    table = pd.DataFrame(results).round(3)
    table.insert(0, "positives", [int(truth[:, cat.classes.index(c)].sum()) for c in table.index])
    print(f"train cells {int(train.sum())}, held-out matched cells {int(matched.sum())}, features {x.shape[1]}")
    print(table.sort_values("positives", ascending=False).to_string())
    print("mean AP:", table.drop(columns="positives").mean().round(3).to_dict())
    for name in results:
        if name.startswith("feature"):
            lead = table["baseline (HGB)"] - table[name]
            print(f"baseline leads {name} by > 0.05 in:", lead[lead > 0.05].round(3).to_dict())


if __name__ == "__main__":
    main()
