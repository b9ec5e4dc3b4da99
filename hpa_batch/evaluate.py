"""Evaluation against ground truth: match segmented cells to true cells and score cell predictions.

(The full evaluation stage of the results issue builds on these functions.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr

from hpa_batch.labels import LabelCatalog, parse_labels
from hpa_batch.metrics import macro_f1, mean_ap
from hpa_batch.segment.quality import iou_matrix
from hpa_batch.splits import multi_hot


def match_cells(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> pd.DataFrame:
    """Pairs (predicted cell id, true cell id, IoU) with IoU > ``min_iou`` (unique for >= 0.5).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        ``(h, w)`` integer label images of the same image.
    """
    iou = iou_matrix(truth, pred)
    t_ids = np.unique(truth[truth > 0])
    p_ids = np.unique(pred[pred > 0])
    ti, pi = np.nonzero(iou > min_iou)
    return pd.DataFrame({"cell_id": p_ids[pi].astype(np.int32), "truth_cell_id": t_ids[ti].astype(np.int32),
                         "iou": iou[ti, pi]})


def truth_matches(store: Path, truth_dir: Path) -> pd.DataFrame:
    """For every segmented image of a shard store with a truth mask: matched cell pairs."""
    rows = []
    for image in sorted(p for p in Path(store).iterdir() if p.is_dir()):
        mask_path = Path(truth_dir) / f"{image.name}_cells.tif"
        if not mask_path.is_file() or not (image / "labels").is_dir():
            continue
        pred = zarr.open_group(image, mode="r")["labels/cells/s0"][...]
        m = match_cells(pred.astype(np.int64), tifffile.imread(mask_path).astype(np.int64))
        m.insert(0, "image_id", image.name)
        rows.append(m)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["image_id", "cell_id", "truth_cell_id", "iou"])


def truth_cell_labels(truth_dir: Path, catalog: LabelCatalog) -> pd.DataFrame:
    """``truth/cells.csv`` -> (image_id, truth_cell_id, labels) with parsed class ids."""
    t = pd.read_csv(Path(truth_dir) / "cells.csv", dtype={"Label": str}, keep_default_na=False)
    labels = [list(parse_labels(v, catalog, catalog.separator)) if v else [] for v in t["Label"]]
    return pd.DataFrame({"image_id": t["ID"], "truth_cell_id": t["cell_id"].astype(np.int32), "labels": labels})


def truth_table(stores: list[Path], truth_dir: Path, catalog: LabelCatalog) -> pd.DataFrame:
    """(image_id, cell_id, truth_cell_id, truth_labels) for every segmented cell matched to a true cell."""
    matches = pd.concat([truth_matches(s, truth_dir) for s in stores], ignore_index=True) if stores else None
    if matches is None or matches.empty:
        return pd.DataFrame(columns=["image_id", "cell_id", "truth_cell_id", "truth_labels"])
    labels = truth_cell_labels(truth_dir, catalog).rename(columns={"labels": "truth_labels"})
    return matches.drop(columns="iou").merge(labels, on=["image_id", "truth_cell_id"], how="left")


def score_cells(pred: pd.DataFrame, matches: pd.DataFrame, truth: pd.DataFrame, catalog: LabelCatalog,
                thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """Cell-level macro-F1 and mAP of predictions (``prob_k`` columns) on matched cells.

    Returns
    -------
    dict
        ``cells`` (matched and scored), ``macro_f1``, ``map``, ``accuracy`` (exact label-set match).
    """
    m = pred.merge(matches, on=["image_id", "cell_id"]).merge(truth, on=["image_id", "truth_cell_id"])
    if m.empty:
        return {"cells": 0, "macro_f1": float("nan"), "map": float("nan"), "accuracy": float("nan")}
    prob = m[[f"prob_{k}" for k in range(catalog.n_classes)]].to_numpy()
    y = multi_hot(m["labels"].tolist(), catalog.n_classes)
    if catalog.negative is not None:  # a cell without labels is Negative
        y[y.sum(1) == 0, catalog.negative] = 1
    hits = prob >= np.asarray(thresholds)
    return {"cells": int(len(m)), "macro_f1": macro_f1(y, prob, thresholds), "map": mean_ap(y, prob),
            "accuracy": float((hits == y.astype(bool)).all(1).mean())}
