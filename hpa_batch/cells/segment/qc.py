"""Per-image segmentation QC: measures that expose a failed segmentation, and the ``doubtful`` flag.

The measures need no ground truth. They compare the cells with an independent look at the nuclear
channel (its foreground, not split into nuclei) and with the other images of the shard (one cell line):

* ``coverage`` (cell pixels / image) and ``nucleus_coverage`` (nuclear foreground / image);
* ``median_cell_area`` and ``median_nucleus_area`` (full-resolution px^2) and the median per-cell
  ``cell_nucleus_ratio`` (about 1 when cell bodies collapsed onto their nuclei);
* ``no_nucleus_fraction`` / ``multi_nucleus_fraction``: cells holding none / several of the nuclear
  objects; ``nuclei_outside_fraction``: nuclear objects in no cell (missed cells);
* wrong splits between touching cells (issue 24): ``unsupported_boundary_fraction``, the share of the
  cell-to-cell boundary length with neither a valley nor a step of the reference channels under it
  (a ridge or a plateau: a cut through a cell body; a true boundary is dimmer than at least the
  brighter of the two cells beside it);
  ``size_outlier_fraction``, the share of cells whose area / nucleus area is 3x off the image's
  median (one cell took part of its neighbour); ``distance_disagreement``, the share of cells whose
  IoU with the distance-only (Voronoi) partition of the same foreground among the same nuclei is
  below 0.5 (boundaries far from where geometry alone puts them); ``edge_disagreement``, the same
  against the built-in image-driven (``edges``) partition of the same foreground among the same
  nuclei (boundaries that ignore the image's steps and valleys; NaN for the built-in ``edges``
  backend itself, whose cells are that partition);
* outliers: the ``outlier_measures`` (default median cell area and cell/nucleus ratio; cell count and
  coverage on request) against the shard's median, in MADs.

:func:`flag_images` turns them into ``doubtful`` and a readable ``flag`` (every reason, ``; ``-joined)
with the thresholds of ``segmentation_qc``; the measures are stored with the labels, so changing a
threshold never redoes a segmentation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from hpa_batch import CHANNELS
from hpa_batch.cells.segment.contacts import contacts
from hpa_batch.cells.segment.watershed import (
    WatershedSegmenter,
    distance_partition,
    flatten,
    nuclear_foreground,
)
from hpa_batch.config import SegmentationQCConfig

#: Measures of :func:`image_qc`, in table order.
QC_MEASURES: tuple[str, ...] = (
    "coverage",
    "nucleus_coverage",
    "median_cell_area",
    "median_nucleus_area",
    "cell_nucleus_ratio",
    "no_nucleus_fraction",
    "multi_nucleus_fraction",
    "nuclei_outside_fraction",
    "unsupported_boundary_fraction",
    "size_outlier_fraction",
    "distance_disagreement",
    "edge_disagreement",
)
#: Columns of ``results/qc/{shard}.segment.tsv``.
SEGMENT_QC_COLUMNS: tuple[str, ...] = (
    "image_id",
    "n_cells",
    "n_border",
    "level",
    *QC_MEASURES,
    "doubtful",
    "flag",
)
ZERO_CELLS = "zero cells"


def image_qc(
    cells: np.ndarray, nuclei: np.ndarray, image: np.ndarray, scale: float, *, edge_reference: bool = True
) -> dict[str, float]:
    """QC measures of one segmented image.

    Parameters
    ----------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int label images at the working level (ids ``1..n`` shared).
    image : numpy.ndarray
        ``(4, h, w)`` image at the same level, canonical channel order.
    scale : float
        Downsampling factor of that level (areas are reported at full resolution).
    edge_reference : bool
        Compare the cells with the built-in ``edges`` partition (``edge_disagreement``); False for
        the built-in backend's own ``edges`` cells (NaN: they are that partition).

    Returns
    -------
    dict
        :data:`QC_MEASURES` -> float (NaN where undefined, e.g. no cell).
    """
    n = int(cells.max())
    fg = nuclear_foreground(image[CHANNELS.index("blue")])
    out = {"coverage": float((cells > 0).mean()), "nucleus_coverage": float(fg.mean())}
    area = np.bincount(cells.ravel(), minlength=n + 1)[1:].astype(float)
    nuc = np.bincount(nuclei.ravel(), minlength=n + 1)[1:].astype(float)
    comps, n_comp = ndi.label(fg)
    if n == 0:
        nan = float("nan")
        outside = 1.0 if n_comp else nan
        return {**out, **dict.fromkeys(QC_MEASURES[2:], nan), "nuclei_outside_fraction": outside}
    # each nuclear object belongs to the cell holding most of its pixels (0 = none)
    pair = np.bincount(comps.ravel() * (n + 1) + cells.ravel(), minlength=(n_comp + 1) * (n + 1))
    pair = pair.reshape(n_comp + 1, n + 1)[1:]
    owner = pair.argmax(axis=1) if n_comp else np.zeros(0, int)
    per_cell = np.bincount(owner[owner > 0], minlength=n + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nuc > 0, area / nuc, np.nan)
    s2 = scale * scale
    nucleus_radius = float(np.sqrt(np.median(nuc[nuc > 0]) / np.pi)) if (nuc > 0).any() else 1.0
    return {
        **out,
        "median_cell_area": float(np.median(area) * s2),
        "median_nucleus_area": float(np.median(nuc) * s2),
        "cell_nucleus_ratio": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else float("nan"),
        "no_nucleus_fraction": float((per_cell == 0).mean()),
        "multi_nucleus_fraction": float((per_cell > 1).mean()),
        "nuclei_outside_fraction": float((owner == 0).mean()) if n_comp else 0.0,
        "unsupported_boundary_fraction": unsupported_boundary_fraction(cells, reference_signal(image), nucleus_radius),
        "size_outlier_fraction": size_outlier_fraction(ratio),
        "distance_disagreement": distance_disagreement(cells, nuclei),
        "edge_disagreement": edge_disagreement(cells, nuclei, image) if edge_reference else float("nan"),
    }


def reference_signal(image: np.ndarray) -> np.ndarray:
    """Mean of the background-flattened microtubule and ER channels, each scaled to its median
    over the brighter half: ``(4, h, w)`` -> ``(h, w)`` float32."""
    total = np.zeros(image.shape[1:], np.float32)
    for name in ("red", "yellow"):
        flat, _ = flatten(image[CHANNELS.index(name)])
        level = float(np.median(flat[flat > np.median(flat)])) or 1.0
        total += flat / np.float32(abs(level))
    return ndi.gaussian_filter(total / np.float32(2), 1.0)


def unsupported_boundary_fraction(
    cells: np.ndarray, signal: np.ndarray, nucleus_radius: float, margin: float = 0.1
) -> float:
    """Share of the cell-to-cell boundary length with neither a valley nor a step of ``signal``.

    For every pair of touching cells, the mean ``signal`` on their boundary is compared with its
    mean in a band on either side (from 2 px to 2 px + 0.3 ``nucleus_radius`` from the boundary).
    A true boundary is a valley (both cells dim towards their edges) or a step (one cell brighter):
    either way it is more than ``margin`` dimmer than the brighter side. A boundary that is not
    (a ridge or a plateau) cuts through a cell body.

    Parameters
    ----------
    cells : numpy.ndarray
        ``(h, w)`` int labels.
    signal : numpy.ndarray
        ``(h, w)`` float reference signal (:func:`reference_signal`).
    nucleus_radius : float
        Median nucleus radius (px at this level).

    Returns
    -------
    float
        In [0, 1]; 0 when no cells touch.
    """
    found = contacts(cells, signal, (2.0, 2.0 + max(0.3 * nucleus_radius, 2.0)))
    both = np.isfinite(found.sides).all(axis=1)
    if not both.any():
        return 0.0
    brighter = np.max(found.sides[both], axis=1)
    ridge = found.boundary[both] > (1 - margin) * brighter
    return float(found.length[both][ridge].sum() / found.length[both].sum())


def size_outlier_fraction(ratio: np.ndarray, factor: float = 3.0) -> float:
    """Share of cells whose cell / nucleus area ratio is ``factor`` x above or below the image's
    median: ``(n,)`` float (NaN = no nucleus, not counted) -> float."""
    r = ratio[np.isfinite(ratio) & (ratio > 0)]
    if r.size == 0:
        return float("nan")
    med = float(np.median(r))
    return float(((r > factor * med) | (r < med / factor)).mean())


def distance_disagreement(cells: np.ndarray, nuclei: np.ndarray, min_iou: float = 0.5) -> float:
    """Share of cells whose IoU with the distance-only partition is below ``min_iou``.

    The partition shares the same foreground (``cells > 0``) among the same nuclei by distance
    alone (:func:`~hpa_batch.cells.segment.watershed.distance_partition`); cell ``k`` is compared
    with part ``k``. ``(h, w)`` int labels with shared ids -> float.
    """
    if int(cells.max()) == 0:
        return float("nan")
    return partition_disagreement(cells, distance_partition(nuclei, cells > 0), min_iou)


def edge_disagreement(cells: np.ndarray, nuclei: np.ndarray, image: np.ndarray, min_iou: float = 0.5) -> float:
    """Share of cells whose IoU with the built-in ``edges`` partition is below ``min_iou``.

    The partition shares the same foreground (``cells > 0``) among the same nuclei along the
    image's steps and valleys (:meth:`~hpa_batch.cells.segment.watershed.WatershedSegmenter.partition`
    with the backend's defaults). ``(h, w)`` int labels with shared ids and the ``(4, h, w)`` image
    -> float.
    """
    if int(cells.max()) == 0 or not nuclei.any():
        return float("nan")
    seg = WatershedSegmenter()
    area = np.bincount(nuclei.ravel())[1:]
    radius = float(np.sqrt(np.median(area[area > 0]) / np.pi))
    signal, _, levels = seg.signal_levels(image, nuclei, radius)
    part = seg.partition(signal, nuclei, (cells > 0) | (nuclei > 0), radius, levels=levels)
    return partition_disagreement(cells, np.where(cells > 0, part, 0), min_iou)


def partition_disagreement(cells: np.ndarray, part: np.ndarray, min_iou: float = 0.5) -> float:
    """Share of cells ``k`` whose IoU with part ``k`` of another partition is below ``min_iou``.

    ``cells``, ``part``: ``(h, w)`` int labels, part ``k`` grown from cell ``k``'s nucleus -> float.
    """
    n = int(cells.max())
    a = np.bincount(cells.ravel(), minlength=n + 1)[1:]
    b = np.bincount(part.ravel(), minlength=n + 1)[1:]
    inter = np.bincount(cells[cells == part].ravel(), minlength=n + 1)[1:]
    union = a + b - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float((iou < min_iou).mean())


def _reasons(row: Any, opts: SegmentationQCConfig) -> list[str]:
    if row.n_cells == 0:
        return [ZERO_CELLS]
    out = []
    if row.cell_nucleus_ratio < opts.min_cell_nucleus_ratio:
        out.append(
            f"cells barely larger than nuclei (median cell/nucleus area {row.cell_nucleus_ratio:.2f}"
            f" < {opts.min_cell_nucleus_ratio:g}): cell bodies probably collapsed"
        )
    if row.no_nucleus_fraction > opts.max_no_nucleus_fraction:
        out.append(f"{row.no_nucleus_fraction:.0%} of cells hold no nucleus")
    if row.multi_nucleus_fraction > opts.max_multi_nucleus_fraction:
        out.append(f"{row.multi_nucleus_fraction:.0%} of cells hold several nuclei")
    if row.nuclei_outside_fraction > opts.max_nuclei_outside_fraction:
        out.append(f"{row.nuclei_outside_fraction:.0%} of nuclei lie in no cell")
    # measures added later (issue 24) may be missing from an older table: NaN never flags
    unsupported = float(getattr(row, "unsupported_boundary_fraction", float("nan")))
    size_outliers = float(getattr(row, "size_outlier_fraction", float("nan")))
    disagreement = float(getattr(row, "distance_disagreement", float("nan")))
    edge = float(getattr(row, "edge_disagreement", float("nan")))
    if unsupported > opts.max_unsupported_boundary_fraction:
        out.append(
            f"{unsupported:.0%} of the boundary length between touching cells has no"
            " valley or step under it: boundaries probably cut through cells"
        )
    if size_outliers > opts.max_size_outlier_fraction:
        out.append(f"{size_outliers:.0%} of cells are 3x larger or smaller than their nucleus predicts")
    if disagreement > opts.max_distance_disagreement:
        out.append(
            f"{disagreement:.0%} of cells disagree with the distance-only partition (IoU < 0.5):"
            " boundaries probably shifted into neighbours"
        )
    if edge > opts.max_edge_disagreement:
        out.append(
            f"{edge:.0%} of cells disagree with the image-driven partition (IoU < 0.5):"
            " boundaries probably ignore the image's steps and valleys"
        )
    return out


def robust_z(values: np.ndarray, floor: float, mask: np.ndarray | None = None) -> np.ndarray:
    """``(v - median) / max(1.4826 MAD, floor)``, median and MAD over the finite ``values`` (within
    ``mask`` when given): ``(n,)`` float -> ``(n,)`` float64, NaN where ``values`` is NaN."""
    v = np.asarray(values, float)
    good = np.isfinite(v) if mask is None else (np.isfinite(v) & mask)
    if not good.any():
        return np.full(v.shape, np.nan)
    med = float(np.median(v[good]))
    mad = max(1.4826 * float(np.median(np.abs(v[good] - med))), floor)
    return (v - med) / mad


def _outliers(table: pd.DataFrame, opts: SegmentationQCConfig) -> list[list[str]]:
    """Per row, the measures far from the shard's median (log scale for counts and areas)."""
    out: list[list[str]] = [[] for _ in range(len(table))]
    ok = (table["n_cells"] > 0).to_numpy()
    if ok.sum() < opts.min_images_for_outliers:
        return out
    # name in the reason, values (log scale for counts, areas and ratios), smallest MAD
    measures = {
        "n_cells": ("cells per image", np.log(table["n_cells"].clip(lower=1)), 0.1),
        "coverage": ("coverage", table["coverage"].astype(float), 0.02),
        "median_cell_area": ("median cell area", np.log(table["median_cell_area"].clip(lower=1)), 0.15),
        "cell_nucleus_ratio": ("cell/nucleus area ratio", np.log(table["cell_nucleus_ratio"].clip(lower=1e-3)), 0.15),
    }
    for key in opts.outlier_measures:
        name, values, floor = measures[key]
        v = values.to_numpy(float)
        good = ok & np.isfinite(v)
        if good.sum() < opts.min_images_for_outliers:
            continue
        z = robust_z(v, floor, good)
        for i in np.flatnonzero(good & (np.abs(z) > opts.outlier_mads)):
            side = "above" if z[i] > 0 else "below"
            out[i].append(f"{name} {abs(z[i]):.1f} MADs {side} the shard's median")
    return out


def flag_images(table: pd.DataFrame, opts: SegmentationQCConfig) -> pd.DataFrame:
    """Add ``doubtful`` (bool) and ``flag`` (reasons) to a table of :data:`SEGMENT_QC_COLUMNS` measures."""
    table = table.copy()
    outliers = _outliers(table, opts)
    flags = [_reasons(r, opts) + extra for r, extra in zip(table.itertuples(), outliers)]
    table["doubtful"] = [bool(f) for f in flags]
    table["flag"] = ["; ".join(f) for f in flags]
    return table.reindex(columns=list(SEGMENT_QC_COLUMNS))


def read_segment_qc(path: Any) -> pd.DataFrame:
    """Read ``qc/{shard}.segment.tsv`` (``flag`` as str, ``doubtful`` as bool)."""
    table = pd.read_csv(
        path,
        sep="\t",
        dtype={"image_id": str, "flag": str},
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN"] for c in QC_MEASURES},
    )
    if "doubtful" in table:
        table["doubtful"] = table["doubtful"].astype(str).str.lower().eq("true")
    else:  # written before the QC existed
        table["doubtful"] = table["n_cells"] == 0
    return table
