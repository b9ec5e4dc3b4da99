"""Segmentation quality against ground-truth masks (the synthetic generator's truth).

``average_precision`` is the instance-segmentation AP of the Data Science Bowl 2018 / Cellpose papers:
at an IoU threshold ``t`` (>= 0.5, where a match is unique), AP = TP / (TP + FP + FN).
"""

from __future__ import annotations

import numpy as np


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise IoU of the objects of two label images.

    Parameters
    ----------
    truth, pred : numpy.ndarray
        ``(h, w)`` integer label images (0 = background), ids need not be contiguous.

    Returns
    -------
    numpy.ndarray
        ``(n_truth, n_pred)`` float64, rows/columns in ascending id order (background excluded).
    """
    t_ids, t_inv = np.unique(truth.ravel(), return_inverse=True)
    p_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    overlap = np.bincount(t_inv * len(p_ids) + p_inv, minlength=len(t_ids) * len(p_ids))
    overlap = overlap.reshape(len(t_ids), len(p_ids)).astype(np.float64)
    t_area, p_area = overlap.sum(1, keepdims=True), overlap.sum(0, keepdims=True)
    iou = overlap / np.maximum(t_area + p_area - overlap, 1)
    t_keep, p_keep = t_ids != 0, p_ids != 0
    return iou[np.ix_(t_keep, p_keep)]


def average_precision(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """TP / (TP + FP + FN) at an IoU threshold >= 0.5 (1.0 when both images are empty)."""
    return ap_from_iou(iou_matrix(truth, pred), threshold)


def ap_from_iou(iou: np.ndarray, threshold: float = 0.5) -> float:
    """:func:`average_precision` from an ``(n_truth, n_pred)`` IoU matrix (:func:`iou_matrix`), so
    several thresholds share one matrix."""
    if threshold < 0.5:
        raise ValueError("matches are unique only for IoU thresholds >= 0.5")
    n_true, n_pred = iou.shape
    tp = int((iou > threshold).sum())
    denom = tp + (n_pred - tp) + (n_true - tp)
    return 1.0 if denom == 0 else tp / denom
