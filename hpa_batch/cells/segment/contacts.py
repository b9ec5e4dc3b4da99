"""Boundaries between touching cells: where they run, the signal on and beside them, and the join
of the two halves of a binucleate cell that every nucleus seeded separately.

Shared by the built-in backend (:func:`merge_binucleate`) and the segmentation QC (:func:`contacts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels


def contact_keys(cells: np.ndarray) -> np.ndarray:
    """Boundary pixels between two touching cells, keyed by their pair.

    ``cells`` ``(h, w)`` int labels -> ``(h, w)`` int64: ``lo * (n + 1) + hi`` for the two cells
    ``lo < hi`` that meet there (4-neighbours, both sides marked), 0 elsewhere.
    """
    n = int(cells.max())
    keys = np.zeros(cells.shape, np.int64)
    for a_sl, b_sl in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        a, b = cells[a_sl].astype(np.int64), cells[b_sl].astype(np.int64)
        touch = (a > 0) & (b > 0) & (a != b)
        key = np.minimum(a, b) * (n + 1) + np.maximum(a, b)
        keys[a_sl][touch] = key[touch]
        keys[b_sl][touch] = key[touch]
    return keys


@dataclass(frozen=True)
class Contacts:
    """The boundaries between touching cells and the signal beside them (:func:`contacts`).

    Attributes
    ----------
    keys : numpy.ndarray
        ``(m,)`` int64 pair keys ``lo * (n + 1) + hi`` (:func:`contact_keys`), sorted.
    length : numpy.ndarray
        ``(m,)`` float64 boundary pixels of each pair (both sides).
    boundary : numpy.ndarray
        ``(m,)`` float64 mean signal on the boundary.
    sides : numpy.ndarray
        ``(m, 2)`` float64 mean signal in the band beside the boundary on the lower-id and the
        higher-id cell's side (NaN where a side has no band pixel).
    """

    keys: np.ndarray
    length: np.ndarray
    boundary: np.ndarray
    sides: np.ndarray

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The two cell ids of each contact: ``(m,)`` int64 each (``n`` = the largest cell id)."""
        return self.keys // (n + 1), self.keys % (n + 1)


def contacts(
    cells: np.ndarray, signal: np.ndarray, band: tuple[float, float], exclude: np.ndarray | None = None
) -> Contacts:
    """Signal on and beside every boundary between touching cells.

    Parameters
    ----------
    cells : numpy.ndarray
        ``(h, w)`` int labels.
    signal : numpy.ndarray
        ``(h, w)`` float signal.
    band : tuple of float
        Distances (px) from the boundary between which a cell's pixels count as beside it.
    exclude : numpy.ndarray, optional
        ``(h, w)`` bool pixels never counted beside a boundary (e.g. the nuclei, dark in the
        reference channels).

    Returns
    -------
    Contacts
    """
    keys = contact_keys(cells)
    on = keys > 0
    if not on.any():
        empty = np.zeros(0)
        return Contacts(empty.astype(np.int64), empty, empty, np.zeros((0, 2)))
    uniq, inverse = np.unique(keys[on], return_inverse=True)
    m = uniq.size
    length = np.bincount(inverse, minlength=m).astype(float)
    boundary = np.bincount(inverse, weights=signal[on], minlength=m) / length
    dist, (iy, ix) = ndi.distance_transform_edt(~on, return_indices=True)
    near = (dist >= band[0]) & (dist <= band[1]) & (cells > 0)
    if exclude is not None:
        near &= ~exclude
    nearest = keys[iy[near], ix[near]]
    pair_idx = np.searchsorted(uniq, nearest)
    side = (cells[near] == nearest % (int(cells.max()) + 1)).astype(np.int64)  # 1: the higher id's side
    group = pair_idx * 2 + side
    counts = np.bincount(group, minlength=2 * m).reshape(m, 2)
    sums = np.bincount(group, weights=signal[near], minlength=2 * m).reshape(m, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sides = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return Contacts(uniq, length, boundary, sides)


def merge_binucleate(
    cells: np.ndarray,
    nuclei: np.ndarray,
    signal: np.ndarray,
    radius: float,
    *,
    max_gap: float = 0.7,
    max_step: float = 1.25,
    min_valley: float = 0.95,
    max_nucleus_ratio: float = 1.2,
    min_border: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Join touching cells that are one binucleate cell (every nucleus seeded a cell of its own).

    Two touching cells are joined when everything says one cell: their nuclei lie less than
    ``max_gap`` x ``radius`` apart and differ less than ``max_nucleus_ratio``-fold in area (the two
    nuclei of one cell are in the same phase), their shared border is at least ``min_border`` x
    ``radius`` long (counted on both sides: a cut through a cell, not a corner), and the image
    shows no boundary: the cytoplasm beside the border (0.4 ``radius`` wide, nuclei left out)
    differs less than ``max_step``-fold (no step) and the border is no valley (its mean at least
    ``min_valley`` x the dimmer side). Calibrated on generated fields whose truth is known (seed
    101 of the ``mixed``, ``vary``, ``confluent`` and ``crowded`` styles): 17 of 26 binucleate
    cells that were cut in two are joined, none of 189 pairs of neighbours whose nuclei are as close.

    Parameters
    ----------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int labels, cell ``k`` grown from nucleus ``k``.
    signal : numpy.ndarray
        ``(h, w)`` float cell-body signal.
    radius : float
        Median nucleus radius (px).

    Returns
    -------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int32: each joined group takes its lowest id in both images (so a binucleate
        cell's nucleus label holds both nuclei); other ids are unchanged.
    """
    n = int(cells.max())
    if n < 2 or max_gap <= 0:
        return cells, nuclei
    # nuclei closer than max_gap radii: their labels grown by half the gap touch
    near = contact_keys(expand_labels(nuclei, 0.5 * max_gap * radius))
    close = np.unique(near[near > 0])
    if close.size == 0:
        return cells, nuclei
    n_area = np.bincount(nuclei.ravel(), minlength=n + 1)
    boxes = ndi.find_objects(cells)
    parent = np.arange(n + 1)
    for key in close.tolist():
        a, b = divmod(key, n + 1)
        if not boxes[a - 1] or not boxes[b - 1]:
            continue
        if max(n_area[a], n_area[b]) >= max_nucleus_ratio * max(min(n_area[a], n_area[b]), 1):
            continue
        if one_cell(
            cells,
            nuclei,
            signal,
            (a, b),
            boxes,
            radius,
            max_step=max_step,
            min_valley=min_valley,
            min_border=min_border,
        ):
            ra, rb = _root(parent, a), _root(parent, b)
            parent[max(ra, rb)] = min(ra, rb)
    lut = np.array([_root(parent, k) for k in range(n + 1)], np.int32)
    return lut[cells], lut[nuclei]


def _root(parent: np.ndarray, k: int) -> int:
    """Union-find root of ``k`` (path halving)."""
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = int(parent[k])
    return k


def one_cell(
    cells: np.ndarray,
    nuclei: np.ndarray,
    signal: np.ndarray,
    pair: tuple[int, int],
    boxes: list,
    radius: float,
    *,
    max_step: float,
    min_valley: float,
    min_border: float,
) -> bool:
    """Whether two touching cells show no boundary between them (see :func:`merge_binucleate`).

    Works on the two cells' bounding box only: ``(h, w)`` label images and signal, ``boxes`` from
    ``ndi.find_objects(cells)``.
    """
    a, b = pair
    (ya, xa), (yb, xb) = boxes[a - 1], boxes[b - 1]
    box = (slice(min(ya.start, yb.start), max(ya.stop, yb.stop)), slice(min(xa.start, xb.start), max(xa.stop, xb.stop)))
    local = cells[box]
    two = np.where(local == a, 1, np.where(local == b, 2, 0)).astype(np.int32)
    found = contacts(two, signal[box], (1.0, max(0.4 * radius, 3.0)), exclude=nuclei[box] > 0)
    if found.keys.size == 0 or found.length[0] < min_border * radius:
        return False
    lo, hi = float(np.min(found.sides[0])), float(np.max(found.sides[0]))
    if not (lo > 0 and np.isfinite(hi)):
        return False
    return hi < max_step * lo and float(found.boundary[0]) >= min_valley * lo
