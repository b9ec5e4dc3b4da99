"""The baseline's classifiers by name (``baseline.model``): a light registry (scikit-learn is imported
when a classifier is made), so the config schema can take its names from here."""

from __future__ import annotations

from typing import Any

from hpa_batch.core.registry import Registry

BASELINES: Registry[Any] = Registry("baseline classifier")


@BASELINES.register("hist_gradient_boosting")
def _hgb(seed: int, n_jobs: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.multiclass import OneVsRestClassifier

    # one class at a time; each booster uses the job's OpenMP threads (no process pool on top)
    return OneVsRestClassifier(
        HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0, random_state=seed
        )
    )


@BASELINES.register("random_forest")
def _rf(seed: int, n_jobs: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(
        RandomForestClassifier(n_estimators=200, min_samples_leaf=3, random_state=seed, n_jobs=n_jobs)
    )


@BASELINES.register("logistic")
def _logistic(seed: int, n_jobs: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=2000, random_state=seed), n_jobs=n_jobs)
