"""Per-cell ground truth, matched once: ``results/tables/truth_pairs.parquet``.

The merge stage overlaps every segmented image that has a truth mask (``<truth_dir>/<id>_cells.tif``)
with its ``labels/cells`` once and writes every overlapping pair (image_id, cell_id, truth_cell_id,
iou > 0; float64, as computed). An image with a truth mask but no overlapping cell keeps one marker
row (cell_id = truth_cell_id = -1, iou 0), so it still counts its true cells. The merge reads the
pairs for the cells table's ``truth_cell_id`` / ``truth_labels`` (IoU > 0.5, unique), the evaluate
stage for the instance mAP (IoU >= 0.6), and no stage reads the label images for truth again.
Without ``evaluation.truth_dir`` the table is empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import tifffile
import zarr

from hpa_batch.cells.segment.quality import iou_matrix
from hpa_batch.core.labels import LabelCatalog, parse_labels
from hpa_batch.core.ngff import image_groups, label_level
from hpa_batch.core.tables import read_parquet, write_table

TRUTH_PAIRS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("cell_id", pa.int32()),
        ("truth_cell_id", pa.int32()),
        ("iou", pa.float64()),
    ]
)
#: ``cell_id`` / ``truth_cell_id`` of the marker row of an image with truth and no overlapping cell.
NO_CELL = -1
#: image_id -> (predicted cell ids ``(p,)``, true cell ids ``(t,)``, IoU ``(t, p)`` float64).
Ious = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _pairs(p_ids: np.ndarray, t_ids: np.ndarray, iou: np.ndarray, min_iou: float) -> pd.DataFrame:
    ti, pi = np.nonzero(iou > min_iou)
    return pd.DataFrame(
        {"cell_id": p_ids[pi].astype(np.int32), "truth_cell_id": t_ids[ti].astype(np.int32), "iou": iou[ti, pi]}
    )


def match_cells(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.5) -> pd.DataFrame:
    """Pairs (predicted cell id, true cell id, IoU) with IoU > ``min_iou`` (unique for >= 0.5).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        ``(h, w)`` integer label images of the same image.
    """
    return _pairs(np.unique(pred[pred > 0]), np.unique(truth[truth > 0]), iou_matrix(truth, pred), min_iou)


def iter_image_ious(stores: list[Path], truth_dir: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(image_id, pred cell ids, true cell ids, ``(t, p)`` IoU matrix) of every segmented image with a
    truth mask, one image in memory at a time."""
    for store in stores:
        for image in image_groups(Path(store)):
            mask_path = Path(truth_dir) / f"{image.name}_cells.tif"
            if not mask_path.is_file() or not (image / "labels").is_dir():
                continue
            pred = zarr.open_group(image, mode="r")[label_level("cells")][...].astype(np.int64)
            truth = tifffile.imread(mask_path).astype(np.int64)
            yield image.name, np.unique(pred[pred > 0]), np.unique(truth[truth > 0]), iou_matrix(truth, pred)


def image_ious(stores: list[Path], truth_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image_id -> (pred cell ids, true cell ids, IoU matrix) for every segmented image with truth."""
    return {name: (p, t, iou) for name, p, t, iou in iter_image_ious(stores, truth_dir)}


def truth_pairs(stores: list[Path], truth_dir: Path | None) -> pd.DataFrame:
    """The pairs table (:data:`TRUTH_PAIRS_SCHEMA`; empty without ``truth_dir``)."""
    frames = []
    for name, p_ids, t_ids, iou in iter_image_ious(stores, truth_dir) if truth_dir else ():
        m = _pairs(p_ids, t_ids, iou, 0.0)
        if m.empty:
            m = pd.DataFrame({"cell_id": [NO_CELL], "truth_cell_id": [NO_CELL], "iou": [0.0]})
        m.insert(0, "image_id", name)
        frames.append(m)
    if not frames:
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in TRUTH_PAIRS_SCHEMA})
    return pd.concat(frames, ignore_index=True)


def write_truth_pairs(stores: list[Path], truth_dir: Path | None, out: Path) -> pd.DataFrame:
    """Match once and write ``truth_pairs.parquet``; returns the table."""
    pairs = truth_pairs(stores, truth_dir)
    write_table(pairs, TRUTH_PAIRS_SCHEMA, out)
    return pairs


def read_truth_pairs(path: Path) -> pd.DataFrame:
    """Read ``truth_pairs.parquet`` (a damaged file is named)."""
    return read_parquet(path)


def ious_from_pairs(pairs: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The per-image IoU matrices of the overlapping cells (what :func:`image_ious` gives, less the
    cells that overlap nothing, which can never match)."""
    out = {}
    for image_id, g in pairs.groupby("image_id", sort=True):
        g = g[g["cell_id"] != NO_CELL]
        p_ids, pi = np.unique(g["cell_id"].to_numpy(np.int64), return_inverse=True)
        t_ids, ti = np.unique(g["truth_cell_id"].to_numpy(np.int64), return_inverse=True)
        iou = np.zeros((len(t_ids), len(p_ids)), np.float64)
        iou[ti, pi] = g["iou"].to_numpy(np.float64)
        out[str(image_id)] = (p_ids, t_ids, iou)
    return out


def truth_cell_labels(truth_dir: Path, catalog: LabelCatalog) -> pd.DataFrame:
    """``truth/cells.csv`` -> (image_id, truth_cell_id, labels) with parsed class ids."""
    t = pd.read_csv(Path(truth_dir) / "cells.csv", dtype={"Label": str}, keep_default_na=False)
    labels = [list(parse_labels(v, catalog, "auto")) if v else [] for v in t["Label"]]
    return pd.DataFrame({"image_id": t["ID"], "truth_cell_id": t["cell_id"].astype(np.int32), "labels": labels})


def truth_table(pairs: pd.DataFrame, truth_dir: Path, catalog: LabelCatalog, min_iou: float = 0.5) -> pd.DataFrame:
    """(image_id, cell_id, truth_cell_id, truth_labels) for every segmented cell matched to a true cell
    (IoU > ``min_iou``, unique for >= 0.5)."""
    matches = pairs[(pairs["iou"] > min_iou) & (pairs["cell_id"] != NO_CELL)]
    if matches.empty:
        return pd.DataFrame(columns=["image_id", "cell_id", "truth_cell_id", "truth_labels"])
    labels = truth_cell_labels(truth_dir, catalog).rename(columns={"labels": "truth_labels"})
    out = matches.drop(columns="iou").merge(labels, on=["image_id", "truth_cell_id"], how="left")
    return out.reset_index(drop=True)
