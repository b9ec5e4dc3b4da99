"""The training stage: one timm model on one fold, resumable bit for bit.

Cell-level models learn from cell tiles with weak labels (each cell gets its image's labels) and,
image-level models from the whole-image inputs; with ``features: true`` from hand-crafted feature rows
too (cells: their design rows, images: study 002's image features; :class:`~hpa_batch.models.factory.HybridNet`).
Input channels are planes or weighted sums of planes (:class:`~hpa_batch.models.transforms.ChannelMap`). Per epoch: train loss, validation loss, macro-F1,
mAP and AUC go to ``history.csv`` and the log; the best epoch (by ``selection``: validation mAP or
loss) is kept, per-class F1-optimal thresholds (guarded, see ``thresholds``) are tuned on its
validation predictions, and early stopping watches the same metric.

Checkpoints (``state/last.pt``, written atomically: temp file + rename) hold model, optimizer, AMP
scaler, epoch, step, position in the epoch plan, best-so-far bookkeeping and every RNG state; they
load with ``torch.load(weights_only=True)``. SIGTERM or SIGUSR1 (what SLURM sends before a job's time
runs out) make the loop save after the current step and exit with :data:`EXIT_REQUEUE`; running the
same command again resumes where it stopped and ends with the same weights as an uninterrupted run.
Multi-GPU: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP and each rank takes
its own buffers of the same epoch plan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hpa_batch import __version__
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.driver import RESUME_HINT
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.metrics import summary, tune_thresholds
from hpa_batch.core.process import local_rank, rank
from hpa_batch.core.progress import get_logger
from hpa_batch.core.tables import read_parquet
from hpa_batch.layout import BEST_STATE, HISTORY_FILE, LAST_STATE, MODEL_FILE, THRESHOLDS_FILE
from hpa_batch.models.checkpoint import (
    BestEpoch,
    read_best,
    write_best,
    write_model,
    write_thresholds,
)
from hpa_batch.models.factory import HybridNet, create_head, create_model, embedding_width, feature_count, input_stats
from hpa_batch.models.loader import (
    GroupDataset,
    TileIndex,
    build_index,
    data_digest,
    epoch_plan,
    feature_moments,
    iterate_batches,
)
from hpa_batch.models.losses import class_weights, loss_fn
from hpa_batch.models.refine import refine_weak_labels
from hpa_batch.models.resume import Resumable
from hpa_batch.models.runstate import (
    HOLD_ENV,
    RunState,
    StopFlag,
    TrainPace,
    seed_everything,
    seed_of,
)
from hpa_batch.models.schedules import create_schedule
from hpa_batch.models.split import EXCLUDED
from hpa_batch.models.transforms import augment, channel_map, prepare
from hpa_batch.spec import ModelSpec

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "try again"; the next attempt resumes from state/last.pt
__all__ = ["EXIT_REQUEUE", "HOLD_ENV", "Trainer", "refine_weak_labels", "train_model", "training_positions"]


def training_positions(
    index: TileIndex, fold: int, spec: ModelSpec, negative: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows to train on (fold != ``fold``, never fold -2 = excluded; options applied) and to validate on
    (fold == ``fold``)."""
    train = np.flatnonzero((index.fold != fold) & (index.fold != EXCLUDED))
    val = np.flatnonzero(index.fold == fold)
    if spec.single_label_only:
        train = train[index.n_labels[train] == 1]
    if negative is not None and spec.negative_oversample > 1:
        neg = train[index.y[train, negative] > 0]
        train = np.concatenate([train] + [neg] * (spec.negative_oversample - 1))
    return np.sort(train), val


# ----------------------------------------------------------------------------- trainer
class Trainer(Resumable):
    """Trains one model spec on one fold; see the module docstring."""

    def __init__(
        self,
        spec: ModelSpec,
        fold: int,
        stores: list[Path],
        splits: pd.DataFrame,
        catalog: LabelCatalog,
        *,
        out: Path,
        device: str | None = None,
    ):
        self.spec, self.fold, self.out, self.catalog = spec, fold, out, catalog
        self.stopped_early: int | None = None  # epoch (1-based) at which early stopping ended training
        self.log = get_logger()
        self.rank = rank()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.world > 1:
            self._init_distributed()
        seed_everything(spec.seed)
        self.embedded = spec.on_embeddings  # a head on an encoder's embedding rows, not a CNN on tiles
        array = "embedding" if self.embedded else None
        self.index = build_index(stores, splits, spec.level, catalog.n_classes, array=array)
        self.train_pos, self.val_pos = training_positions(self.index, fold, spec, catalog.negative)
        self.data = data_digest(self.index, self.train_pos, self.val_pos, catalog.classes)  # before any refinement
        if len(self.train_pos) < 2:
            raise ValueError(f"model {spec.name} fold {fold}: fewer than 2 training tiles")
        self.channel_map = channel_map(spec.channels)
        self.channels: list[int] | None = None if self.embedded else self.channel_map.gather
        self.features = bool(spec.features)
        self.model = self._create(stores)
        self.model = self.model.to(self.device)
        mean, std = self.input_stats()
        view = (1, -1) if self.embedded else (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(*view)
        self.std = torch.tensor(std, device=self.device).view(*view)
        self.amp = self._amp_dtype()
        if spec.channels_last and self.device.type == "cuda" and not self.embedded:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self._wrap(self.model)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.weights = class_weights(self.index.y[self.train_pos], spec.loss).to(self.device)
        below = spec.augment.only_rare_below  # classes with fewer training rows than this
        self.rare = torch.from_numpy(self.index.y[self.train_pos].sum(0) < below) if below else None
        self.steps_per_epoch = sum(len(g) for g in self._plan(0))
        if self.steps_per_epoch == 0:  # would "train" epochs of nothing and report a nan loss
            raise ValueError(
                f"model {spec.name} fold {fold}: no training batch per epoch on rank {self.rank} of "
                f"{self.world} ({len(self.train_pos)} training tiles, batch_size {spec.batch_size})"
            )
        sched = dict(spec.schedule.params)
        if spec.schedule.kind == "cosine":
            sched.setdefault("steps_per_epoch", self.steps_per_epoch)
        self.lr_at = create_schedule(spec.schedule.kind, spec.epochs, **sched)
        self.state = RunState()
        self.stop = StopFlag()
        self._best: dict[str, torch.Tensor] | None = None  # best weights before a refinement

    # -- setup helpers
    def _create(self, stores: list[Path]) -> torch.nn.Module:
        """The model: a timm network (or hybrid) on tiles, or a head on embedding rows; feature rows
        and embeddings standardised with the training rows' statistics (stored in the weights)."""
        spec, n = self.spec, self.catalog.n_classes
        if self.embedded:
            head = create_head(spec.arch, embedding_width(stores), n, spec.dropout)
            head.set_stats(*feature_moments(self.index, self.train_pos, name="embedding"))
            return head
        model = create_model(
            spec.arch,
            spec.channels,
            n,
            spec.pretrained,
            spec.dropout,
            n_features=feature_count(spec),
            drop_path=spec.drop_path,
        )
        if isinstance(model, HybridNet):
            model.set_feature_stats(*feature_moments(self.index, self.train_pos), spec.feature_weights)
        return model

    def input_stats(self) -> tuple[list[float], list[float]]:
        """Per-input-channel mean and std of the inputs (a head standardises its own rows: 0 and 1)."""
        if self.embedded:
            return [0.0], [1.0]
        return input_stats(self.model, self.spec.channels)

    def _inputs(self, x: torch.Tensor, seed: int | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Rows as read -> the model's inputs on the device: tiles prepared (and, with ``seed``,
        augmented); embedding rows as float32."""
        x = x.to(self.device, non_blocking=True)
        if self.embedded:
            return x.float()
        x = prepare(x, self.spec.input_size, self.channel_map.mix)
        if seed is None or y is None:
            return x
        return augment(x, self.spec.augment, seed, self._augmented(y))

    def _init_distributed(self) -> None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            local = local_rank()
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.spec.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def _wrap(self, model: torch.nn.Module) -> Any:
        net: Any = model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.spec.compile:
            net = torch.compile(net)
        return net

    def _optimizer(self) -> torch.optim.Optimizer:
        kind, wd = self.spec.optimizer, self.spec.weight_decay
        params = self.model.parameters()
        lr0 = 1e-3
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr0, momentum=0.9, weight_decay=wd)
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr0, weight_decay=wd)
        return torch.optim.Adam(params, lr=lr0, weight_decay=wd)

    def _plan(self, epoch: int) -> list[list[np.ndarray]]:
        return epoch_plan(
            self.index,
            self.train_pos,
            self.spec.batch_size,
            seed=self.spec.seed,
            epoch=epoch,
            buffer_chunks=self.spec.buffer_chunks,
            rank=self.rank,
            world=self.world,
        )

    # -- checkpoints
    # -- loops
    def _set_lr(self, epoch_float: float) -> float:
        lr = self.lr_at(epoch_float)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _forward(self, x: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of normalised tiles ``x`` (and feature rows ``f`` for a hybrid model)."""
        x = (x - self.mean) / self.std
        if self.spec.channels_last and self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            return self.net(x) if f is None else self.net(x, f.to(self.device, non_blocking=True))

    def _augmented(self, y: torch.Tensor) -> torch.Tensor | None:
        """``(b,)`` bool: which samples are augmented (those with a rare class), or None for all."""
        if self.rare is None:
            return None
        return (y[:, self.rare] > 0).any(dim=1)

    def train_epoch(self, epoch: int) -> float | None:
        """One epoch from the saved batch position; returns the mean loss, or None if stopped."""
        self.net.train()
        plan = self._plan(epoch)
        data = GroupDataset(self.index, plan, self.channels, self.features)
        pace = TrainPace(self.spec.log_every_s, self.state.batch)
        for b, x, f, y, _ in iterate_batches(data, self.spec.num_workers, skip=self.state.batch):
            self._set_lr(epoch + b / max(self.steps_per_epoch, 1))
            x = self._inputs(x, seed_of(self.spec.seed, epoch, b), y)
            loss = loss_fn(self._forward(x, f), y.to(self.device), self.weights, self.spec.loss)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state.loss_sum += float(loss.detach())
            self.state.loss_count += 1
            self.state.batch, self.state.global_step = b + 1, self.state.global_step + 1
            if pace.due(len(y)):
                self.log.info(
                    "%s fold %d epoch %d/%d: step %d/%d, loss %.4g, %s",
                    self.spec.name,
                    self.fold,
                    epoch + 1,
                    self.spec.epochs,
                    b + 1,
                    self.steps_per_epoch,
                    self.state.loss_sum / self.state.loss_count,
                    pace.line(b + 1, self.steps_per_epoch),
                )
            if self._stop_agreed():
                self.save_state()
                return None
        mean = self.state.loss_sum / self.state.loss_count if self.state.loss_count else float("nan")
        self.state.batch, self.state.loss_sum, self.state.loss_count = 0, 0.0, 0
        return mean

    @torch.no_grad()
    def predict_positions(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels of the given rows, in order (no augmentation)."""
        self.net.eval()
        groups = [[positions[i : i + self.spec.batch_size]] for i in range(0, len(positions), self.spec.batch_size)]
        probs, ys = [], []
        for _, x, f, y, _ in iterate_batches(GroupDataset(self.index, groups, self.channels, self.features), 0):
            x = self._inputs(x)
            probs.append(torch.sigmoid(self._forward(x, f).float()).cpu().numpy())
            ys.append(y.numpy())
        c = self.catalog.n_classes
        return (
            np.concatenate(probs) if probs else np.zeros((0, c), np.float32),
            np.concatenate(ys) if ys else np.zeros((0, c), np.float32),
        )

    def refine_labels(self) -> None:
        """Replace the weak targets of the training and validation cells by refined ones
        (:func:`refine_weak_labels` with the best model so far, by validation loss) and restart
        best-epoch tracking: losses against the new targets do not compare with the earlier ones."""
        rows = np.unique(np.concatenate([self.train_pos, self.val_pos]))
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        best = self.best_weights()
        if best is not None:  # the best epoch so far, not a possibly worse last one
            self.model.load_state_dict(best)
        prob, y = self.predict_positions(rows)
        self.model.load_state_dict(current)
        self._best = None  # not needed after the refinement: free the copy
        refined = refine_weak_labels(
            y, prob, self.index.image_id[rows], self.spec.refine_labels.keep_ratio, self.catalog.negative
        )
        self.index.y[rows] = refined
        self.weights = class_weights(self.index.y[self.train_pos], self.spec.loss).to(self.device)
        self.state.refined = True
        self.state.best_loss, self.state.bad_epochs = float("inf"), 0
        self.log.info(
            "refined the weak labels of %d cells: %.2f -> %.2f labels per cell",
            len(rows),
            float((y > 0).sum(1).mean()),
            float(refined.sum(1).mean()),
        )

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights of the best epoch so far: kept in memory by every rank, else from ``best.pt``."""
        if self._best is not None:
            return self._best
        path = self.state_dir / BEST_STATE
        return read_best(path, self.device).model if path.is_file() else None

    def validate(self, epoch: int, train_loss: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        prob, y = self.predict_positions(self.val_pos)
        val_loss = float("nan")
        if len(y):
            logits = torch.logit(torch.from_numpy(prob).clamp(1e-7, 1 - 1e-7))
            val_loss = float(loss_fn(logits, torch.from_numpy(y), self.weights.cpu(), self.spec.loss))
        row = {
            "epoch": epoch,
            "lr": self.lr_at(epoch),
            "train_loss": train_loss,
            "val_loss": val_loss,
            **({f"val_{k}": v for k, v in summary(y, prob).items()} if len(y) else {}),
        }
        return row, prob, y

    @contextlib.contextmanager
    def attempt_log(self) -> Iterator[None]:
        """Copy this attempt's log lines to ``state/train.log``, which keeps every attempt.

        Snakemake deletes a failed job's log before it retries, so the job log shows only the last
        attempt; this file (not an output, so never deleted) shows each stop and resume.
        """
        if self.rank != 0:
            yield
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.state_dir / "train.log", mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.log.addHandler(handler)
        try:
            yield
        finally:
            self.log.removeHandler(handler)
            handler.close()

    def fit(self) -> dict[str, Any]:
        """Train (resuming if a checkpoint exists); write the outputs; return the summary."""
        with self.attempt_log():
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self.stop.install()
        job = f", SLURM job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""
        self.log.info(
            "train %s fold %d: pid %d on %s%s", self.spec.name, self.fold, os.getpid(), socket.gethostname(), job
        )
        self.load_state()
        patience = self.spec.early_stopping_patience
        while self.state.epoch < self.spec.epochs:
            epoch = self.state.epoch
            t0 = time.monotonic()
            after = self.spec.refine_labels.after_epochs
            if after and epoch == after and not self.state.refined and self.state.batch == 0:
                self.refine_labels()
                self.save_state()
            train_loss = self.train_epoch(epoch)
            if train_loss is None:
                self.log.info(
                    "stop requested: saved %s, exiting with %d; %s",
                    self.state_dir / LAST_STATE,
                    EXIT_REQUEUE,
                    RESUME_HINT,
                )
                raise SystemExit(EXIT_REQUEUE)
            row, prob, y = self.validate(epoch, train_loss)
            row["seconds"] = round(time.monotonic() - t0, 2)
            self.state.history.append(row)
            self.log.info(
                "%s fold %d epoch %d/%d: %s",
                self.spec.name,
                self.fold,
                epoch + 1,
                self.spec.epochs,
                " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
            )
            improved = self._track_best(row, prob, y)
            self.state.epoch += 1
            self.save_state()
            self.stop.hold(epoch)
            if patience and not improved and self.state.bad_epochs >= patience:
                self.stopped_early = epoch + 1
                self.log.info(
                    "early stopping: stopped at epoch %d of %d: no %s improvement for %d epochs "
                    "(early_stopping_patience %d); best epoch %d",
                    epoch + 1,
                    self.spec.epochs,
                    self.spec.selection,
                    patience,
                    patience,
                    self.state.best_epoch + 1,
                )
                break
        return self.finish()

    def selection_score(self, row: dict[str, float]) -> float:
        """The best-epoch criterion of ``row``, lower = better (``-val_map`` or the validation loss)."""
        if self.spec.selection == "val_map" and np.isfinite(row.get("val_map", np.nan)):
            return -float(row["val_map"])
        return row["val_loss"] if np.isfinite(row["val_loss"]) else row["train_loss"]

    def _track_best(self, row: dict[str, float], prob: np.ndarray, y: np.ndarray) -> bool:
        metric = self.selection_score(row)
        if metric < self.state.best_loss:
            self.state.best_loss, self.state.best_epoch, self.state.bad_epochs = metric, int(row["epoch"]), 0
            t = self.spec.thresholds
            reasons = ["no validation"] * self.catalog.n_classes
            thresholds = (
                tune_thresholds(
                    y,
                    prob,
                    t.default,
                    min_positives=t.min_positives,
                    low=t.low,
                    high=t.high,
                    reasons=reasons,
                )
                if len(y)
                else np.full(self.catalog.n_classes, t.default)
            )
            if self.spec.refine_labels.after_epochs and not self.state.refined:
                self._best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.rank == 0:
                write_best(
                    self.state_dir / BEST_STATE,
                    BestEpoch(self.model.state_dict(), torch.from_numpy(thresholds), reasons, int(row["epoch"])),
                )
            return True
        self.state.bad_epochs += 1
        return False

    def val_support(self) -> list[int]:
        """Validation positives per class (the weak targets the thresholds were tuned against)."""
        if not len(self.val_pos):
            return [0] * self.catalog.n_classes
        return [int(v) for v in (self.index.y[self.val_pos] > 0).sum(axis=0)]

    def finish(self) -> dict[str, Any]:
        """Write ``model.pt`` (best weights + thresholds + spec), ``thresholds.json``, ``history.csv``."""
        if self.rank != 0:
            return {}
        best = read_best(self.state_dir / BEST_STATE)
        mean, std = self.input_stats()
        with atomic_path(self.out / HISTORY_FILE) as tmp:
            pd.DataFrame(self.state.history).to_csv(tmp, index=False)
        write_thresholds(
            self.out / THRESHOLDS_FILE,
            catalog=self.catalog,
            thresholds=best.thresholds.tolist(),
            support=self.val_support(),
            reasons=best.threshold_reasons,
            rule=self.spec.thresholds.to_entry(),
            selection=self.spec.selection,
        )
        result = {
            "name": self.spec.name,
            "fold": self.fold,
            "best_epoch": best.epoch,
            "selection": self.spec.selection,
            "best_score": self.state.best_loss,
            "stopped_early_at_epoch": self.stopped_early,
            "epochs_run": len(self.state.history),
            "train_tiles": len(self.train_pos),
            "val_tiles": len(self.val_pos),
            "catalog": self.catalog.name,
            "version": __version__,
        }
        write_model(
            self.out / MODEL_FILE,
            weights=best.model,
            thresholds=best.thresholds,
            spec=self.spec,
            catalog=self.catalog,
            mean=mean,
            std=std,
            summary=result,
        )
        return result


def train_model(
    spec: ModelSpec,
    fold: int,
    stores: list[Path],
    splits_path: Path,
    catalog: LabelCatalog,
    *,
    out: Path,
    device: str | None = None,
) -> dict[str, Any]:
    """Train one model spec on one fold into ``out`` (``results/models/{name}/fold{k}``)."""
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(spec, fold, stores, read_parquet(splits_path), catalog, out=out, device=device)
    try:
        return trainer.fit()
    finally:
        if trainer.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
