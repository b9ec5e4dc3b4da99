"""Multilabel metrics (scikit-learn) and F1-optimal per-class thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)


def _present(y: np.ndarray) -> np.ndarray:
    """Classes with at least one positive and one negative (where AP/AUC are defined)."""
    pos = y.sum(axis=0)
    return np.flatnonzero((pos > 0) & (pos < len(y)))


def macro_f1(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray | float = 0.5) -> float:
    """Macro F1 over the classes that occur in ``y`` or in the predictions (a class absent from
    both has no defined F1 and is left out rather than counted as 0).

    Parameters
    ----------
    y, prob : numpy.ndarray
        ``(n, c)`` true multi-hot and predicted probabilities.
    """
    pred = prob >= np.asarray(thresholds)
    keep = np.flatnonzero((np.asarray(y).sum(0) > 0) | (pred.sum(0) > 0))
    if not len(keep):
        return float("nan")
    return float(f1_score(np.asarray(y)[:, keep], pred[:, keep], average="macro", zero_division=0))


def mean_ap(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean average precision over classes with positives and negatives (nan if none)."""
    keep = _present(y)
    return float(average_precision_score(y[:, keep], prob[:, keep], average="macro")) if len(keep) else float("nan")


def macro_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """Macro ROC AUC over classes with positives and negatives (nan if none)."""
    keep = _present(y)
    return float(roc_auc_score(y[:, keep], prob[:, keep], average="macro")) if len(keep) else float("nan")


def tune_thresholds(
    y: np.ndarray,
    prob: np.ndarray,
    default: float = 0.5,
    *,
    min_positives: int = 1,
    low: float = 0.0,
    high: float = 1.0,
    reasons: list[str] | None = None,
) -> np.ndarray:
    """Per-class F1-optimal thresholds that cannot degenerate.

    Parameters
    ----------
    y, prob : numpy.ndarray
        ``(n, c)`` targets (0/1) and probabilities.
    default : float
        Threshold of a class with fewer than ``min_positives`` positives (an F1 optimum on a handful of
        positives can sit near 0 and then label everything), and of a class whose F1 optimum lies
        below ``low``: such an optimum says "predict it for (nearly) every cell", i.e. the scores do
        not separate the class, and clipping it to ``low`` would still label most cells.
    low, high : float
        Optima below ``low`` fall back to ``default``; optima above ``high`` are clipped to ``high``.
    reasons : list of str, optional
        Filled with one word per class: ``tuned``, ``few positives``, ``below low`` or ``clipped high``.

    Returns
    -------
    numpy.ndarray
        ``(c,)`` float64.
    """
    out = np.full(y.shape[1], default, np.float64)
    why = ["few positives"] * y.shape[1]
    for c in range(y.shape[1]):
        if y[:, c].sum() < max(min_positives, 1):
            continue
        precision, recall, thr = precision_recall_curve(y[:, c], prob[:, c])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = float(thr[int(np.argmax(f1))])
        if best < low:
            why[c] = "below low"
        elif best > high:
            out[c], why[c] = high, "clipped high"
        else:
            out[c], why[c] = best, "tuned"
    if reasons is not None:
        reasons[:] = why
    return out


def summary(y: np.ndarray, prob: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """``macro_f1``, ``map``, ``auc`` of a prediction."""
    return {"macro_f1": macro_f1(y, prob, thresholds), "map": mean_ap(y, prob), "auc": macro_auc(y, prob)}
