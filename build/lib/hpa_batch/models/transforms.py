"""What happens to a tile between the store and the network: the channel map (planes or weighted
sums of planes, study 001's combinations), uint8 -> float and resizing (``prepare``), and the
training augmentation (flips, 90-degree rotations, brightness; deterministic per seed)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpa_batch import CHANNELS
from hpa_batch.spec import AugmentSpec

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


def mix_channels(x: torch.Tensor, mix: np.ndarray | None) -> torch.Tensor:
    """``(b, len(gather), s, s)`` float planes -> ``(b, k, s, s)`` model inputs (``mix`` None: as is)."""
    if mix is None:
        return x
    return torch.einsum("kc,bchw->bkhw", torch.as_tensor(mix, device=x.device, dtype=x.dtype), x)


def prepare(x: torch.Tensor, size: int, mix: np.ndarray | None = None) -> torch.Tensor:
    """uint8 ``(b, g, S, S)`` gathered planes -> float in [0, 1] ``(b, k, size, size)`` model inputs
    (channel ``mix`` ``(k, g)`` applied, see :class:`~hpa_batch.models.transforms.ChannelMap`; antialiased resize
    if needed)."""
    x = mix_channels(x.float() / 255.0, mix)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def augment(x: torch.Tensor, aug: AugmentSpec, seed: int, only: torch.Tensor | None = None) -> torch.Tensor:
    """Random flips, 90-degree rotations and brightness per sample, on ``x``'s device.

    ``x`` is ``(b, k, s, s)`` float in [0, 1]; the draws come from a CPU generator seeded with
    ``seed``, so the result is the same on any device and after a resume. ``only`` ``(b,)`` bool
    limits the transforms to those samples (study 001 augmented rare classes only).
    """
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5
    k = torch.randint(0, 4, (b,), generator=g)
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * aug.brightness
    if only is not None:
        only = only.cpu().bool()
        flip, k = flip & only, torch.where(only, k, torch.zeros_like(k))
        gain = torch.where(only[:, None, None, None], gain, torch.ones_like(gain))
    if aug.flips:
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if aug.rot90:
        out = x.clone()
        for turns in range(1, 4):
            sel = (k == turns).nonzero().flatten().to(x.device)
            if len(sel):
                out[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
        x = out
    if aug.brightness > 0:
        x = (x * gain.to(x.device)).clamp(0, 1)
    return x
