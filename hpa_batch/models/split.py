"""Cross-validation folds on images, multilabel-stratified (iterative stratification).

Images are stratified on their multi-hot label vectors with
:class:`iterstrat.ml_stratifiers.MultilabelStratifiedKFold`. As in the seed study, images whose label
combination occurs only once (or fewer than ``min_combination`` times) cannot be represented in every
fold and are kept in training: they get ``fold = -1`` (never validation). Cells inherit their image's
fold. Deterministic per seed.

Images refused at any stage (``qc/{shard}.rejected.tsv``: admission and decoding) never enter the
table (the merged images table lists them with ``fold = -3``). Images whose segmentation is doubtful (``qc/{shard}.segment.tsv``) get ``fold = -2`` unless
``segmentation_qc.doubtful`` is ``keep``: never trained, validated or tuned on, with the reason in
``exclude_reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.tables import read_parquet, with_classes, write_table

SPLITS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("cell_line", pa.string()),
        ("labels", pa.list_(pa.int16())),
        ("combination", pa.string()),
        ("fold", pa.int8()),
        ("exclude_reason", pa.string()),
        ("group", pa.string()),
    ]
)
#: The fold sentinels, the one home of these values (the splits and the merged tables carry them):
#: images kept in training and never validated on (label combination too rare to stratify)
ALWAYS_TRAIN = -1
#: images kept out of training and validation (doubtful segmentation)
EXCLUDED = -2
#: refused images (admission, decoding): in the merged images table only, never in the splits
REFUSED = -3


def multi_hot(labels: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """``(n,)`` lists of class ids -> ``(n, n_classes)`` uint8 multi-hot matrix."""
    out = np.zeros((len(labels), n_classes), np.uint8)
    for i, ids in enumerate(labels):
        out[i, list(ids)] = 1
    return out


def assign_folds(
    labels: Sequence[Sequence[int]],
    n_classes: int,
    n_folds: int,
    seed: int,
    min_combination: int = 2,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """Fold of every image.

    Parameters
    ----------
    labels : sequence of sequence of int
        Class ids per image (empty for unlabelled images).
    min_combination : int
        Combinations seen fewer times than this go to training only (fold -1).
    groups : sequence of str, optional
        Group of every image (antibody, gene...): the groups are stratified on the union of their
        images' labels and every image takes its group's fold; a group whose images are all
        ineligible (rare or no combination) stays in training (fold -1).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int8 in ``-1 .. n_folds - 1``.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    combos = pd.Series(["|".join(map(str, sorted(ids))) for ids in labels])
    counts = combos.map(combos.value_counts())
    folds = np.full(len(combos), ALWAYS_TRAIN, np.int8)
    ok = (counts >= min_combination).to_numpy() & (combos != "").to_numpy()
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if groups is None:
        eligible = np.flatnonzero(ok)
        if len(eligible) < n_folds:
            return folds
        y = multi_hot([labels[int(i)] for i in eligible], n_classes)
        for k, (_, test) in enumerate(splitter.split(np.zeros((len(eligible), 1)), y)):
            folds[eligible[test]] = k
        return folds
    group_of = pd.Series(list(groups))
    chosen = pd.unique(group_of[ok])  # groups with an image that can be stratified
    if len(chosen) < n_folds:
        return folds
    code = pd.Series(np.arange(len(chosen)), index=chosen)
    member = group_of.map(code)
    y = np.zeros((len(chosen), n_classes), np.uint8)
    for i in np.flatnonzero(member.notna().to_numpy()):
        y[int(member.iat[i]), list(labels[int(i)])] = 1
    for k, (_, test) in enumerate(splitter.split(np.zeros((len(chosen), 1)), y)):
        folds[member.isin(test).to_numpy()] = k
    return folds


def make_splits(
    manifests: Sequence[Path],
    catalog: LabelCatalog,
    n_folds: int,
    seed: int,
    min_combination: int = 2,
    *,
    rejected: Sequence[Path] | None = None,
    segment_qc: Sequence[Path] | None = None,
    doubtful: str = "exclude_from_training",
    groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Folds for every image of the given shard manifests that no stage refused (sorted by image id).

    Parameters
    ----------
    rejected : sequence of Path, optional
        ``qc/{shard}.rejected.tsv`` tables: their images are left out.
    segment_qc : sequence of Path, optional
        ``qc/{shard}.segment.tsv`` tables: doubtful images get fold -2 (unless ``doubtful == "keep"``)
        and are left out of the stratification.
    groups : mapping of str to str, optional
        image id -> group (``splits.group_column``; an image without one is its own group): images of
        a group share a fold (:func:`assign_folds`).
    """
    from hpa_batch.cells.segment.qc import read_segment_qc
    from hpa_batch.convert.manifest import read_rejected

    cols = ["image_id", "shard", "cell_line", "labels"]
    frames = [read_parquet(p, columns=cols) for p in manifests]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    refused = {i for p in rejected or [] for i in read_rejected(p)["image_id"]}
    table = table[~table["image_id"].isin(refused)]
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    reasons: dict[str, str] = {}
    if doubtful != "keep":
        for p in segment_qc or []:
            qc = read_segment_qc(p)
            qc = qc[qc["doubtful"]]
            reasons.update(zip(qc["image_id"], "doubtful segmentation: " + qc["flag"]))
    labels = [list(map(int, v)) for v in table["labels"]]
    table["labels"] = labels
    table["combination"] = ["|".join(map(str, sorted(v))) for v in labels]
    table["exclude_reason"] = table["image_id"].map(reasons)
    table["group"] = None if groups is None else [groups.get(i) or f"image:{i}" for i in table["image_id"]]
    out = table["exclude_reason"].notna().to_numpy()
    folds = np.full(len(table), EXCLUDED, np.int8)
    keep = np.flatnonzero(~out)
    kept_groups = None if groups is None else [table["group"].iat[i] for i in keep]
    folds[keep] = assign_folds(
        [labels[i] for i in keep], catalog.n_classes, n_folds, seed, min_combination, groups=kept_groups
    )
    table["fold"] = folds
    return table


def read_groups(metadata: Path, id_column: str, group_column: str) -> dict[str, str]:
    """image id -> group value of the metadata table (``splits.group_column``; empty values left out).

    Raises
    ------
    ValueError
        The table has no such column, naming the file and its columns.
    """
    from hpa_batch.core.errors import reading

    with reading(metadata):
        head = pd.read_csv(metadata, nrows=0)
    if group_column not in head.columns or id_column not in head.columns:
        missing = group_column if group_column not in head.columns else id_column
        raise ValueError(
            f"{metadata} has no column {missing!r} (splits.group_column / dataset.id_column); "
            f"its columns: {list(head.columns)}"
        )
    with reading(metadata):
        t = pd.read_csv(metadata, usecols=[id_column, group_column], dtype=str, keep_default_na=False)
    t = t[t[group_column].str.strip() != ""]
    return dict(zip(t[id_column], t[group_column].str.strip()))


def write_splits(table: pd.DataFrame, path: Path, catalog: LabelCatalog) -> None:
    """Write ``results/splits.parquet`` with its fixed schema, naming the catalog's classes in its
    metadata (the ``labels`` ids; :func:`hpa_batch.core.tables.read_classes`)."""
    write_table(table, with_classes(SPLITS_SCHEMA, catalog), path)
