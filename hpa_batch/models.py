"""Models: any timm backbone by name (plus the studies' own, registered by :mod:`hpa_batch.archs`),
with the channel selection and local pretrained weights.

``create_model(arch, channels, num_classes, pretrained=path)`` calls :func:`timm.create_model` with
``in_chans = len(channels)``. Pretrained weights come ONLY from a local file
(``pretrained_cfg_overlay=dict(file=path)``); timm adapts the first convolution to ``in_chans`` by
repeating the pretrained RGB filters (a 4th channel starts as a copy of the red filters, all scaled by
3 / in_chans), so every input channel starts from pretrained filters rather than zeros.

With ``n_features > 0`` the backbone becomes the image branch of a :class:`HybridNet`: the cell's
hand-crafted feature row (standardised with statistics of the training cells, stored as buffers so
the checkpoint carries them) goes through a small MLP and is concatenated to the pooled CNN
embedding before one linear head (seed study 002 concatenated its features the same way). The
features are measured at full resolution, where the 1-5 px patterns (nucleoli, centrosome, vesicles)
still exist that a 64-128 px tile of the whole cell has averaged away.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpa_batch import CHANNELS


class WeightsUnavailable(FileNotFoundError):
    """A pretrained weights file that is not a local file (nothing is downloaded)."""


_TERM = re.compile(r"^\s*(?:(\d*\.?\d+)\s*\*\s*)?(red|green|blue|yellow)\s*$")


def parse_channel(entry: str) -> dict[int, float]:
    """One input channel of a model spec -> ``{canonical channel position: weight}``.

    ``"green"`` is that channel; ``"red+blue"`` the mean of the named channels (study 001's red+blue
    grey); explicit weights (``"0.5*red"``, ``"0.3*red+0.7*blue"``) are taken as written.

    Raises
    ------
    ValueError
        A term that is not ``[weight*]red|green|blue|yellow``.
    """
    terms = entry.split("+")
    parsed = []
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"channel {entry!r}: {term.strip()!r} is not [weight*]red|green|blue|yellow")
        parsed.append((m.group(1), CHANNELS.index(m.group(2))))
    explicit = any(w is not None for w, _ in parsed)
    out: dict[int, float] = {}
    for w, c in parsed:
        out[c] = out.get(c, 0.0) + (float(w) if w is not None else 1.0 if explicit else 1.0 / len(parsed))
    return out


@dataclass(frozen=True)
class ChannelMap:
    """How a model's input channels are made from a tile's (red, green, blue, yellow) planes.

    Attributes
    ----------
    gather : list of int
        Canonical planes read from a tile, in order (a plane may repeat: green twice).
    mix : numpy.ndarray or None
        ``(k, len(gather))`` float32 weights making the ``k`` inputs from the gathered planes; None
        when the gathered planes are the inputs as they are.
    """

    gather: list[int]
    mix: np.ndarray | None


def channel_map(channels: Sequence[str]) -> ChannelMap:
    """The :class:`ChannelMap` of a spec's ``channels`` (see :func:`parse_channel`)."""
    parsed = [parse_channel(c) for c in channels]
    if all(len(p) == 1 and next(iter(p.values())) == 1.0 for p in parsed):
        return ChannelMap([next(iter(p)) for p in parsed], None)
    gather = sorted({c for p in parsed for c in p})
    mix = np.zeros((len(parsed), len(gather)), np.float32)
    for i, p in enumerate(parsed):
        for c, w in p.items():
            mix[i, gather.index(c)] = w
    return ChannelMap(gather, mix)


def feature_count(spec: dict[str, Any]) -> int:
    """Length of the feature row a spec's model takes: 0 without ``features``, the per-cell design
    row for cell models, study 002's image features for image models."""
    if not spec.get("features"):
        return 0
    from hpa_batch.measure import FEATURE_COLUMNS, IMAGE_FEATURE_COLUMNS

    return len(FEATURE_COLUMNS if spec["level"] == "cell" else IMAGE_FEATURE_COLUMNS)


def mix_channels(x: torch.Tensor, mix: np.ndarray | None) -> torch.Tensor:
    """``(b, len(gather), s, s)`` float planes -> ``(b, k, s, s)`` model inputs (``mix`` None: as is)."""
    if mix is None:
        return x
    return torch.einsum("kc,bchw->bkhw", torch.as_tensor(mix, device=x.device, dtype=x.dtype), x)


class HybridNet(torch.nn.Module):
    """A timm backbone and an MLP over hand-crafted cell features, joined before one linear head.

    Parameters
    ----------
    backbone : torch.nn.Module
        A timm model created with ``num_classes=0`` (its forward returns pooled features).
    n_features : int
        Length ``f`` of a feature row.
    num_classes : int
    hidden : int
        Width of the feature MLP's two layers.
    dropout : float
        Dropout before the head.
    """

    def __init__(
        self, backbone: torch.nn.Module, n_features: int, num_classes: int, *, hidden: int = 128, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(inplace=True),
        )
        self.num_features = int(backbone.num_features) + hidden
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(self.num_features, num_classes)

    def set_feature_stats(
        self, mean: torch.Tensor | Any, std: torch.Tensor | Any, weights: Sequence[float] | None = None
    ) -> None:
        """Standardisation of the feature rows: ``(f,)`` means and standard deviations (0 -> 1), and
        optional ``(f,)`` positive factors applied to the standardised row (study 002's feature
        weights), folded into the stored scale: ``(x - mean) / std * w == (x - mean) / (std / w)``."""
        std_t = torch.as_tensor(std, dtype=torch.float32)
        std_t = torch.where(std_t > 1e-6, std_t, torch.ones_like(std_t))
        if weights is not None:
            w = torch.as_tensor(list(weights), dtype=torch.float32)
            if w.shape != std_t.shape or bool((w <= 0).any()):
                raise ValueError(f"feature_weights: need {std_t.numel()} positive numbers, got {list(weights)}")
            std_t = std_t / w
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(std_t)

    def embed(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``(b, k, s, s)`` tiles and ``(b, f)`` feature rows -> ``(b, num_features)`` joint embedding."""
        z = ((features.float() - self.feature_mean) / self.feature_std).clamp(-10, 10)
        return torch.cat([self.backbone(x).float(), self.mlp(z)], dim=1)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``(b, num_classes)`` logits."""
        return self.head(self.drop(self.embed(x, features)))


def create_model(
    arch: str,
    channels: list[str] | tuple[str, ...],
    num_classes: int,
    pretrained: str | None = None,
    dropout: float = 0.0,
    *,
    n_features: int = 0,
) -> torch.nn.Module:
    """A timm model for ``len(channels)`` input channels and ``num_classes`` sigmoid outputs; with
    ``n_features > 0`` a :class:`HybridNet` around it that also takes ``(b, n_features)`` feature rows.

    Raises
    ------
    WeightsUnavailable
        ``pretrained`` given but not an existing local file.
    """
    import timm

    import hpa_batch.archs  # noqa: F401  (registers the founding studies' own architectures in timm)

    kwargs: dict[str, Any] = {
        "in_chans": len(channels),
        "num_classes": 0 if n_features else num_classes,
        "drop_rate": 0.0 if n_features else dropout,
    }
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"pretrained weights {path} do not exist (local files only, no downloads)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    backbone = timm.create_model(arch, **kwargs)
    if n_features:
        return HybridNet(backbone, n_features, num_classes, dropout=dropout)
    return backbone


def embed(model: torch.nn.Module, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled embedding ``(b, d)`` of a plain timm model or a :class:`HybridNet`."""
    if isinstance(model, HybridNet):
        return model.embed(x, features)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def forward(model: torch.nn.Module, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of a plain timm model (``features`` ignored) or of a hybrid (``features`` required)."""
    return model(x) if features is None else model(x, features)


def input_stats(model: torch.nn.Module, channels: list[str] | tuple[str, ...]) -> tuple[list[float], list[float]]:
    """Per-input-channel mean and std: the model's pretrained RGB statistics repeated the way timm
    repeats the first-layer filters (channel i uses RGB statistic i mod 3)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return [float(mean[i % 3]) for i in range(len(channels))], [float(std[i % 3]) for i in range(len(channels))]


def prepare(x: torch.Tensor, size: int, mix: np.ndarray | None = None) -> torch.Tensor:
    """uint8 ``(b, g, S, S)`` gathered planes -> float in [0, 1] ``(b, k, size, size)`` model inputs
    (channel ``mix`` ``(k, g)`` applied, see :class:`~hpa_batch.models.ChannelMap`; antialiased resize
    if needed)."""
    x = mix_channels(x.float() / 255.0, mix)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x
