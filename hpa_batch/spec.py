"""Typed view of one ``models[]`` entry of the configuration (what training and inference take).

A :class:`ModelSpec` is built from a schema-validated entry (:func:`hpa_batch.config.config_from_dict`)
and turned back into that entry by :meth:`ModelSpec.to_entry`, which is what a checkpoint stores; a
checkpoint's stored entry becomes a spec again through :func:`hpa_batch.config.model_spec_from_entry`
(validated, so an entry written before a key existed takes that key's default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

Level = Literal["cell", "image"]
#: Heads of a model on an encoder's embeddings (``models[].arch`` when ``encoder`` is set) and the
#: width of their hidden layer (0: linear; :class:`hpa_batch.models.factory.EmbeddingHead`).
HEADS: dict[str, int] = {"linear": 0, "mlp": 512}


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


GUARD = ThresholdRule(min_positives=10, default=0.5, low=0.05, high=0.95)
"""The threshold guard's defaults (a model spec's ``thresholds`` section; the baseline uses these)."""


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
    encoder: str | None = None
    trained_as_given: str | None = None

    @property
    def on_embeddings(self) -> bool:
        """True for a head on a frozen encoder's embeddings (``encoder`` set): it reads embedding
        stores instead of tiles."""
        return self.encoder is not None

    @property
    def external(self) -> bool:
        """True when the model was trained by another run (``trained:`` set)."""
        return self.trained is not None

    def to_entry(self) -> dict[str, Any]:
        """The validated ``models[]`` entry (JSON values) this spec was built from."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "trained_as_given"}
        out["trained"] = self.trained_as_given
        out["schedule"] = self.schedule.to_entry()
        return out


def _plain(value: Any) -> Any:
    """A spec value as JSON values: nested specs as dicts, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


#: The nested sections of an entry and their spec classes (the schedule is handled apart: its
#: parameters depend on its kind).
_NESTED: dict[str, Any] = {
    "loss": LossSpec,
    "refine_labels": RefineSpec,
    "augment": AugmentSpec,
    "thresholds": ThresholdRule,
}
#: List values of an entry, kept as tuples (the spec is frozen and hashable).
_TUPLES = ("channels", "feature_weights", "folds")


def spec_from_entry(m: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of a schema-validated ``models[]`` entry (defaults filled)."""
    values = {f.name: m[f.name] for f in fields(ModelSpec) if f.name in m}
    for key in _TUPLES:
        values[key] = None if m[key] is None else tuple(m[key])
    for key, cls in _NESTED.items():
        values[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in m[key].items()})
    sched = dict(m["schedule"])
    values["schedule"] = ScheduleSpec(kind=sched.pop("kind"), params=sched)
    values["trained"] = Path(m["trained"]).expanduser() if m.get("trained") else None
    values["trained_as_given"] = m.get("trained")
    return ModelSpec(**values)


@dataclass(frozen=True)
class CropSpec:
    """What an encoder sees of a cell.

    ``source: tiles`` takes the tile store's cell tiles (the timm models' inputs); ``source: image`` a
    square ``window`` px at full resolution centred on the cell's box (null: the box grown by the tiles'
    margin), read from the shard's OME-Zarr store, optionally zero outside the cell. Both are resized to
    ``size`` px, scaled to [0, 1] (``normalize: image``: the image's intensity window, as the tiles;
    ``crop_minmax``: each crop's own per-channel minimum and maximum), then ``(x - mean) / std``.
    """

    source: Literal["tiles", "image"]
    window: int | None
    size: int
    mask: bool
    normalize: Literal["image", "crop_minmax"]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class EncoderSpec:
    """One frozen foundation encoder (``encoders[]`` entry; :mod:`hpa_batch.models.encoders`)."""

    name: str
    kind: str
    arch: str
    model_args: dict[str, Any]
    weights: str | None
    key_map: str
    checkpoint_key: str | None
    channels: tuple[str, ...]
    crop: CropSpec
    pooling: Literal["cls", "mean", "cls+mean"]
    batch_size: int
    precision: Literal["auto", "fp32", "fp16", "bf16"]
    seed: int

    def to_entry(self) -> dict[str, Any]:
        """The validated ``encoders[]`` entry (JSON values) this spec was built from."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def encoder_from_entry(m: dict[str, Any]) -> EncoderSpec:
    """The :class:`EncoderSpec` of a schema-validated ``encoders[]`` entry (defaults filled)."""
    crop = dict(m["crop"])
    crop["mean"], crop["std"] = tuple(crop["mean"]), tuple(crop["std"])
    values = {f.name: m[f.name] for f in fields(EncoderSpec)}
    values["channels"] = tuple(m["channels"])
    values["crop"] = CropSpec(**crop)
    return EncoderSpec(**values)
