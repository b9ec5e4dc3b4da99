"""The classical baseline: a scikit-learn classifier on the per-cell hand-crafted features.

It answers "what does the deep model add?": trained on the same weak labels (each cell inherits its
image's labels), on the same training images as the deep cell model, and scored by the same
evaluation. Classifiers come from a registry chosen by ``baseline.model`` in the config:

``hist_gradient_boosting``  one-vs-rest :class:`~sklearn.ensemble.HistGradientBoostingClassifier`
                            (each booster multi-threaded)
``random_forest``           one-vs-rest :class:`~sklearn.ensemble.RandomForestClassifier`
``logistic``                one-vs-rest :class:`~sklearn.linear_model.LogisticRegression`

Features: geometry, morphology, the 4 channels' intensity statistics (``log1p``) in cell and nucleus,
and the seed study's localisation features (:data:`hpa_batch.cells.measure.FEATURES`); optionally the deep
cell model's embeddings (``baseline.embeddings``). Per-class thresholds are tuned F1-optimally on
out-of-fold predictions of the training cells (image-grouped K-fold), never on evaluated cells, with
the deep models' default guard (:data:`hpa_batch.spec.GUARD`).
``n_jobs`` bounds every thread pool of the job (OpenMP/BLAS via threadpoolctl, or the one-vs-rest
process pool), so a job uses the cores its rule asked for; fits and predictions of fewer than
:data:`SERIAL_BELOW_ROWS` rows run on one thread, where thread pools cost more than they save. Prediction streams the cells table in record batches, so memory is bounded by ``max_train_cells``
and the batch size, not by the size of the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from hpa_batch.cells.measure import FEATURE_COLUMNS, feature_matrix
from hpa_batch.config import BaselineConfig
from hpa_batch.core.atomic import atomic_path, atomic_write_json
from hpa_batch.core.labels import LabelCatalog, format_labels
from hpa_batch.core.metrics import macro_f1, mean_ap, tune_thresholds
from hpa_batch.core.progress import get_logger
from hpa_batch.core.receipts import file_sha256
from hpa_batch.core.tables import parquet_file, read_arrow, read_parquet, read_schema, to_arrow, with_classes
from hpa_batch.models.split import multi_hot
from hpa_batch.results.classifiers import BASELINES
from hpa_batch.spec import GUARD

__all__ = ["BASELINES", "FEATURE_COLUMNS", "create_baseline", "features", "fit_baseline", "run_baseline"]


#: Below this many rows a fit runs on one thread: the thread pools' start and barrier costs outweigh
#: the work (a 91-cell one-vs-rest boosting fit took 2.2 s on 2 busy cores with 2 OpenMP threads and
#: 0.03 s on one; at 200,000 rows the threads pay off).
SERIAL_BELOW_ROWS = 20_000


def fit_threads(options: BaselineConfig, rows: int) -> int:
    """Threads (or one-vs-rest workers) of a fit or prediction of ``rows`` rows: ``n_jobs``, or one
    below :data:`SERIAL_BELOW_ROWS`."""
    return 1 if rows < SERIAL_BELOW_ROWS else int(options.n_jobs)


def _fit(name: str, options: BaselineConfig, x: np.ndarray, y: np.ndarray) -> Pipeline:
    """Fit a fresh pipeline; classes absent from (or universal in) ``y`` become constant predictors,
    which is expected with 19-28 classes and not worth one warning per class."""
    threads = fit_threads(options, len(x))
    with warnings.catch_warnings(), threadpool_limits(threads):
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        return create_baseline(name, options.seed, threads).fit(x, y)


def create_baseline(name: str, seed: int = 0, n_jobs: int = 1) -> Pipeline:
    """A standardising pipeline around the registered classifier ``name``."""
    return make_pipeline(StandardScaler(), BASELINES.create(name, seed=seed, n_jobs=n_jobs))


def features(cells: pd.DataFrame, embeddings: np.ndarray | None = None) -> np.ndarray:
    """The baseline's design matrix: :func:`hpa_batch.cells.measure.feature_matrix` of ``cells``
    (``(n, f)`` float32), with ``embeddings`` (``(n, d)`` float32 deep embeddings of the same cells)
    appended as extra columns when given."""
    x = feature_matrix(cells)
    if embeddings is not None:
        x = np.hstack([x, np.nan_to_num(embeddings.astype(np.float32))])
    return x


def weak_targets(image_labels: list[Any], n: int, negative: int | None) -> np.ndarray:
    """``(n_cells, n)`` uint8 targets: each cell carries its image's labels (no label = Negative)."""
    y = multi_hot([list(v) for v in image_labels], n)
    if negative is not None:
        y[y.sum(1) == 0, negative] = 1
    return y


def predict_proba(model: Pipeline, x: np.ndarray, n_jobs: int = 1) -> np.ndarray:
    """``(n, c)`` float32 class probabilities (a class absent from training gets a constant)."""
    if not len(x):
        return np.zeros((0, 0), np.float32)
    with threadpool_limits(n_jobs):
        return np.asarray(model.predict_proba(x), np.float32)


def baseline_schema(n: int) -> pa.Schema:
    """Schema of ``results/baseline/cells.parquet``."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("cell_id", pa.int32()),
            *[(f"prob_{k}", pa.float32()) for k in range(n)],
            ("predicted", pa.string()),
            ("n_predicted", pa.int16()),
        ]
    )


def embeddings_of(predictions: Mapping[str, Path] | None, keys: pd.DataFrame) -> np.ndarray | None:
    """``(n, d)`` deep embeddings of the cells ``keys`` (image_id, cell_id, shard) from the cell model's
    per-shard prediction files (``predictions``: shard -> file; only the shards in ``keys`` are read)."""
    if predictions is None:
        return None
    parts = []
    for shard in sorted(keys["shard"].unique()):
        path = Path(predictions[shard]) if shard in predictions else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{path or shard}: cell-model predictions needed for baseline.embeddings")
        table = (
            read_arrow(path, columns=["image_id", "cell_id", "embedding"]).to_pandas()
            if "embedding" in read_schema(path).names
            else None
        )
        if table is None:
            raise ValueError(
                f"{path} has no embedding column; enable embeddings in the cell model's spec "
                "or set baseline.embeddings: false"
            )
        parts.append(table)
    joined = keys[["image_id", "cell_id"]].merge(pd.concat(parts), on=["image_id", "cell_id"], how="left")
    if joined["embedding"].isna().any():
        missing = joined[joined["embedding"].isna()].iloc[0]
        raise ValueError(f"no embedding for cell {missing.image_id}/{missing.cell_id} in the cell model's predictions")
    return np.stack(joined["embedding"].to_numpy()).astype(np.float32)


def training_cells(
    cells_path: Path, held_out: set[str], max_cells: int, seed: int, batch_size: int = 65536
) -> pd.DataFrame:
    """Cells of images the deep cell model trained on (``held_out`` excluded): a uniform random sample
    of at most ``max_cells``, drawn while streaming (memory bounded by ``max_cells + batch_size`` rows)."""
    cols = ["image_id", "cell_id", "shard", "image_labels", *FEATURE_COLUMNS]
    rng = np.random.default_rng(seed)
    kept = pd.DataFrame(columns=[*cols, "_key"])
    for batch in parquet_file(cells_path).iter_batches(batch_size=batch_size, columns=cols):
        cells = batch.to_pandas()
        cells = cells[~cells["image_id"].isin(held_out)].assign(_key=lambda d: rng.random(len(d)))
        kept = pd.concat([kept, cells], ignore_index=True) if len(kept) else cells
        if len(kept) > max_cells:
            kept = kept.nsmallest(max_cells, "_key")
    return kept.sort_values(["image_id", "cell_id"]).drop(columns="_key").reset_index(drop=True)


def fit_baseline(
    cells: pd.DataFrame, catalog: LabelCatalog, options: BaselineConfig, embeddings: np.ndarray | None = None
) -> tuple[Pipeline, np.ndarray, dict[str, float]]:
    """Fit the classifier on ``cells``; tune thresholds on image-grouped out-of-fold predictions.

    Returns
    -------
    model, thresholds, cv
        The fitted pipeline, ``(c,)`` float64 thresholds and the OOF scores against the weak labels.
    """
    n = catalog.n_classes
    x = features(cells, embeddings)
    y = weak_targets(cells["image_labels"].tolist(), n, catalog.negative)
    groups = cells["image_id"].to_numpy()
    n_splits = min(options.cv_folds, len(np.unique(groups)))
    if n_splits < 2:
        raise ValueError(f"the baseline needs cells of >= 2 training images, got {len(np.unique(groups))}")
    oof = np.zeros(y.shape, np.float32)
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        m = _fit(options.model, options, x[train], y[train])
        oof[test] = predict_proba(m, x[test], fit_threads(options, len(test)))
    thresholds = tune_thresholds(
        y, oof, GUARD.default, min_positives=GUARD.min_positives, low=GUARD.low, high=GUARD.high
    )  # the deep models' default guard
    model = _fit(options.model, options, x, y)
    cv = {"cells": len(y), "macro_f1": macro_f1(y, oof, thresholds), "map": mean_ap(y, oof)}
    return model, thresholds, cv


def run_baseline(
    cells_path: Path,
    held_out: set[str],
    catalog: LabelCatalog,
    options: BaselineConfig,
    out: Path,
    *,
    predictions: Mapping[str, Path] | None = None,
    batch_size: int = 65536,
    excluded: set[str] | frozenset[str] = frozenset(),
    summary_out: Path | None = None,
    model_out: Path | None = None,
) -> dict[str, Any]:
    """Train the baseline and write per-cell probabilities for every cell of ``cells_path``.

    Neither ``held_out`` images nor ``excluded`` ones (doubtful segmentations, fold -2) are trained on.

    Writes ``out`` (``cells.parquet``: image_id, cell_id, ``prob_k``, predicted, n_predicted), the
    fitted model (``model_out``, default ``model.joblib`` beside ``out``) and the summary (``summary_out``,
    default ``summary.json`` beside it: features, thresholds, out-of-fold scores, the model file's
    SHA-256), each atomically. Returns the summary.
    """
    train = training_cells(cells_path, set(held_out) | set(excluded), options.max_train_cells, options.seed)
    emb_dir = predictions if options.embeddings else None
    emb = embeddings_of(emb_dir, train)
    model, thresholds, cv = fit_baseline(train, catalog, options, emb)
    rows = predict_cells(
        model, thresholds, cells_path, out, catalog, options=options, predictions=emb_dir, batch_size=batch_size
    )
    model_out = model_out or out.with_name("model.joblib")
    with atomic_path(model_out) as tmp:
        joblib.dump(model, tmp)
    summary = {
        "model": options.model,
        "features": list(FEATURE_COLUMNS) + (["embedding"] if emb is not None else []),
        "train_cells": len(train),
        "held_out_images": len(held_out),
        "cells": rows,
        "thresholds": [float(t) for t in thresholds],
        "oof_weak_labels": cv,
        "model_sha256": file_sha256(model_out),
        "catalog": catalog.name,
    }
    atomic_write_json(summary_out or out.with_name("summary.json"), summary)
    get_logger().info("baseline %s: trained on %d cells, predicted %d -> %s", options.model, len(train), rows, out)
    return summary


def predict_cells(
    model: Pipeline,
    thresholds: np.ndarray,
    cells_path: Path,
    out: Path,
    catalog: LabelCatalog,
    *,
    options: BaselineConfig,
    predictions: Mapping[str, Path] | None,
    batch_size: int = 65536,
) -> int:
    """Write ``out``: the baseline's probabilities ``prob_k`` and label set (``thresholds`` ``(c,)``) of
    every cell of ``cells_path``, streamed batch by batch. Returns the rows written."""
    n = catalog.n_classes
    schema, rows = with_classes(baseline_schema(n), catalog), 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in parquet_file(cells_path).iter_batches(
            batch_size=batch_size, columns=["image_id", "cell_id", "shard", *FEATURE_COLUMNS]
        ):
            cells = batch.to_pandas()
            x = features(cells, embeddings_of(predictions, cells))
            prob = predict_proba(model, x, fit_threads(options, len(x)))
            table = cells[["image_id", "cell_id"]].copy()
            for k in range(n):
                table[f"prob_{k}"] = prob[:, k]
            hits = prob >= thresholds
            table["predicted"] = [format_labels(np.flatnonzero(h).tolist(), catalog) for h in hits]
            table["n_predicted"] = hits.sum(1).astype(np.int16)
            writer.write_table(to_arrow(table, schema))
            rows += len(table)
    return rows


def apply_baseline(
    trained: Path,
    cells_path: Path,
    catalog: LabelCatalog,
    options: BaselineConfig,
    out: Path,
    *,
    predictions: Mapping[str, Path] | None = None,
    summary_out: Path | None = None,
    model_out: Path | None = None,
) -> dict[str, Any]:
    """Apply another run's baseline (``trained``: its ``results/baseline`` folder) to every cell of
    ``cells_path``: its model and thresholds, nothing trained. Its ``model.joblib`` must have the
    SHA-256 its ``summary.json`` records and its catalog must be this run's; a copy of it becomes this
    run's model file, so the outputs are those of a training.

    Raises
    ------
    FileNotFoundError
        The folder has no model file.
    DamagedFileError
        Its summary does not read, or the model is not the file the summary describes.
    ValueError
        The summary predates model checksums, or the baseline was made for another label catalog or
        with embeddings this run does not give.
    """
    import json
    import shutil

    from hpa_batch.core.errors import DamagedFileError, reading

    trained = Path(trained)
    summary_path, model_path = trained / "summary.json", trained / "model.joblib"
    with reading(summary_path):
        told = json.loads(summary_path.read_text())
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no model file (baseline.trained names a run's results/baseline folder)")
    if "model_sha256" not in told:
        raise ValueError(f"{summary_path}: written before baselines recorded their model's SHA-256; rerun its baseline")
    if told["model_sha256"] != file_sha256(model_path):
        raise DamagedFileError(model_path, f"not the model {summary_path} describes (SHA-256 differs)")
    if told.get("catalog", catalog.name) != catalog.name or len(told["thresholds"]) != catalog.n_classes:
        raise ValueError(f"{trained}: a baseline of catalog {told.get('catalog')}, this run uses {catalog.name}")
    uses_embeddings = "embedding" in told["features"]
    if uses_embeddings and not predictions:
        raise ValueError(f"{trained}: the baseline appends the cell model's embeddings; give baseline.embeddings: true")
    with reading(model_path):
        model = joblib.load(model_path)
    thresholds = np.asarray(told["thresholds"], np.float64)
    emb = predictions if uses_embeddings else None
    rows = predict_cells(model, thresholds, cells_path, out, catalog, options=options, predictions=emb)
    model_out = model_out or out.with_name("model.joblib")
    with atomic_path(model_out) as tmp:
        shutil.copyfile(model_path, tmp)
    summary = {**told, "cells": rows, "trained": str(trained), "train_cells": 0, "held_out_images": None}
    atomic_write_json(summary_out or out.with_name("summary.json"), summary)
    get_logger().info("baseline of %s applied: %d cells -> %s", trained, rows, out)
    return summary


def baseline_stage(
    cells_path: Path,
    images_path: Path,
    catalog: LabelCatalog,
    options: BaselineConfig,
    out: Path,
    *,
    trained_folds: set[int],
    all_unseen: bool,
    predictions: Mapping[str, Path] | None,
    summary_out: Path,
    model_out: Path,
) -> dict[str, Any]:
    """The baseline stage: the held-out images (those no deep model of the run trained on, from the
    images table's folds) and the doubtful-segmentation ones are left out of training, then
    :func:`run_baseline`; with ``baseline.trained``, :func:`apply_baseline` instead. Returns its summary."""
    from hpa_batch.models.split import EXCLUDED
    from hpa_batch.results.evaluate import held_out_images

    if options.trained is not None:  # another run's baseline, like a models[] entry with trained:
        return apply_baseline(
            options.trained,
            cells_path,
            catalog,
            options,
            out,
            predictions=predictions,
            summary_out=summary_out,
            model_out=model_out,
        )
    images = read_parquet(images_path, columns=["image_id", "fold", "rejected"])
    held = held_out_images(images, trained_folds, all_unseen=all_unseen)
    excluded = set(images.loc[images["fold"] == EXCLUDED, "image_id"])
    return run_baseline(
        cells_path,
        held,
        catalog,
        options,
        out,
        predictions=predictions,
        excluded=excluded,
        summary_out=summary_out,
        model_out=model_out,
    )
