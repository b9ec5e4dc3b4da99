"""Every path under ``results_dir`` and ``logs_dir``, where a model's files live, and which models
feed the merged tables: the one home of these facts, used by the Snakefile
(``workflow/rules/common.smk``) and the CLI alike.

:data:`RESULTS` and :data:`LOGS` map a key to a template relative to the folder; :func:`result` /
:func:`log` fill the fields given and keep the others as ``{field}`` (a Snakemake wildcard)::

    result("results", "cells")              -> results/cells/{shard}.parquet   (a rule's pattern)
    result("results", "cells", shard="a")   -> results/cells/a.parquet         (a file)

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpa_batch.config import Config
    from hpa_batch.spec import ModelSpec

_FOLD = re.compile(r"^fold(\d+)$")

RESULTS: dict[str, str] = {
    "manifest": "manifest/{shard}.parquet",
    "manifest_rejected": "qc/{shard}.manifest.tsv",
    "store": "zarr/{shard}.zarr",
    "convert_summary": "zarr/{shard}.convert.json",
    "rejected": "qc/{shard}.rejected.tsv",
    "qc_table": "qc/rejected.tsv",
    "qc_summary": "qc/summary.txt",
    "segment_summary": "zarr/{shard}.segment.json",
    "segment_qc": "qc/{shard}.segment.tsv",
    "cells": "cells/{shard}.parquet",
    "tiles": "tiles/{shard}.zarr",
    "splits": "splits.parquet",
    "model_dir": "models/{model}",
    "fold_dir": "models/{model}/fold{fold}",
    "predictions": "predictions/{model}/{shard}.parquet",
    "embeddings": "embeddings/{encoder}/{shard}.zarr",
    "cells_table": "tables/cells.parquet",
    "images_table": "tables/images.parquet",
    "truth_pairs": "tables/truth_pairs.parquet",
    "submission": "submission.csv",
    "baseline_cells": "baseline/cells.parquet",
    "baseline_summary": "baseline/summary.json",
    "baseline_model": "baseline/model.joblib",
    "metrics": "metrics.json",
    "cells_h5ad": "tables/cells.h5ad",
    "spatialdata": "spatialdata/{shard}.zarr",
    "report": "report.html",
    "report_figures": "report_figures",
}
"""Every output under ``results_dir`` (docs/TABLES.md describes the tables)."""

LOGS: dict[str, str] = {
    "manifest": "manifest/{shard}.log",
    "convert": "convert/{shard}.log",
    "qc": "qc.log",
    "segment": "segment/{shard}.log",
    "measure": "measure/{shard}.log",
    "tiles": "tiles/{shard}.log",
    "split": "split.log",
    "train": "train/{model}-fold{fold}.log",
    "predict": "predict/{model}-{shard}.log",
    "embed": "embed/{encoder}-{shard}.log",
    "merge": "merge.log",
    "submit": "submit.log",
    "baseline": "baseline.log",
    "evaluate": "evaluate.log",
    "h5ad": "h5ad.log",
    "spatialdata": "spatialdata/{shard}.log",
    "report": "report.log",
}
"""Every job log under ``logs_dir``."""

#: The files a training job writes into its fold folder (the rule train_model's outputs).
MODEL_FILE, HISTORY_FILE, THRESHOLDS_FILE = "model.pt", "history.csv", "thresholds.json"
FOLD_FILES = (MODEL_FILE, HISTORY_FILE, THRESHOLDS_FILE)
#: The training state a fold folder keeps for resuming (``state/last.pt``, ``state/best.pt``).
STATE_DIR, LAST_STATE, BEST_STATE = "state", "last.pt", "best.pt"


class _KeepMissing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fill(root: str | Path, template: str, fields: Mapping[str, object]) -> Path:
    return Path(root) / template.format_map(_KeepMissing({k: str(v) for k, v in fields.items()}))


def result(results_dir: str | Path, key: str, **fields: object) -> Path:
    """``results_dir / RESULTS[key]`` with ``fields`` filled (the rest stay ``{field}``)."""
    return _fill(results_dir, RESULTS[key], fields)


#: Outputs Snakemake knows by one file inside them instead of as a folder: Snakemake writes a
#: ``.snakemake_timestamp`` file into every folder output, a foreign file spatialdata warns about on each
#: read. The stage still writes the whole folder at once.
TRACKED: dict[str, str] = {"spatialdata": "zarr.json"}


def tracked(results_dir: str | Path, key: str, **fields: object) -> Path:
    """What a rule declares as output for :data:`RESULTS` ``key``: its path, or the file inside it that
    :data:`TRACKED` names."""
    path = result(results_dir, key, **fields)
    return path / TRACKED[key] if key in TRACKED else path


def snakemake_target(results_dir: str | Path, path: str | Path) -> Path:
    """The Snakemake target that redoes output ``path`` (:func:`tracked`'s file for a tracked folder)."""
    found = result_key(results_dir, path)
    return Path(path) / TRACKED[found[0]] if found and found[0] in TRACKED else Path(path)


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


_PATTERNS = [(key, _pattern(template)) for key, template in RESULTS.items()]
_FOLD_FILE = re.compile(r"^models/(?P<model>[^/]+)/fold(?P<fold>\d+)/(?P<file>[^/]+)$")


def result_key(results_dir: str | Path, path: str | Path) -> tuple[str, dict[str, str]] | None:
    """The inverse of :func:`result`: the :data:`RESULTS` key of ``path`` under ``results_dir`` and its
    fields (shard, model, fold), ``("fold:<file>", ...)`` for a file of a fold folder, None for a path
    that is no output."""
    try:
        rel = Path(path).relative_to(results_dir).as_posix()  # lexical first: a walk from the folder
    except ValueError:
        try:
            rel = Path(path).resolve().relative_to(Path(results_dir).resolve()).as_posix()
        except ValueError:
            return None
    for key, pattern in _PATTERNS:
        m = pattern.match(rel)
        if m:
            return key, m.groupdict()
    fold = _FOLD_FILE.match(rel)
    if fold and fold.group("file") in FOLD_FILES:  # another file in a fold folder is nobody's output
        return f"fold:{fold.group('file')}", {"model": fold.group("model"), "fold": fold.group("fold")}
    return None


def log(logs_dir: str | Path, key: str, **fields: object) -> Path:
    """``logs_dir / LOGS[key]`` with ``fields`` filled (the rest stay ``{field}``)."""
    return _fill(logs_dir, LOGS[key], fields)


def shard_of(path: str | Path) -> str:
    """The shard a per-shard file belongs to: its name without the suffixes (``a-0001.parquet``)."""
    return Path(path).name.split(".")[0]


def model_dir(results_dir: str | Path, spec: ModelSpec) -> Path:
    """``results/models/{name}``, or the ``trained:`` folder of a model trained elsewhere."""
    if spec.trained is not None:
        return spec.trained
    return result(results_dir, "model_dir", model=spec.name)


def model_folds(spec: ModelSpec) -> list[int]:
    """Folds of the model: the configured ones, or every ``fold{k}/model.pt`` of a ``trained:`` folder.

    Raises
    ------
    FileNotFoundError
        A ``trained:`` folder that does not exist or holds no ``fold{k}/model.pt``.
    """
    if spec.trained is None:
        return list(spec.folds)
    root = spec.trained
    if not root.is_dir():
        raise FileNotFoundError(
            f"model {spec.name!r}: trained: {root} is not a directory (give another run's results/models/<name> folder)"
        )
    folds = sorted(int(m.group(1)) for p in root.iterdir() if (m := _FOLD.match(p.name)) and (p / MODEL_FILE).is_file())
    if not folds:
        raise FileNotFoundError(f"model {spec.name!r}: trained: {root} holds no fold<k>/model.pt")
    return folds


def fold_dir(results_dir: str | Path, spec: ModelSpec, fold: int) -> Path:
    """``{model_dir}/fold{k}``: one fold's ``model.pt``, ``thresholds.json``, ``history.csv``, ``state/``."""
    return model_dir(results_dir, spec) / f"fold{fold}"


def fold_files(results_dir: str | Path, spec: ModelSpec, name: str = MODEL_FILE) -> list[Path]:
    """``{model_dir}/fold{k}/{name}`` for every fold (``model.pt``, ``history.csv``, ``thresholds.json``)."""
    return [fold_dir(results_dir, spec, k) / name for k in model_folds(spec)]


def predictions_file(results_dir: str | Path, model: str, shard: str) -> Path:
    """``results/predictions/{model}/{shard}.parquet``."""
    return result(results_dir, "predictions", model=model, shard=shard)


def held_out_args(cfg: Config) -> list[str]:
    """The ``--trained-folds ... [--all-unseen]`` arguments of the baseline and evaluate verbs."""
    folds, all_unseen = cfg.trained_folds()
    return ["--trained-folds", *map(str, folds)] + (["--all-unseen"] if all_unseen else [])
