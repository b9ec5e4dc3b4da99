"""Training losses: BCE or focal loss per class, with per-class weights from the label counts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hpa_batch.spec import LossSpec


def class_weights(y: np.ndarray, loss: LossSpec) -> torch.Tensor:
    """Per-class loss weights ``(c,)`` float32: ``n / (C * n_c)`` clipped to [0.1, 10] (``counts``) or ones,
    for ``(n, c)`` targets ``y``."""
    n, c = y.shape
    w = np.ones(c, np.float32)
    if loss.class_weights == "counts":
        counts = y.sum(0)
        seen = counts > 0
        w[seen] = np.clip(n / (c * counts[seen]), 0.1, 10.0)
    w[list(loss.unweighted_classes)] = 1.0
    return torch.from_numpy(w)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, loss: LossSpec) -> torch.Tensor:
    """BCE or focal loss with per-class weights, mean over samples and classes."""
    logits = logits.float()
    if loss.kind == "focal":
        from torchvision.ops import sigmoid_focal_loss

        per = sigmoid_focal_loss(logits, y, alpha=-1, gamma=loss.gamma, reduction="none")
    else:
        per = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (per * weights).mean()
