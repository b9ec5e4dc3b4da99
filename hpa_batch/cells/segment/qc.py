"""Per-image segmentation QC: measures that expose a failed segmentation, and the ``doubtful`` flag.

The measures need no ground truth. They compare the cells with an independent look at the nuclear
channel (its foreground, not split into nuclei) and with the other images of the shard (one cell line):

* ``coverage`` (cell pixels / image) and ``nucleus_coverage`` (nuclear foreground / image);
* ``median_cell_area`` and ``median_nucleus_area`` (full-resolution px^2) and the median per-cell
  ``cell_nucleus_ratio`` (about 1 when cell bodies collapsed onto their nuclei);
* ``no_nucleus_fraction`` / ``multi_nucleus_fraction``: cells holding none / several of the nuclear
  objects; ``nuclei_outside_fraction``: nuclear objects in no cell (missed cells);
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

from hpa_batch.cells.segment.watershed import nuclear_foreground
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


def image_qc(cells: np.ndarray, nuclei: np.ndarray, blue: np.ndarray, scale: float) -> dict[str, float]:
    """QC measures of one segmented image.

    Parameters
    ----------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int label images at the working level (ids ``1..n`` shared).
    blue : numpy.ndarray
        ``(h, w)`` nuclear channel at the same level.
    scale : float
        Downsampling factor of that level (areas are reported at full resolution).

    Returns
    -------
    dict
        :data:`QC_MEASURES` -> float (NaN where undefined, e.g. no cell).
    """
    n = int(cells.max())
    fg = nuclear_foreground(blue)
    out = {"coverage": float((cells > 0).mean()), "nucleus_coverage": float(fg.mean())}
    area = np.bincount(cells.ravel(), minlength=n + 1)[1:].astype(float)
    nuc = np.bincount(nuclei.ravel(), minlength=n + 1)[1:].astype(float)
    comps, n_comp = ndi.label(fg)
    if n == 0:
        nan = float("nan")
        outside = 1.0 if n_comp else nan
        return {
            **out,
            "median_cell_area": nan,
            "median_nucleus_area": nan,
            "cell_nucleus_ratio": nan,
            "no_nucleus_fraction": nan,
            "multi_nucleus_fraction": nan,
            "nuclei_outside_fraction": outside,
        }
    # each nuclear object belongs to the cell holding most of its pixels (0 = none)
    pair = np.bincount(comps.ravel() * (n + 1) + cells.ravel(), minlength=(n_comp + 1) * (n + 1))
    pair = pair.reshape(n_comp + 1, n + 1)[1:]
    owner = pair.argmax(axis=1) if n_comp else np.zeros(0, int)
    per_cell = np.bincount(owner[owner > 0], minlength=n + 1)[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nuc > 0, area / nuc, np.nan)
    s2 = scale * scale
    return {
        **out,
        "median_cell_area": float(np.median(area) * s2),
        "median_nucleus_area": float(np.median(nuc) * s2),
        "cell_nucleus_ratio": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else float("nan"),
        "no_nucleus_fraction": float((per_cell == 0).mean()),
        "multi_nucleus_fraction": float((per_cell > 1).mean()),
        "nuclei_outside_fraction": float((owner == 0).mean()) if n_comp else 0.0,
    }


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
