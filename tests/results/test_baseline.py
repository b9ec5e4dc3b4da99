"""The scikit-learn baseline: features, weak targets, streaming prediction, held-out images, embeddings."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from hpa_batch.config import BaselineConfig
from hpa_batch.core.labels import CATALOGS
from hpa_batch.results.baseline import (
    BASELINES,
    FEATURE_COLUMNS,
    create_baseline,
    features,
    fit_baseline,
    run_baseline,
    training_cells,
    weak_targets,
)

CAT = CATALOGS["hpa2021"]
OPTIONS = BaselineConfig(
    enabled=True, model="logistic", embeddings=False, max_train_cells=100000, cv_folds=3, n_jobs=1, seed=0
)


def synthetic_cells(n_images=24, cells_per_image=12, seed=0):
    """Cells whose green_nucleus_ratio separates Nucleoplasm (0) from Cytosol (16) images."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        label = [0] if i % 2 == 0 else [16]
        for c in range(cells_per_image):
            f = {col: float(rng.gamma(2.0, 50.0)) for col in FEATURE_COLUMNS}
            f["green_nucleus_ratio"] = float((2.5 if label == [0] else 0.4) + rng.normal(0, 0.2))
            rows.append(
                {"image_id": f"img{i:02d}", "cell_id": c + 1, "shard": f"s-{i % 2:04d}", "image_labels": label, **f}
            )
    return pd.DataFrame(rows)


def test_features_are_finite_float32_with_log_intensities():
    cells = synthetic_cells(2, 3)
    cells.loc[0, "green_cell_mean"] = np.nan
    cells.loc[1, "blob_count"] = np.inf
    x = features(cells)
    assert x.shape == (6, len(FEATURE_COLUMNS)) and x.dtype == np.float32 and np.isfinite(x).all()
    col = FEATURE_COLUMNS.index("red_cell_mean")
    assert x[2, col] == pytest.approx(np.log1p(cells["red_cell_mean"].iat[2]), rel=1e-6)
    assert features(cells, np.ones((6, 5), np.float32)).shape == (6, len(FEATURE_COLUMNS) + 5)


def test_weak_targets_inherit_image_labels_and_empty_is_negative():
    y = weak_targets([[0, 3], []], CAT.n_classes, CAT.negative)
    assert y.shape == (2, 19) and y[0, [0, 3]].tolist() == [1, 1] and y[0].sum() == 2
    assert y[1, CAT.negative] == 1 and y[1].sum() == 1


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_registered_baseline_learns_the_separable_feature(name):
    cells = synthetic_cells()
    model, thresholds, cv = fit_baseline(cells, CAT, replace(OPTIONS, model=name))
    assert thresholds.shape == (19,) and cv["cells"] == len(cells)
    assert cv["map"] > 0.9, cv  # out-of-fold, grouped by image
    prob = model.predict_proba(features(cells))
    assert prob.shape == (len(cells), 19)
    is_nucleo = cells["image_labels"].map(lambda v: v == [0]).to_numpy()
    assert prob[is_nucleo, 0].mean() > prob[~is_nucleo, 0].mean() + 0.5


def test_unknown_baseline_names_the_known_ones():
    with pytest.raises(ValueError, match="hist_gradient_boosting"):
        create_baseline("svm")


def test_too_few_training_images_is_a_clear_error():
    cells = synthetic_cells(1, 5)
    with pytest.raises(ValueError, match=">= 2 training images"):
        fit_baseline(cells, CAT, OPTIONS)


def test_training_cells_exclude_held_out_and_respect_the_cap(tmp_path):
    path = tmp_path / "cells.parquet"
    synthetic_cells().to_parquet(path)
    held = {"img00", "img01"}
    t = training_cells(path, held, 100000, 0, batch_size=50)
    assert not set(t["image_id"]) & held and len(t) == 22 * 12
    capped = training_cells(path, held, 100, 0, batch_size=50)
    assert len(capped) == 100 and not set(capped["image_id"]) & held
    assert capped.equals(training_cells(path, held, 100, 0, batch_size=50))  # seeded


def test_streamed_prediction_equals_one_batch_and_is_written_with_summary(tmp_path):
    path = tmp_path / "cells.parquet"
    synthetic_cells().to_parquet(path)
    a = run_baseline(path, {"img00"}, CAT, OPTIONS, tmp_path / "a" / "cells.parquet", batch_size=7)
    b = run_baseline(path, {"img00"}, CAT, OPTIONS, tmp_path / "b" / "cells.parquet", batch_size=100000)
    ta, tb = pd.read_parquet(tmp_path / "a" / "cells.parquet"), pd.read_parquet(tmp_path / "b" / "cells.parquet")
    assert len(ta) == 24 * 12 and ta.drop(columns=[c for c in ta if c.startswith("prob_")]).equals(
        tb.drop(columns=[c for c in tb if c.startswith("prob_")])
    )
    np.testing.assert_allclose(ta.filter(like="prob_").to_numpy(), tb.filter(like="prob_").to_numpy(), atol=1e-6)
    assert a["train_cells"] == 23 * 12 and a["thresholds"] == b["thresholds"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["model"] == "logistic" and len(summary["thresholds"]) == 19
    assert (tmp_path / "a" / "model.joblib").is_file()
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_a_trained_baseline_is_applied_to_another_set_unchanged(tmp_path):
    """``baseline.trained``: another run's model and thresholds score a new set of cells exactly as that
    run's model would; a swapped model file, another catalog or a missing file is refused by name."""
    from hpa_batch.core.errors import DamagedFileError
    from hpa_batch.results.baseline import apply_baseline, baseline_stage

    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    synthetic_cells(seed=0).to_parquet(first)
    synthetic_cells(seed=1).to_parquet(second)  # a set the baseline never saw
    trained = tmp_path / "run-a" / "baseline"
    told = run_baseline(first, set(), CAT, OPTIONS, trained / "cells.parquet")
    # the same model scoring the second set directly, for comparison
    reference = run_baseline(second, set(), CAT, OPTIONS, tmp_path / "ref" / "cells.parquet")
    images = tmp_path / "images.parquet"
    pd.DataFrame({"image_id": ["x"], "fold": [0], "rejected": [False]}).to_parquet(images)
    out = tmp_path / "run-b" / "baseline" / "cells.parquet"
    summary = baseline_stage(
        second,
        images,
        CAT,
        replace(OPTIONS, trained=trained),
        out,
        trained_folds=set(),
        all_unseen=True,  # every image unseen: the run could not train a baseline of its own
        predictions=None,
        summary_out=out.with_name("summary.json"),
        model_out=out.with_name("model.joblib"),
    )
    assert summary["trained"] == str(trained) and summary["thresholds"] == told["thresholds"]
    assert summary["train_cells"] == 0 and summary["cells"] == len(pd.read_parquet(second))
    import joblib

    model = joblib.load(trained / "model.joblib")
    probs = pd.read_parquet(out).filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs, model.predict_proba(features(pd.read_parquet(second))), atol=1e-6)
    assert not np.allclose(probs, pd.read_parquet(tmp_path / "ref" / "cells.parquet").filter(like="prob_").to_numpy())
    assert reference["train_cells"] > 0
    (out.parent / "x").mkdir()
    with pytest.raises(ValueError, match="catalog hpa2021, this run uses hpa2018"):
        apply_baseline(trained, second, CATALOGS["hpa2018"], OPTIONS, out.parent / "x" / "c.parquet")
    (trained / "model.joblib").write_bytes((trained / "model.joblib").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(DamagedFileError, match="SHA-256 differs"):
        apply_baseline(trained, second, CAT, OPTIONS, out.parent / "x" / "c.parquet")
    (trained / "model.joblib").unlink()
    with pytest.raises(FileNotFoundError, match="no model file"):
        apply_baseline(trained, second, CAT, OPTIONS, out.parent / "x" / "c.parquet")


def test_embeddings_are_appended_or_missing_ones_named(tmp_path):
    cells = synthetic_cells(6, 4)
    path = tmp_path / "cells.parquet"
    cells.to_parquet(path)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for shard, part in cells.groupby("shard"):
        emb = [np.full(3, 1.0 if v == [0] else -1.0, np.float32) for v in part["image_labels"]]
        part[["image_id", "cell_id"]].assign(embedding=emb).to_parquet(pred_dir / f"{shard}.parquet")
    opts = replace(OPTIONS, embeddings=True, cv_folds=2)
    files = {p.stem: p for p in pred_dir.glob("*.parquet")}
    summary = run_baseline(path, set(), CAT, opts, tmp_path / "out" / "cells.parquet", predictions=files)
    assert summary["features"][-1] == "embedding"
    (pred_dir / "s-0001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="s-0001.parquet"):
        run_baseline(path, set(), CAT, opts, tmp_path / "out2" / "cells.parquet", predictions=files)
