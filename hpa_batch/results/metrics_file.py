"""``metrics.json``, in one place: its typed shape (written by the evaluate stage, read by the report)
and its JSON schema (``hpa_batch/schemas/metrics.schema.json``, described in docs/TABLES.md).

Scores that cannot be computed (no admitted image, no matched cell) are ``null``; per-class maps only
name classes with positives.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import jsonschema

from hpa_batch.core.atomic import atomic_write_json, strict
from hpa_batch.core.errors import DamagedFileError, reading


class RunMetrics(TypedDict, total=False):
    """The scores of one prediction set on one set of images."""

    images: int
    image_macro_f1: float | None
    image_map: float | None
    image_per_class_f1: dict[str, float]
    image_ap_per_class: dict[str, float]
    images_per_cell_line: dict[str, int]
    image_map_per_cell_line: dict[str, float]
    cell_map: float
    iou_threshold: float
    cell_ap_per_class: dict[str, float]
    cell_map_per_cell_line: dict[str, float]
    cells_per_cell_line: dict[str, int]
    images_per_class: dict[str, int]
    cells_per_class: dict[str, int]
    cell_accuracy: float | None
    cell_macro_f1: float | None
    matched_cells: int


class PredictionGuard(TypedDict):
    """Share of cells predicted per class and the classes predicted on too many cells."""

    max_class_share: float
    class_share: dict[str, float]
    truth_share: NotRequired[dict[str, float]]
    over_predicted: list[str]
    single_prediction: bool


class BaselineMetrics(TypedDict):
    """The scikit-learn baseline's scores, all images and held out."""

    all: RunMetrics
    held_out: NotRequired[RunMetrics]


class ModelMetrics(TypedDict):
    """One cell-level model scored with its own (unfused) cell probabilities: the family comparison."""

    kind: str
    arch: str
    encoder: str | None
    random_init: NotRequired[bool]
    all: RunMetrics
    held_out: NotRequired[RunMetrics]
    held_out_note: NotRequired[str]
    prediction_guard: PredictionGuard


class Metrics(RunMetrics, total=False):
    """The whole ``metrics.json``: the deep model on every image at the top level, then the held-out
    view, the prediction guard and the baseline; an unlabelled set has ``skipped`` (why nothing is
    scored), ``cells`` and ``images_with_predictions`` instead of scores."""

    held_out_images: int
    trained_folds: list[int]
    prediction_guard: PredictionGuard
    held_out: RunMetrics
    baseline: BaselineMetrics
    models: dict[str, ModelMetrics]
    skipped: str
    cells: int
    images_with_predictions: int


def metrics_schema() -> dict[str, Any]:
    """The JSON schema of ``metrics.json``."""
    text = resources.files("hpa_batch").joinpath("schemas/metrics.schema.json").read_text()
    return cast(dict[str, Any], json.loads(text))


def write_metrics(path: Path, metrics: Metrics) -> None:
    """Check ``metrics`` against the schema and write it atomically (``indent=1``)."""
    clean = strict(metrics)  # a score that cannot be computed (NaN) is null
    jsonschema.validate(clean, metrics_schema())
    atomic_write_json(path, clean)


def read_metrics(path: Path) -> Metrics:
    """Read and check ``metrics.json``.

    Raises
    ------
    hpa_batch.core.errors.DamagedFileError
        Not JSON, or not what the schema describes (naming the first violation).
    """
    with reading(path):
        data = json.loads(Path(path).read_text())
    problem = metrics_problem(data)
    if problem is not None:
        raise DamagedFileError(path, problem)
    return cast(Metrics, data)


def metrics_problem(data: Any) -> str | None:
    """Why ``data`` is not a ``metrics.json`` (the schema's first violation), or None."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(metrics_schema()).iter_errors(data))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path)) or "<root>"
    return f"not a metrics.json: {where}: {error.message}"
