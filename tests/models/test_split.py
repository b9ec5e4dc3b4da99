import numpy as np
import pandas as pd

from hpa_batch.core.labels import CATALOGS
from hpa_batch.models.split import (
    ALWAYS_TRAIN,
    SPLITS_SCHEMA,
    assign_folds,
    make_splits,
    write_splits,
)


def labels_table(seed=0, n=300):
    rng = np.random.default_rng(seed)
    common = [(0,), (16,), (0, 16), (2,), (14,), (6, 16), (18,)]
    labels = [list(common[rng.integers(len(common))]) for _ in range(n)]
    labels += [[3, 7, 11], [5, 9]]  # unique combinations
    return labels


def test_deterministic_and_seed_dependent():
    labels = labels_table()
    a = assign_folds(labels, 19, 5, seed=1)
    assert np.array_equal(a, assign_folds(labels, 19, 5, seed=1))
    assert not np.array_equal(a, assign_folds(labels, 19, 5, seed=2))


def test_unique_combinations_stay_in_training_and_classes_are_spread():
    labels = labels_table()
    folds = assign_folds(labels, 19, 5, seed=0)
    assert folds[-2] == ALWAYS_TRAIN and folds[-1] == ALWAYS_TRAIN
    assert set(folds[:-2]) == set(range(5))
    y = np.zeros((len(labels), 19))
    for i, ids in enumerate(labels):
        y[i, ids] = 1
    for c in (0, 2, 14, 16, 18):
        per_fold = np.array([y[folds == k, c].sum() for k in range(5)])
        assert per_fold.max() - per_fold.min() <= 2, (c, per_fold)  # stratified


def test_make_splits_from_manifests(tmp_path):
    from hpa_batch.convert.manifest import MANIFEST_SCHEMA
    from hpa_batch.core.tables import write_table

    labels = labels_table(n=40)
    rows = pd.DataFrame({c: [None] * len(labels) for c in MANIFEST_SCHEMA.names})
    rows["image_id"] = [f"img{i:03d}" for i in range(len(labels))]
    rows["shard"], rows["cell_line"], rows["labels"] = "hela-0000", "HeLa", labels
    rows["height"], rows["width"], rows["source_bytes"] = 1, 1, 1
    write_table(rows.iloc[:20], MANIFEST_SCHEMA, tmp_path / "a.parquet")
    write_table(rows.iloc[20:], MANIFEST_SCHEMA, tmp_path / "b.parquet")
    table = make_splits([tmp_path / "b.parquet", tmp_path / "a.parquet"], CATALOGS["hpa2021"], 3, 0)
    assert table["image_id"].tolist() == sorted(rows["image_id"])
    assert table.loc[table.combination == "3|7|11", "fold"].item() == ALWAYS_TRAIN
    write_splits(table, tmp_path / "splits.parquet", CATALOGS["hpa2021"])
    import pyarrow.parquet as pq

    from hpa_batch.core.tables import read_classes

    assert pq.read_schema(tmp_path / "splits.parquet").equals(SPLITS_SCHEMA, check_metadata=False)
    assert read_classes(tmp_path / "splits.parquet") == list(CATALOGS["hpa2021"].classes)  # names its label ids


def test_too_few_images_means_all_training():
    assert (assign_folds([[0], [0]], 19, 5, 0) == ALWAYS_TRAIN).all()


def test_grouped_folds_keep_every_group_in_one_fold_and_stay_stratified():
    """With ``splits.group_column`` (an antibody here: ~4 images each) no group is split between
    folds, a rare combination of a validated group follows its group (no leak through fold -1), a
    group of only unusable images stays in training, and classes still spread over the folds."""
    labels = labels_table(seed=3, n=400)
    rng = np.random.default_rng(7)
    groups = [f"HPA{g:04d}" for g in rng.integers(0, 100, len(labels))]
    groups[-2] = groups[0]  # a unique combination inside a stratified group
    groups[-1] = "HPA_only_rare"  # a group whose only image has a unique combination
    folds = assign_folds(labels, 19, 5, seed=0, groups=groups)
    by_group = pd.Series(folds).groupby(pd.Series(groups)).nunique()
    assert (by_group == 1).all(), by_group[by_group > 1]
    assert folds[-2] == folds[0] != ALWAYS_TRAIN and folds[-1] == ALWAYS_TRAIN
    assert set(folds[:-1]) == set(range(5))
    y = np.zeros((len(labels), 19))
    for i, ids in enumerate(labels):
        y[i, ids] = 1
    for c in (0, 16):
        per_fold = np.array([y[folds == k, c].sum() for k in range(5)])
        assert per_fold.min() > 0.5 * per_fold.mean(), (c, per_fold)  # groups are coarser than images
    ungrouped = assign_folds(labels, 19, 5, seed=0)
    assert (pd.Series(ungrouped).groupby(pd.Series(groups)).nunique() > 1).any()  # without: groups split


def test_groups_come_from_the_metadata_table_and_a_missing_column_is_named(tmp_path):
    import pytest

    from hpa_batch.models.split import read_groups

    meta = tmp_path / "train.csv"
    meta.write_text("ID,Label,Antibody\na,0,HPA1\nb,1, \nc,0|1,HPA1\n")
    assert read_groups(meta, "ID", "Antibody") == {"a": "HPA1", "c": "HPA1"}
    with pytest.raises(ValueError, match=r"train.csv has no column 'Gene'.*'Antibody'"):
        read_groups(meta, "ID", "Gene")
