"""Learning-rate schedules, chosen by name from config (``schedule.kind``).

Every schedule is a pure function of training progress, so a resumed run sets exactly the rate an
uninterrupted run had at the same step. ``epoch`` is fractional (``epoch + step / steps_per_epoch``)
for per-step schedules.

``seed``      the seed ResNet-50 study's Table 4 schedule (per epoch): linear ramp from ``lr_start`` to
              ``lr_max`` over ``rampup_epochs``, ``lr_max`` for ``sustain_epochs``, then
              ``(lr_max - lr_min) * exp_decay ** (epoch - rampup - sustain) + lr_min``
``cosine``    cosine decay with linear warm-up, from :class:`timm.scheduler.CosineLRScheduler`
``cyclical``  triangular cyclical rate of the seed ResNet34 study: ``cycle = floor(1 + e / (2 s))``,
              ``x = |e / s - 2 cycle + 1|``, ``lr = base + (max - base) * max(0, 1 - x)`` with the
              half-cycle ``s`` in epochs
``constant``  ``lr``
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hpa_batch.core.registry import Registry

Schedule = Callable[[float], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")
register_schedule = SCHEDULES.register


def create_schedule(kind: str, epochs: int, **params: Any) -> Schedule:
    """The schedule ``kind`` with its parameters; returns ``lr(epoch: float) -> float``."""
    return SCHEDULES.create(kind, epochs=epochs, **params)


@register_schedule("seed")
def seed_schedule(
    epochs: int,
    lr_start: float = 0.005,
    lr_max: float = 0.0011,
    lr_min: float = 0.0005,
    rampup_epochs: int = 3,
    sustain_epochs: int = 2,
    exp_decay: float = 0.75,
    per_step: bool = False,
) -> Schedule:
    """Table 4 schedule (defaults are Table 4's values); applied per whole epoch unless ``per_step``."""

    def lr(epoch: float) -> float:
        e = epoch if per_step else math.floor(epoch)
        if e < rampup_epochs:
            return (lr_max - lr_start) / rampup_epochs * e + lr_start
        if e < rampup_epochs + sustain_epochs:
            return lr_max
        return (lr_max - lr_min) * exp_decay ** (e - rampup_epochs - sustain_epochs) + lr_min

    return lr


@register_schedule("cosine")
def cosine_schedule(
    epochs: int,
    lr: float = 1e-3,
    lr_min: float = 1e-6,
    warmup_epochs: float = 1.0,
    warmup_lr: float = 1e-5,
    steps_per_epoch: int = 100,
) -> Schedule:
    """Cosine with warm-up via timm's ``CosineLRScheduler`` (queried per update, no state)."""
    import torch
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = CosineLRScheduler(
        opt,
        t_initial=epochs * steps_per_epoch,
        lr_min=lr_min,
        warmup_t=int(warmup_epochs * steps_per_epoch),
        warmup_lr_init=warmup_lr,
        t_in_epochs=False,
    )

    def rate(epoch: float) -> float:
        return float(sched._get_lr(round(epoch * steps_per_epoch))[0])

    return rate


@register_schedule("cyclical")
def cyclical_schedule(epochs: int, lr: float = 1e-3, lr_max: float = 1e-2, half_cycle_epochs: float = 2.0) -> Schedule:
    """Triangular cyclical learning rate."""

    def rate(epoch: float) -> float:
        cycle = math.floor(1 + epoch / (2 * half_cycle_epochs))
        x = abs(epoch / half_cycle_epochs - 2 * cycle + 1)
        return lr + (lr_max - lr) * max(0.0, 1 - x)

    return rate


@register_schedule("constant")
def constant_schedule(epochs: int, lr: float = 1e-3) -> Schedule:
    """Constant rate."""
    return lambda epoch: lr
