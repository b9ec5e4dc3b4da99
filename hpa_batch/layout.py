"""Where a model's files live, and which models feed the merged tables: one home for both the
Snakefile (``workflow/rules/common.smk``) and the CLI.

A model is trained in this run (``results/models/{name}/fold{k}/``) or, with ``trained: DIR`` in its
spec, was trained by another run: ``DIR`` is that run's ``results/models/{name}`` folder and every
``fold{k}/model.pt`` in it is used (its ``thresholds.json`` and ``history.csv`` beside it). Such a
model is only applied here: no split or training job is planned for it, which is how an unlabelled
test set (``dataset.label_column: null``) is predicted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_FOLD = re.compile(r"^fold(\d+)$")


def model_spec(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config entry (``models[]``) of model ``name``.

    Raises
    ------
    KeyError
        No model of that name; the message lists the configured ones.
    """
    for spec in raw["models"]:
        if spec["name"] == name:
            return spec
    raise KeyError(f"no model named {name!r} in the config; known: {[m['name'] for m in raw['models']]}")


def is_external(spec: Mapping[str, Any]) -> bool:
    """True when the model was trained by another run (``trained:`` set)."""
    return bool(spec.get("trained"))


def model_dir(results_dir: str | Path, spec: Mapping[str, Any]) -> Path:
    """``results/models/{name}``, or the ``trained:`` folder of a model trained elsewhere."""
    if is_external(spec):
        return Path(spec["trained"]).expanduser()
    return Path(results_dir) / "models" / spec["name"]


def model_folds(spec: Mapping[str, Any]) -> list[int]:
    """Folds of the model: the configured ones, or every ``fold{k}/model.pt`` of a ``trained:`` folder.

    Raises
    ------
    FileNotFoundError
        A ``trained:`` folder that does not exist or holds no ``fold{k}/model.pt``.
    """
    if not is_external(spec):
        return [int(k) for k in spec["folds"]]
    root = model_dir("", spec)
    if not root.is_dir():
        raise FileNotFoundError(f"model {spec['name']!r}: trained: {root} is not a directory (give another "
                                "run's results/models/<name> folder)")
    folds = sorted(int(m.group(1)) for p in root.iterdir() if (m := _FOLD.match(p.name))
                   and (p / "model.pt").is_file())
    if not folds:
        raise FileNotFoundError(f"model {spec['name']!r}: trained: {root} holds no fold<k>/model.pt")
    return folds


def fold_files(results_dir: str | Path, spec: Mapping[str, Any], name: str = "model.pt") -> list[Path]:
    """``{model_dir}/fold{k}/{name}`` for every fold (``model.pt``, ``history.csv``, ``thresholds.json``)."""
    root = model_dir(results_dir, spec)
    return [root / f"fold{k}" / name for k in model_folds(spec)]


def merged_model(raw: Mapping[str, Any], level: str) -> dict[str, Any] | None:
    """The model whose predictions feed the merged tables at ``level`` (``"cell"`` or ``"image"``):
    ``merge.{level}_model`` when set, else the first model of that level, else None."""
    chosen = raw["merge"][f"{level}_model"]
    if chosen:
        return model_spec(raw, chosen)
    return next((m for m in raw["models"] if m["level"] == level), None)


def trained_here(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The models this run trains (every model without ``trained:``)."""
    return [m for m in raw["models"] if not is_external(m)]


def predictions_file(results_dir: str | Path, model: str, shard: str) -> Path:
    """``results/predictions/{model}/{shard}.parquet``."""
    return Path(results_dir) / "predictions" / model / f"{shard}.parquet"
