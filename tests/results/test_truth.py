"""The truth matches computed once by the merge score exactly as the label images they came from."""

import numpy as np
import pandas as pd

from hpa_batch.cells.segment.quality import iou_matrix
from hpa_batch.results.evaluate import instance_map
from hpa_batch.results.truth import NO_CELL, _pairs, ious_from_pairs, truth_table


def _blobs(rng: np.random.Generator, n: int, shift: int) -> np.ndarray:
    img = np.zeros((96, 96), np.int64)
    for k in range(1, n + 1):
        y, x = rng.integers(4, 76, 2)
        img[y + shift : y + shift + 14, x : x + 14] = k
    return img


def test_pairs_rebuild_the_iou_matrices_and_the_same_instance_map():
    rng = np.random.default_rng(3)
    dense, frames, truth_rows = {}, [], []
    for image in ("a", "b", "c"):
        truth = _blobs(rng, 6, 0)
        pred = np.where(truth > 0, truth + 10, 0)
        pred = np.roll(pred, int(rng.integers(0, 5)), axis=0)  # shifted: IoU from 1 down to ~0.5
        pred[pred == 11] = 0  # a true cell left unsegmented
        if image == "c":
            pred[:] = 0  # a segmented image with truth and no overlapping cell: its true cells still count
        p_ids, t_ids = np.unique(pred[pred > 0]), np.unique(truth[truth > 0])
        dense[image] = (p_ids, t_ids, iou_matrix(truth, pred))
        m = _pairs(p_ids, t_ids, dense[image][2], 0.0)
        if m.empty:
            m = pd.DataFrame({"cell_id": [NO_CELL], "truth_cell_id": [NO_CELL], "iou": [0.0]})
        m.insert(0, "image_id", image)
        frames.append(m)
        truth_rows += [(image, int(t), [int(t) % 3]) for t in t_ids]
    pairs = pd.concat(frames, ignore_index=True)
    sparse = ious_from_pairs(pairs)
    assert set(sparse) == {"a", "b", "c"} and sparse["c"][0].size == 0
    truth = pd.DataFrame(truth_rows, columns=["image_id", "truth_cell_id", "labels"])
    cells = [(i, int(c)) for i, (p, _, _) in dense.items() for c in p]
    pred = pd.DataFrame(cells, columns=["image_id", "cell_id"])
    for k in range(3):
        pred[f"prob_{k}"] = rng.random(len(pred))
    m_dense, per_dense = instance_map(pred, truth, dense, 3)
    m_sparse, per_sparse = instance_map(pred, truth, sparse, 3)
    assert 0 < m_dense < 1 and m_sparse == m_dense and per_sparse == per_dense


def test_truth_table_keeps_only_unique_matches_above_half(tmp_path):
    (tmp_path / "cells.csv").write_text("ID,cell_id,Label\na,1,0|2\na,2,\n")
    pairs = pd.DataFrame(
        {
            "image_id": ["a", "a", "a", "b"],
            "cell_id": np.array([5, 6, 7, NO_CELL], np.int32),
            "truth_cell_id": np.array([1, 1, 2, NO_CELL], np.int32),
            "iou": [0.8, 0.1, 0.5, 0.0],
        }
    )
    from hpa_batch.core.labels import CATALOGS

    t = truth_table(pairs, tmp_path, CATALOGS["hpa2021"])
    assert t[["image_id", "cell_id", "truth_cell_id"]].values.tolist() == [["a", 5, 1]]
    assert list(t["truth_labels"][0]) == [0, 2]
