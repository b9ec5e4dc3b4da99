"""Models: any timm backbone by name (plus the studies' own, registered by :mod:`hpa_batch.models.archs`),
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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from hpa_batch.spec import HEADS, ModelSpec


class WeightsUnavailable(FileNotFoundError):
    """A pretrained weights file that is not a local file (nothing is downloaded)."""


def feature_count(spec: ModelSpec) -> int:
    """Length of the feature row a spec's model takes: 0 without ``features``, the per-cell design
    row for cell models, study 002's image features for image models."""
    if not spec.features:
        return 0
    from hpa_batch.cells.measure import FEATURE_COLUMNS, IMAGE_FEATURE_COLUMNS

    return len(FEATURE_COLUMNS if spec.level == "cell" else IMAGE_FEATURE_COLUMNS)


def num_features_of(model: torch.nn.Module) -> int:
    """A timm model's pooled feature width (``num_features``)."""
    return int(cast(int, model.num_features))


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
        self.feature_mean: torch.Tensor
        self.feature_std: torch.Tensor
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.BatchNorm1d(hidden),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(inplace=True),
        )
        self.num_features = num_features_of(backbone) + hidden
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


class EmbeddingHead(torch.nn.Module):
    """A classifier on frozen encoder embeddings (the linear evaluation of a foundation encoder).

    The embedding is standardised with the training cells' statistics (buffers: the checkpoint carries
    them), then a linear layer (``linear``) or one hidden layer first (``mlp``).

    Parameters
    ----------
    dim : int
        Embedding width ``d`` (input ``(b, d)`` float32).
    num_classes : int
    hidden : int
        Width of the hidden layer; 0 = linear.
    dropout : float
        Dropout before the output layer.
    """

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.body = (
            torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(inplace=True))
            if hidden
            else torch.nn.Identity()
        )
        self.num_features = hidden or dim
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(self.num_features, num_classes)

    def set_stats(self, mean: Any, std: Any) -> None:
        """``(d,)`` means and standard deviations of the training embeddings (0 -> 1)."""
        std_t = torch.as_tensor(std, dtype=torch.float32)
        self.std.copy_(torch.where(std_t > 1e-6, std_t, torch.ones_like(std_t)))
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, d)`` embeddings -> ``(b, num_features)`` (standardised, through the hidden layer)."""
        return self.body(((x.float() - self.mean) / self.std).clamp(-10, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, num_classes)`` logits."""
        return self.head(self.drop(self.embed(x)))


def embedding_width(stores: Sequence[Path]) -> int:
    """The embedding width ``d`` shared by embedding stores (``results/embeddings/{encoder}/*.zarr``).

    Raises
    ------
    ValueError
        Stores of different widths (two encoders mixed), naming them.
    """
    import zarr

    widths = {Path(p): int(zarr.open_array(Path(p) / "embedding", mode="r").shape[1]) for p in stores}
    if len(set(widths.values())) != 1:
        raise ValueError(f"embedding stores of different widths (one encoder per model): {widths}")
    return next(iter(widths.values()))


def create_head(arch: str, dim: int, num_classes: int, dropout: float = 0.0) -> EmbeddingHead:
    """The :class:`EmbeddingHead` named ``arch`` (``linear`` or ``mlp``).

    Raises
    ------
    ValueError
        Another name; the message lists the heads.
    """
    if arch not in HEADS:
        raise ValueError(f"a model on encoder embeddings takes arch {sorted(HEADS)}, not {arch!r}")
    return EmbeddingHead(dim, num_classes, hidden=HEADS[arch], dropout=dropout)


def create_model(
    arch: str,
    channels: list[str] | tuple[str, ...],
    num_classes: int,
    pretrained: str | None = None,
    dropout: float = 0.0,
    *,
    n_features: int = 0,
    drop_path: float = 0.0,
) -> torch.nn.Module:
    """A timm model for ``len(channels)`` input channels and ``num_classes`` sigmoid outputs; with
    ``n_features > 0`` a :class:`HybridNet` around it that also takes ``(b, n_features)`` feature rows.
    ``drop_path`` is timm's stochastic depth rate (``drop_path_rate``; residual architectures).

    Raises
    ------
    WeightsUnavailable
        ``pretrained`` given but not an existing local file.
    ValueError
        ``drop_path > 0`` for an architecture without stochastic depth.
    """
    import timm

    import hpa_batch.models.archs  # noqa: F401  (registers the founding studies' own architectures in timm)

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
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        backbone = timm.create_model(arch, **kwargs)
    except TypeError as exc:
        if drop_path and "drop_path_rate" in str(exc):
            raise ValueError(f"arch {arch!r} has no stochastic depth: set drop_path: 0 for it") from None
        raise
    if n_features:
        return HybridNet(backbone, n_features, num_classes, dropout=dropout)
    return backbone


def embed(model: torch.nn.Module, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled embedding ``(b, d)`` of a plain timm model, a :class:`HybridNet` or an :class:`EmbeddingHead`."""
    if isinstance(model, EmbeddingHead):
        return model.embed(x)
    if isinstance(model, HybridNet):
        if features is None:
            raise ValueError("a hybrid model embeds tiles together with their feature rows")
        return model.embed(x, features)
    head: Any = model
    return head.forward_head(head.forward_features(x), pre_logits=True)


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
