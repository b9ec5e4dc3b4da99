"""Resuming a training exactly where it stopped: the state written at every checkpoint step
(``state/last.pt``, :class:`~hpa_batch.models.checkpoint.TrainingState`), read back only when it was
written for the same spec, fold and training data, and every rank's random state; the stop request
agreed by every rank. A mixin of :class:`hpa_batch.models.train.Trainer`, which owns the attributes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpa_batch import __version__
from hpa_batch.layout import BEST_STATE, LAST_STATE, STATE_DIR
from hpa_batch.models.checkpoint import TrainingState, read_state, write_state
from hpa_batch.models.loader import TileIndex, data_changes
from hpa_batch.models.losses import class_weights
from hpa_batch.models.runstate import RunState, StopFlag, rng_state, set_rng_state
from hpa_batch.spec import ModelSpec


class Resumable:
    """Save and resume the training state of one fold (the attributes are the trainer's)."""

    out: Path
    spec: ModelSpec
    fold: int
    rank: int
    world: int
    device: torch.device
    log: logging.Logger
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: RunState
    stop: StopFlag
    index: TileIndex
    train_pos: np.ndarray
    weights: torch.Tensor
    data: dict[str, Any]

    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR

    def _rank_rng_states(self) -> list[dict[str, Any]] | None:
        """Every rank's RNG states, gathered to every rank (a collective: all ranks call it); ``None``
        without DDP. Each rank draws its own dropout masks and augmentations, so each resumes its own."""
        if self.world == 1:
            return None
        states: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def _stop_agreed(self) -> bool:
        """Whether to stop after this step: any rank's stop request stops every rank (a signal may reach
        one process only; a rank that went on alone would wait forever in its next all-reduce)."""
        due = self.stop.due(self.state.global_step)
        if self.world == 1:
            return due
        flag = torch.tensor([int(due)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def save_state(self) -> None:
        ranks = self._rank_rng_states()
        if self.rank != 0:
            return
        write_state(
            self.state_dir / LAST_STATE,
            TrainingState(
                model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(),
                scaler=self.scaler.state_dict(),
                run=dict(vars(self.state)),
                rng=rng_state(),
                rng_ranks=ranks,
                targets=torch.from_numpy(self.index.y.astype(np.uint8)) if self.state.refined else None,
                spec=self.spec.to_entry(),
                fold=self.fold,
                version=__version__,
                data=self.data,
            ),
        )

    def load_state(self) -> bool:
        path = self.state_dir / LAST_STATE
        if not path.is_file():
            return False
        ckpt = read_state(path, self.device)
        why = self._stale_because(ckpt)
        if why:
            # a resume would mix two trainings (Snakemake reruns training because an input or the spec
            # changed): start over; the old state is kept aside, not deleted
            stale = path.with_name("last.stale.pt")
            os.replace(path, stale)
            (self.state_dir / BEST_STATE).unlink(missing_ok=True)
            self.log.warning("%s cannot be resumed, %s: starting over (old state moved to %s)", path, why, stale)
            return False
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scaler.load_state_dict(ckpt.scaler)
        self.state = RunState(**ckpt.run)
        if self.state.refined:
            self.index.y[:] = ckpt.targets.numpy().astype(np.float32)
            self.weights = class_weights(self.index.y[self.train_pos], self.spec.loss).to(self.device)
        ranks = ckpt.rng_ranks
        set_rng_state(ranks[self.rank] if ranks and len(ranks) == self.world else ckpt.rng)
        self.log.info(
            "resuming %s fold %d at epoch %d batch %d (step %d)",
            self.spec.name,
            self.fold,
            self.state.epoch,
            self.state.batch,
            self.state.global_step,
        )
        return True

    def _stale_because(self, ckpt: TrainingState) -> str | None:
        """Why a saved state belongs to another training (None: it is this one's to resume)."""
        if ckpt.spec != self.spec.to_entry() or ckpt.fold != self.fold:
            return "it was written for another model spec or fold"
        changed = data_changes(ckpt.data, self.data)
        if changed:
            return "its training data changed since (" + "; ".join(changed) + ")"
        return None
