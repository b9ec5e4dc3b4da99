"""Weak-label refinement: a cell-level model narrows each cell's image labels once, mid-training."""

from __future__ import annotations

import numpy as np
import pandas as pd


def refine_weak_labels(
    y: np.ndarray, prob: np.ndarray, image_id: np.ndarray, keep_ratio: float, negative: int | None
) -> np.ndarray:
    """Narrow weak cell labels with a model's own cell probabilities, relative to the cell's image.

    A cell keeps class ``k`` of its image when its probability of ``k`` is at least ``keep_ratio``
    times the highest probability of ``k`` among the cells of that image, so every image label stays
    on at least one cell; a cell left without any class becomes Negative (when the catalog has one).

    Parameters
    ----------
    y : numpy.ndarray
        ``(n, c)`` float32 weak multi-hot labels (each cell's image labels).
    prob : numpy.ndarray
        ``(n, c)`` float32 model probabilities of the same cells.
    image_id : numpy.ndarray
        ``(n,)`` image of each cell.
    keep_ratio : float
        In (0, 1]; 1 keeps only the image's top cell(s) per class.
    negative : int or None
        Index of the Negative class.

    Returns
    -------
    numpy.ndarray
        ``(n, c)`` float32 refined multi-hot targets.
    """
    weak = np.asarray(y) > 0
    scored = np.where(weak, prob, 0.0).astype(np.float32)
    best = pd.DataFrame(scored).groupby(pd.factorize(np.asarray(image_id))[0]).transform("max").to_numpy()
    out = (weak & (scored >= keep_ratio * best)).astype(np.float32)
    if negative is not None:
        out[out.sum(1) == 0, negative] = 1.0
    return out
