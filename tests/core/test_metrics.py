import numpy as np
from sklearn.metrics import average_precision_score, f1_score

from hpa_batch.core.metrics import macro_auc, macro_f1, mean_ap, tune_thresholds


def test_thresholds_are_f1_optimal_per_class():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]])
    p = np.array([[0.30, 0.9], [0.35, 0.2], [0.10, 0.8], [0.05, 0.85], [0.2, 0.95]])
    thr = tune_thresholds(y, p)
    assert thr[0] == 0.30  # 0.30 and 0.35 positive, 0.2 / 0.1 / 0.05 negative
    assert macro_f1(y, p, thr) > macro_f1(y, p, 0.5)
    assert f1_score(y[:, 0], p[:, 0] >= thr[0]) == 1.0


def test_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 5)) < 0.3).astype(int)
    p = np.clip(y * 0.4 + rng.random((200, 5)) * 0.6, 0, 1)
    assert macro_f1(y, p) == f1_score(y, p >= 0.5, average="macro", zero_division=0)
    z = y.copy()
    z[:, 3], p2 = 0, p.copy()
    p2[:, 3] = 0  # class 3 absent from truth and predictions: left out, not counted as 0
    assert macro_f1(z, p2) == f1_score(z[:, [0, 1, 2, 4]], p2[:, [0, 1, 2, 4]] >= 0.5, average="macro")
    assert np.isclose(mean_ap(y, p), average_precision_score(y, p, average="macro"))
    assert 0.5 < macro_auc(y, p) <= 1.0
    y[:, 4] = 0  # a class without positives is left out of AP/AUC
    assert np.isclose(mean_ap(y, p), average_precision_score(y[:, :4], p[:, :4], average="macro"))


def test_thresholds_cannot_degenerate():
    """A rare class whose F1 optimum sits near 0 (the 0.004 Centrosome threshold of #11)."""
    rng = np.random.default_rng(0)
    y = np.zeros((500, 2), int)
    y[:3, 0] = 1  # 3 validation positives, scored lower than most negatives
    y[:200, 1] = 1
    p = rng.random((500, 2)) * 0.5 + 0.3
    p[:3, 0] = [0.004, 0.005, 0.006]
    p[:200, 1] = 0.001  # many positives, optimum near 0
    unguarded = tune_thresholds(y, p)
    assert unguarded[0] <= 0.006 and unguarded[1] <= 0.001  # what the old rule chose
    reasons = []
    thr = tune_thresholds(y, p, 0.5, min_positives=10, low=0.05, high=0.95, reasons=reasons)
    assert thr[0] == 0.5 and reasons[0] == "few positives"  # too few positives: the default
    # an optimum below `low` means "label every cell": the class keeps the default, not 0.05 (which
    # would still label every cell here)
    assert thr[1] == 0.5 and reasons[1] == "below low"
    assert ((p >= thr).mean(axis=0) < 0.9).all()
    # a separable class is tuned inside the bounds, a very high optimum is clipped to `high`
    q = np.where(y == 1, 0.99, 0.2)
    q[:, 0] = np.where(y[:, 0] == 1, 0.3, 0.1)
    y[:30, 0] = 1
    q[:30, 0] = 0.3
    thr = tune_thresholds(y, q, 0.5, min_positives=10, low=0.05, high=0.95, reasons=reasons)
    assert thr[0] == 0.3 and thr[1] == 0.95 and reasons == ["tuned", "clipped high"]
