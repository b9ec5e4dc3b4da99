"""Architectures of the founding studies that timm does not ship, registered in timm's registry so
that a model spec's ``arch:`` names them like any timm model (``timm.create_model("hpa_small_cnn")``).

``hpa_small_cnn``  seed study 003: six 3x3 convolutions (32/64/32/64/32/64 filters, batch norm, ReLU)
                   with 2x2 max pooling after every second one, a dense layer of 128 with dropout, one
                   output per class (sigmoid in the loss). The study flattened 128 px maps; here the
                   last maps are average-pooled to 4 x 4 first, so any input size gives the same head.
``hpa_densenet121_study``  seed study 001: timm's DenseNet-121 features (local ImageNet weights when
                   ``pretrained``), then the study's head: a 1x1 convolution to 128 maps, ReLU, dropout
                   0.5, dense 512 + ReLU, one output per class (maps average-pooled to 4 x 4 before the
                   dense layer, as above).

Each model has the timm interface the pipeline uses: ``num_features`` (the pre-logits width),
``forward_features``, ``forward_head(x, pre_logits=...)``, ``num_classes=0`` for a headless
backbone (pooled features, as :class:`hpa_batch.models.factory.HybridNet` needs) and a ``pretrained_cfg``
with the input statistics.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from timm.models import register_model
from torch import nn

__all__ = ["SmallCNN", "StudyHeadNet", "hpa_densenet121_study", "hpa_small_cnn"]


class SmallCNN(nn.Module):
    """Seed study 003's small CNN.

    Parameters
    ----------
    in_chans : int
        Input channels (4 for RGBY).
    num_classes : int
        Outputs; 0 = no head (``forward`` returns the ``(b, 128)`` dense features).
    drop_rate : float
        Dropout after the dense layer.
    widths : tuple of int
        Filters of the six convolutions.
    hidden : int
        Width of the dense layer (= ``num_features``).
    """

    def __init__(
        self,
        in_chans: int = 4,
        num_classes: int = 19,
        drop_rate: float = 0.5,
        *,
        widths: tuple[int, ...] = (32, 64, 32, 64, 32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            prev = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(prev * 16, hidden), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.num_classes = num_classes
        self.head = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "input_size": (in_chans, 128, 128),
            "architecture": "hpa_small_cnn",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, in_chans, s, s)`` -> ``(b, 64, s / 8, s / 8)`` maps."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Maps -> ``(b, 128)`` dense features (``pre_logits``) or ``(b, num_classes)`` logits."""
        x = self.dense(self.pool(x))
        return x if pre_logits else self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _entry_kwargs(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Drop what ``timm.create_model`` passes to every entry point but these models do not take;
    return the ``pretrained_cfg_overlay`` (a local weights file, if any)."""
    for unused in ("pretrained_cfg", "cache_dir"):
        kwargs.pop(unused, None)
    return kwargs.pop("pretrained_cfg_overlay", None)


def _load_local(model: nn.Module, overlay: dict[str, Any] | None) -> None:
    """Weights from ``pretrained_cfg_overlay["file"]`` (a local state dict; tensors whose shape differs,
    such as another class count's head, are left as initialised)."""
    path = (overlay or {}).get("file")
    if not path:
        raise ValueError("hpa_small_cnn has no published weights: pretrained needs a local file")
    from hpa_batch.models.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)


@register_model
def hpa_small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """Seed study 003's small CNN (see :class:`SmallCNN`)."""
    overlay = _entry_kwargs(kwargs)
    model = SmallCNN(**kwargs)
    if pretrained:
        _load_local(model, overlay)
    return model


class StudyHeadNet(nn.Module):
    """A timm feature extractor with seed study 001's head.

    Parameters
    ----------
    backbone : torch.nn.Module
        timm model created with ``num_classes=0, global_pool=""`` (forward_features gives maps).
    num_classes : int
        Outputs; 0 = no head (``forward`` returns the ``(b, 512)`` dense features).
    drop_rate : float
        Dropout after the 1x1 convolution (the study: 0.5).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.5, *, maps: int = 128, hidden: int = 512
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.reduce = nn.Sequential(
            nn.Conv2d(int(cast(int, backbone.num_features)), maps, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Linear(maps * 16, hidden), nn.ReLU(inplace=True))
        self.num_features = hidden
        self.num_classes = num_classes
        self.head = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, s, s)`` -> the backbone's last maps."""
        features: torch.Tensor = cast(Any, self.backbone).forward_features(x)
        return features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Maps -> ``(b, 512)`` dense features (``pre_logits``) or ``(b, num_classes)`` logits."""
        x = self.dense(self.reduce(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def hpa_densenet121_study(pretrained: bool = False, **kwargs: Any) -> StudyHeadNet:
    """Seed study 001: DenseNet-121 with its 1x1-conv / dense-512 head (see :class:`StudyHeadNet`)."""
    import timm

    overlay = _entry_kwargs(kwargs)
    num_classes = kwargs.pop("num_classes", 28)
    drop_rate = kwargs.pop("drop_rate", 0.5)
    backbone = timm.create_model(
        "densenet121", pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=0, global_pool="", **kwargs
    )
    return StudyHeadNet(backbone, num_classes, drop_rate)
