"""Typed view of one ``models[]`` entry of the configuration (what training and inference take).

A :class:`ModelSpec` is built from a schema-validated entry (:func:`hpa_batch.config.config_from_dict`)
and turned back into that entry by :meth:`ModelSpec.to_entry`, which is what a checkpoint stores; a
checkpoint's stored entry becomes a spec again through :func:`hpa_batch.config.model_spec_from_entry`
(validated, so an entry written before a key existed takes that key's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

Level = Literal["cell", "image"]


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered learning-rate schedule (:mod:`hpa_batch.models.schedules`) and its parameters."""

    kind: str
    params: dict[str, Any]

    def to_entry(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}


@dataclass(frozen=True)
class LossSpec:
    """BCE or focal loss and the per-class weights."""

    kind: Literal["bce", "focal"]
    class_weights: Literal["none", "counts"]
    unweighted_classes: tuple[int, ...]
    gamma: float


@dataclass(frozen=True)
class RefineSpec:
    """Weak-label refinement of cell models (``after_epochs`` 0 = off)."""

    after_epochs: int
    keep_ratio: float


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation."""

    flips: bool
    rot90: bool
    brightness: float
    only_rare_below: int


@dataclass(frozen=True)
class ThresholdRule:
    """How per-class thresholds are tuned on the best epoch's validation predictions."""

    min_positives: int
    default: float
    low: float
    high: float

    def to_entry(self) -> dict[str, Any]:
        return {"min_positives": self.min_positives, "default": self.default, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ModelSpec:
    """One model: what it learns from, its architecture, its training schedule and its inference."""

    name: str
    level: Level
    arch: str
    pretrained: str | None
    trained: Path | None
    channels: tuple[str, ...]
    input_size: int
    features: bool
    feature_weights: tuple[float, ...] | None
    folds: tuple[int, ...]
    epochs: int
    batch_size: int
    optimizer: Literal["adam", "adamw", "sgd"]
    weight_decay: float
    dropout: float
    log_every_s: float
    drop_path: float
    schedule: ScheduleSpec
    loss: LossSpec
    single_label_only: bool
    negative_oversample: int
    refine_labels: RefineSpec
    augment: AugmentSpec
    amp: Literal["auto", "off", "bf16", "fp16"]
    channels_last: bool
    compile: bool
    early_stopping_patience: int
    selection: Literal["val_map", "val_loss"]
    thresholds: ThresholdRule
    buffer_chunks: int
    num_workers: int
    tta: bool
    embeddings: bool
    seed: int
    gpus: int
    trained_as_given: str | None = None

    @property
    def external(self) -> bool:
        """True when the model was trained by another run (``trained:`` set)."""
        return self.trained is not None

    def to_entry(self) -> dict[str, Any]:
        """The validated ``models[]`` entry (JSON values) this spec was built from."""
        return {
            "name": self.name,
            "level": self.level,
            "arch": self.arch,
            "pretrained": self.pretrained,
            "trained": self.trained_as_given,
            "channels": list(self.channels),
            "input_size": self.input_size,
            "features": self.features,
            "feature_weights": None if self.feature_weights is None else list(self.feature_weights),
            "folds": list(self.folds),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "dropout": self.dropout,
            "log_every_s": self.log_every_s,
            "drop_path": self.drop_path,
            "schedule": self.schedule.to_entry(),
            "loss": {
                "kind": self.loss.kind,
                "class_weights": self.loss.class_weights,
                "unweighted_classes": list(self.loss.unweighted_classes),
                "gamma": self.loss.gamma,
            },
            "single_label_only": self.single_label_only,
            "negative_oversample": self.negative_oversample,
            "refine_labels": {
                "after_epochs": self.refine_labels.after_epochs,
                "keep_ratio": self.refine_labels.keep_ratio,
            },
            "augment": {
                "flips": self.augment.flips,
                "rot90": self.augment.rot90,
                "brightness": self.augment.brightness,
                "only_rare_below": self.augment.only_rare_below,
            },
            "amp": self.amp,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "early_stopping_patience": self.early_stopping_patience,
            "selection": self.selection,
            "thresholds": self.thresholds.to_entry(),
            "buffer_chunks": self.buffer_chunks,
            "num_workers": self.num_workers,
            "tta": self.tta,
            "embeddings": self.embeddings,
            "seed": self.seed,
            "gpus": self.gpus,
        }


def spec_from_entry(m: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of a schema-validated ``models[]`` entry (defaults filled)."""
    sched = dict(m["schedule"])
    loss, refine, aug = m["loss"], m["refine_labels"], m["augment"]
    return ModelSpec(
        name=m["name"],
        level=cast(Level, m["level"]),
        arch=m["arch"],
        pretrained=m["pretrained"],
        trained=Path(m["trained"]).expanduser() if m.get("trained") else None,
        trained_as_given=m.get("trained"),
        channels=tuple(m["channels"]),
        input_size=m["input_size"],
        features=m["features"],
        feature_weights=None if m["feature_weights"] is None else tuple(m["feature_weights"]),
        folds=tuple(int(k) for k in m["folds"]),
        epochs=m["epochs"],
        batch_size=m["batch_size"],
        optimizer=m["optimizer"],
        weight_decay=m["weight_decay"],
        dropout=m["dropout"],
        log_every_s=m["log_every_s"],
        drop_path=m["drop_path"],
        schedule=ScheduleSpec(kind=sched.pop("kind"), params=sched),
        loss=LossSpec(
            kind=loss["kind"],
            class_weights=loss["class_weights"],
            unweighted_classes=tuple(loss["unweighted_classes"]),
            gamma=loss["gamma"],
        ),
        single_label_only=m["single_label_only"],
        negative_oversample=m["negative_oversample"],
        refine_labels=RefineSpec(after_epochs=refine["after_epochs"], keep_ratio=refine["keep_ratio"]),
        augment=AugmentSpec(
            flips=aug["flips"], rot90=aug["rot90"], brightness=aug["brightness"], only_rare_below=aug["only_rare_below"]
        ),
        amp=m["amp"],
        channels_last=m["channels_last"],
        compile=m["compile"],
        early_stopping_patience=m["early_stopping_patience"],
        selection=m["selection"],
        thresholds=ThresholdRule(**m["thresholds"]),
        buffer_chunks=m["buffer_chunks"],
        num_workers=m["num_workers"],
        tta=m["tta"],
        embeddings=m["embeddings"],
        seed=m["seed"],
        gpus=m["gpus"],
    )
