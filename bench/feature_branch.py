"""The hybrid cell model's feature branch alone against the baseline, on the same cells (issue 36).

Reads a finished results tree with per-cell truth (e.g. the one ``bench/demo_quality.py`` writes),
fits on the cells of every image but fold 0 with the weak labels (each cell carries its image's
labels): (a) the baseline (one-vs-rest HistGradientBoosting on the 47 hand-crafted features,
``hpa_batch.results.baseline``), (b) ``HybridNet`` with its image branch removed (its own feature MLP and
head; the features standardised with the training cells' statistics, as in training; AdamW, cosine,
40 epochs), (c) the same on quantile-normalised features. Prints each one's AP per class on the
held-out cells matched to true cells (classes with >= 5 positives), their mean and the classes where
the baseline leads by more than 0.05.

    python bench/feature_branch.py RESULTS_DIR [--epochs 40] [--hidden 128] [--seed 0]
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
from hpa_batch.models.factory import HybridNet
from hpa_batch.models.split import multi_hot
from hpa_batch.results.baseline import create_baseline, features, predict_proba, weak_targets


def per_class_ap(truth: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    """AP of every class with >= 5 positive cells: ``(n, c)`` 0/1 truth and probabilities."""
    return {
        classes[k]: float(average_precision_score(truth[:, k], prob[:, k]))
        for k in range(truth.shape[1])
        if truth[:, k].sum() >= 5
    }


class NoImage(torch.nn.Module):
    """The image branch removed: a backbone with no pooled features (``(b, 0)``)."""

    num_features = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 0))


def fit_branch(x: np.ndarray, y: np.ndarray, *, hidden: int, epochs: int, seed: int = 0) -> HybridNet:
    """``HybridNet`` with its image branch removed (its own feature MLP, standardisation with the
    training rows' statistics and head), trained with BCE on ``(n, f)`` feature rows."""
    torch.manual_seed(seed)
    net = HybridNet(NoImage(), x.shape[1], y.shape[1], hidden=hidden)
    net.set_feature_stats(x.mean(0), x.std(0))
    a, t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    blank = torch.zeros((len(a), 1))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(a))
        for i in range(0, len(a), 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(blank[idx], a[idx]), t[idx]).backward()
            opt.step()
        sched.step()
    return net.eval()


def quantile_normal(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features mapped to normal scores by their training rows' quantiles."""
    q = QuantileTransformer(n_quantiles=200, output_distribution="normal", random_state=0).fit(train)
    return q.transform(train), q.transform(held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="the MLP's initialisation and batch order")
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
    inputs = {"std": (x[train], x[matched]), "quantile": quantile_normal(x[train], x[matched])}
    for how, (a, b) in inputs.items():
        net = fit_branch(a, y[train], hidden=args.hidden, epochs=args.epochs, seed=args.seed)
        with torch.no_grad():
            rows = torch.tensor(b, dtype=torch.float32)
            prob = torch.sigmoid(net(torch.zeros((len(rows), 1)), rows)).numpy()
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
