"""A training run's state between steps: the loop's bookkeeping (:class:`RunState`, saved in every
checkpoint), the stop request a signal raises (:class:`StopFlag`), the progress pace, and every RNG
state (saved and restored so a resumed run draws exactly what an uninterrupted one drew)."""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from hpa_batch.core.atomic import atomic_write_json
from hpa_batch.core.process import is_rank0


@dataclass
class RunState:
    """Bookkeeping saved in every checkpoint (plain values only)."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    refined: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


#: Test hook: while the file this names exists, the trainer waits after each epoch's checkpoint
#: (until a stop signal, the file's removal or :data:`HOLD_LIMIT_S`), so a test signals it at a known point
#: instead of training long enough for its signal to arrive. ``<file>.held`` says where it waits.
HOLD_ENV = "HPA_BATCH_HOLD_FILE"
HOLD_LIMIT_S = 900.0


class StopFlag:
    """Set by SIGTERM / SIGUSR1 (or, for tests, ``HPA_BATCH_STOP_AT_STEP``)."""

    def __init__(self) -> None:
        self.raised = False
        # the test hooks act on rank 0 only, as a signal to one process of a DDP job would
        rank0 = is_rank0()
        self.at_step = int(os.environ.get("HPA_BATCH_STOP_AT_STEP", "-1")) if rank0 else -1
        self.hold_file = Path(os.environ[HOLD_ENV]) if rank0 and os.environ.get(HOLD_ENV) else None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True

    def due(self, step: int) -> bool:
        return self.raised or step == self.at_step

    def hold(self, epoch: int) -> None:
        """Test hook (:data:`HOLD_ENV`): wait here while the hold file exists and no stop was requested.

        Announces the wait in ``<hold file>.held`` (the epoch just saved and this pid) before waiting.
        """
        if self.hold_file is None or not self.hold_file.exists() or self.raised:
            return
        held = self.hold_file.with_name(self.hold_file.name + ".held")
        atomic_write_json(held, {"epoch": epoch, "pid": os.getpid()}, indent=None)
        deadline = time.monotonic() + HOLD_LIMIT_S
        while self.hold_file.exists() and not self.raised and time.monotonic() < deadline:
            time.sleep(0.05)


class TrainPace:
    """When to log a progress line within an epoch (every ``every_s`` seconds; 0 = every step), and
    the throughput and time left since the epoch (or its resume) began."""

    def __init__(self, every_s: float, start_step: int) -> None:
        self.every_s, self.start_step = every_s, start_step
        self.t0 = self.last = time.monotonic()
        self.images = 0

    def due(self, images: int) -> bool:
        self.images += images
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True

    def line(self, step: int, steps: int) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        per_step = elapsed / max(step - self.start_step, 1)
        return f"{self.images / elapsed:.1f} img/s, eta {per_step * (steps - step):.0f} s"


# ----------------------------------------------------------------------------- reproducibility
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as weights_only-loadable values."""
    np_state = cast(tuple[Any, ...], np.random.get_state())
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": [list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (its tensors may have been loaded onto a GPU)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((3, tuple(state["python"][0]), state["python"][1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def seed_of(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash of ints is stable, but be explicit)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))
