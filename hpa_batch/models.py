"""Models: any timm backbone by name, with the channel selection and local pretrained weights.

``create_model(arch, channels, num_classes, pretrained=path)`` calls :func:`timm.create_model` with
``in_chans = len(channels)``. Pretrained weights come ONLY from a local file
(``pretrained_cfg_overlay=dict(file=path)``); timm adapts the first convolution to ``in_chans`` by
repeating the pretrained RGB filters (a 4th channel starts as a copy of the red filters, all scaled by
3 / in_chans), so every input channel starts from pretrained filters rather than zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpa_batch import CHANNELS


class WeightsUnavailable(FileNotFoundError):
    """A pretrained weights file that is not a local file (nothing is downloaded)."""


def channel_indices(channels: list[str] | tuple[str, ...]) -> list[int]:
    """Positions of the selected channels in the canonical (red, green, blue, yellow) order."""
    return [CHANNELS.index(c) for c in channels]


def create_model(arch: str, channels: list[str] | tuple[str, ...], num_classes: int,
                 pretrained: str | None = None, dropout: float = 0.0) -> torch.nn.Module:
    """A timm model for ``len(channels)`` input channels and ``num_classes`` sigmoid outputs.

    Raises
    ------
    WeightsUnavailable
        ``pretrained`` given but not an existing local file.
    """
    import timm

    kwargs: dict[str, Any] = {"in_chans": len(channels), "num_classes": num_classes, "drop_rate": dropout}
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"pretrained weights {path} do not exist (local files only, no downloads)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return timm.create_model(arch, **kwargs)


def input_stats(model: torch.nn.Module, channels: list[str] | tuple[str, ...]) -> tuple[list[float], list[float]]:
    """Per-input-channel mean and std: the model's pretrained RGB statistics repeated the way timm
    repeats the first-layer filters (channel i uses RGB statistic i mod 3)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return [float(mean[i % 3]) for i in range(len(channels))], [float(std[i % 3]) for i in range(len(channels))]
