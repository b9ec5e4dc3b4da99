"""Cell and nucleus geometry: blobs, processes, placement, per-pixel ownership."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from hpa_batch.synth.common import F32, REFERENCE_SIZE
from hpa_batch.synth.profiles import CellLineProfile

# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


@dataclass
class _Shape:
    """A smooth star-shaped blob: ``rho(theta) = radius * (1 + sum_k a_k cos(k theta + p_k))``.

    Lengths in px of the image being drawn; ``angle`` is the long-axis direction
    (radians, x towards y).
    """

    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # (K, 3): k, amplitude, phase
    spikes: float = 0.0

    def extent(self) -> float:
        """Radius of a circle that contains the shape, px."""
        return float(self.table.max()) * math.sqrt(self.aspect) + 2.0

    @cached_property
    def table(self) -> np.ndarray:
        """Outline radius (px) on equally spaced angles in [-pi, pi), float32.

        The number of angles (a power of two, 64..2048) follows the outline length.
        """
        outline = max(1.0, 12 * self.radius * math.sqrt(self.aspect))
        n = int(np.clip(2 ** math.ceil(math.log2(outline)), 64, 2048))
        th = np.linspace(-np.pi, np.pi, n, endpoint=False)
        r = np.ones_like(th)
        if len(self.harmonics):
            k, a, p = self.harmonics.T
            r += (a[:, None] * np.cos(k[:, None] * th[None, :] + p[:, None])).sum(axis=0)
        if self.spikes > 0:
            ath = np.abs(th)
            ends = np.exp(-((ath / 0.28) ** 2)) + np.exp(-(((np.pi - ath) / 0.28) ** 2))
            r += self.spikes * ends
        return (np.maximum(r, 0.3) * self.radius).astype(F32)

    def distance(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Shape-normalised distance (< 1 inside) at offsets from the centre.

        Parameters
        ----------
        dy, dx : ndarray of float32
            Broadcastable offsets (px), e.g. shapes (h, 1) and (1, w).

        Returns
        -------
        ndarray of float32, shape (h, w)
        """
        c, s = F32(math.cos(self.angle)), F32(math.sin(self.angle))
        sa = F32(math.sqrt(self.aspect))
        u = (dx * c + dy * s) / sa
        v = (dy * c - dx * s) * sa
        rho = np.hypot(u, v)
        n = self.table.size
        idx = ((np.arctan2(v, u) + F32(np.pi)) * F32(n / (2 * np.pi))).astype(np.int32)
        np.clip(idx, 0, n - 1, out=idx)
        return (rho / self.table[idx]).astype(F32, copy=False)


@dataclass
class _CellGeom:
    """Cell body, nucleus (and a second one of a binucleate cell), mitotic state and whether the
    cell is one of the big flat cells of a mixed field."""

    body: _Shape
    nucleus: _Shape
    mitotic: bool
    nucleus2: _Shape | None = None
    big: bool = False

    def nuclei(self) -> list[_Shape]:
        """The cell's nuclei (two for a binucleate cell)."""
        return [self.nucleus] if self.nucleus2 is None else [self.nucleus, self.nucleus2]


def _harmonics(rng: np.random.Generator, amp: float, ks: Sequence[int], decay: float = 0.8) -> np.ndarray:
    """(K, 3) rows of (k, amplitude, phase); amplitudes ~ N(0, amp / k**decay)."""
    ks_arr = np.asarray(ks, dtype=float)
    a = rng.normal(0.0, 1.0, ks_arr.size) * amp / ks_arr**decay
    p = rng.uniform(0, 2 * np.pi, ks_arr.size)
    return np.stack([ks_arr, a, p], axis=1)


def _place_centres(
    rng: np.random.Generator, size: int, radius: float, n: int, clustering: float, large_fraction: float = 0.0
) -> list[tuple[float, float, float]]:
    """Dart throwing with clustering; returns (cy, cx, r) per cell.

    Clustered cell lines place new cells next to existing ones and pack them more
    tightly (the overlap is resolved when rasterising). A ``large_fraction`` of the cells are
    1.8-2.6x larger (nothing is drawn for it when 0, so other images stay as they were).
    """
    min_sep = 0.8 - 0.2 * clustering
    pts: list[tuple[float, float, float]] = []
    arr = np.zeros((0, 3))
    tries = 0
    while len(pts) < n and tries < 60 * n:
        tries += 1
        r = radius * float(np.exp(rng.normal(0.0, 0.15)))
        if large_fraction > 0 and rng.random() < large_fraction:
            r *= float(rng.uniform(1.8, 2.6))  # a big flat cell among small ones (>= 1.6 x radius)
        if pts and rng.random() < clustering:
            j = int(rng.integers(len(pts)))
            ang = rng.uniform(0, 2 * np.pi)
            dist = (pts[j][2] + r) * rng.uniform(min_sep, min_sep + 0.25)
            cy, cx = pts[j][0] + dist * math.sin(ang), pts[j][1] + dist * math.cos(ang)
        else:
            cy, cx = rng.uniform(0, size, 2)
        if not (0 <= cy < size and 0 <= cx < size):
            continue
        if len(pts):
            d = np.hypot(arr[:, 0] - cy, arr[:, 1] - cx)
            if np.any(d < min_sep * (arr[:, 2] + r)):
                continue
        pts.append((float(cy), float(cx), r))
        arr = np.asarray(pts)
    return pts


def _cell_geom(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    r: float,
    profile: CellLineProfile,
    orientation: float,
    mitotic: bool,
    big: bool = False,
) -> _CellGeom:
    """Random body and nucleus shapes for one cell (``big``: a big flat cell of a mixed field)."""
    if mitotic:
        r *= 0.6
        body = _Shape(cy, cx, r, 1.05, rng.uniform(0, np.pi), _harmonics(rng, 0.03, range(2, 5)))
        plate_angle = rng.uniform(0, np.pi)
        a, b = 0.40 * r, 0.11 * r
        nucleus = _Shape(
            cy + rng.normal(0, 0.04 * r),
            cx + rng.normal(0, 0.04 * r),
            math.sqrt(a * b),
            a / b,
            plate_angle,
            _harmonics(rng, 0.12, range(2, 7), decay=0.3),
        )
        return _CellGeom(body, nucleus, True)
    if rng.random() < profile.alignment:
        angle = orientation + rng.normal(0, 0.25)
    else:
        angle = rng.uniform(0, np.pi)
    aspect = max(1.0, profile.aspect * float(np.exp(rng.normal(0, 0.12))))
    if big:  # spread cells are rounder
        aspect = max(1.0, 0.75 * aspect)
    harm = np.concatenate(
        [
            _harmonics(rng, profile.irregularity, range(2, 7)),
            _harmonics(rng, profile.irregularity * 0.25, range(7, 13), decay=0.3),
        ]
    )
    spikes = profile.spikiness * float(rng.uniform(0.5, 1.3))
    body = _Shape(cy, cx, r, aspect, angle, harm, spikes)
    amp = float(np.abs(harm[:, 1]).sum())
    rn = profile.nucleus_ratio * r * float(np.exp(rng.normal(0, 0.08)))
    if big:  # a flat, spread cell: its nucleus is about that of its small neighbours
        rn *= 0.5
    n_aspect = 1.0 + (aspect - 1.0) * 0.35 + abs(rng.normal(0, 0.12))
    n_harm = _harmonics(rng, 0.05, range(2, 5))
    n_amp = 1.0 + float(np.abs(n_harm[:, 1]).sum())
    two = profile.binucleate_rate > 0 and rng.random() < profile.binucleate_rate
    if two:  # two nuclei of ~0.6x the area each, side by side across the cell's short axis
        rn *= 0.78
        n_aspect = 1.0 + abs(rng.normal(0, 0.1))
    sa, sn = math.sqrt(aspect), math.sqrt(n_aspect)
    pair = 2.2 if two else 1.0  # the pair's extent across the short axis, in nucleus radii
    room_long = max(0.0, 0.85 * r * sa * (1 - amp) - rn * sn * n_amp)
    room_short = max(0.0, 0.85 * r / sa * (1 - amp) - pair * rn * n_amp)
    off = profile.nucleus_offset
    ol = room_long * rng.uniform(-off, off)
    os_ = room_short * rng.uniform(-off, off)
    c, s = math.cos(angle), math.sin(angle)
    ny, nx = cy + ol * s + os_ * c, cx + ol * c - os_ * s
    if not two:
        nucleus = _Shape(ny, nx, rn, n_aspect, angle + rng.normal(0, 0.3), n_harm)
        return _CellGeom(body, nucleus, False, big=big)
    half = rn * float(rng.uniform(1.0, 1.2))  # centre to the pair's middle: gap 0-40 % of a radius
    tilt = angle + math.pi / 2 + rng.normal(0, 0.3)
    dy, dx = half * math.sin(tilt), half * math.cos(tilt)
    first = _Shape(ny + dy, nx + dx, rn, n_aspect, rng.uniform(0, np.pi), n_harm)
    second = _Shape(ny - dy, nx - dx, rn, n_aspect, rng.uniform(0, np.pi), _harmonics(rng, 0.05, range(2, 5)))
    return _CellGeom(body, first, False, nucleus2=second, big=big)


def _bbox(shape: _Shape, size: int) -> tuple[slice, slice] | None:
    """Image slices of the square around ``shape`` (clipped), or None if outside."""
    e = shape.extent()
    y0, y1 = max(0, int(shape.cy - e)), min(size, int(shape.cy + e) + 2)
    x0, x1 = max(0, int(shape.cx - e)), min(size, int(shape.cx + e) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _local_window(inner: slice, outer: slice) -> slice:
    """``inner`` (image coordinates) clipped to ``outer``, relative to ``outer.start``."""
    start = max(inner.start, outer.start) - outer.start
    return slice(start, min(inner.stop, outer.stop) - outer.start)


def _rasterize(geoms: list[_CellGeom], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Label image (int32, 1..n in ``geoms`` order) and nucleus flag (bool), (size, size)."""
    cells = np.zeros((size, size), np.int32)
    best = np.full((size, size), np.inf, F32)
    nucflag = np.zeros((size, size), bool)
    for k, g in enumerate(geoms, start=1):
        sl = _bbox(g.body, size)
        if sl is None:
            continue
        ys = np.arange(sl[0].start, sl[0].stop, dtype=F32)[:, None]
        xs = np.arange(sl[1].start, sl[1].stop, dtype=F32)[None, :]
        score = g.body.distance(ys - F32(g.body.cy), xs - F32(g.body.cx))
        inside = score < 1
        nuc = np.zeros(score.shape, bool)
        for shape in g.nuclei():
            nsl = _bbox(shape, size)
            if nsl is None:
                continue
            wy = _local_window(nsl[0], sl[0])
            wx = _local_window(nsl[1], sl[1])
            if wy.start < wy.stop and wx.start < wx.stop:
                dn = shape.distance(ys[wy] - F32(shape.cy), xs[:, wx] - F32(shape.cx))
                nuc[wy, wx] |= (dn < 1) & (score[wy, wx] < 0.92)
        score[nuc] -= F32(2)
        upd = inside & (score < best[sl])
        cells[sl][upd] = k
        best[sl][upd] = score[upd]
        nucflag[sl][upd] = nuc[upd]
    return cells, nucflag


def _clean(
    cells: np.ndarray, nucflag: np.ndarray, geoms: list[_CellGeom]
) -> tuple[np.ndarray, np.ndarray, list[_CellGeom]]:
    """Drop fragments and too-small cells; relabel 1..n.

    Returns
    -------
    cells, nuclei : ndarray of uint16, shape (size, size)
    geoms : list of _CellGeom, aligned with the new ids
    """
    keep = np.zeros(len(geoms) + 1, bool)
    for k, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        g = geoms[k - 1]
        sub = cells[sl] == k
        nsub = sub & nucflag[sl]
        n_area = int(nsub.sum())
        exp_nuc = math.pi * g.nucleus.radius**2
        exp_cell = math.pi * g.body.radius**2
        lab, n_comp = ndi.label(sub)
        if n_comp > 1:
            good = np.unique(lab[nsub])
            good = good[good > 0]
            drop = sub & ~np.isin(lab, good)
            cells[sl][drop] = 0
            sub &= ~drop
        c_area = int(sub.sum())
        too_small = n_area < max(6.0, 0.3 * exp_nuc) or c_area < 0.12 * exp_cell
        if too_small or c_area - n_area < 0.3 * n_area:
            cells[sl][sub] = 0
            continue
        keep[k] = True
    lut = np.zeros(len(geoms) + 1, np.uint16)
    kept = np.flatnonzero(keep)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.uint16)
    new_cells = lut[cells]
    nuclei = np.where(nucflag, new_cells, np.uint16(0)).astype(np.uint16)
    return new_cells, nuclei, [geoms[k - 1] for k in kept]


def _make_geometry(
    rng: np.random.Generator, size: int, profile: CellLineProfile, n_forced_mitotic: int
) -> tuple[np.ndarray, np.ndarray, list[_CellGeom]]:
    """Cells and nuclei label images (uint16, (size, size)) and per-cell geometry.

    Cell radii are ``profile.radius * size / 2048`` (at least 6 px).  Up to 8 layouts
    are drawn until one keeps at least one cell (and a mitotic cell if one is forced);
    as a last resort a single cell is placed in the centre.
    """
    radius = max(6.0, profile.radius * size / REFERENCE_SIZE)
    best: tuple[np.ndarray, np.ndarray, list[_CellGeom]] | None = None
    for _attempt in range(8):
        n_target = profile.coverage * size * size / (math.pi * radius * radius)
        n_target /= 1 + 3.9 * profile.large_fraction  # big cells hold ~4.9x the area of the others
        n_target = int(np.clip(round(n_target * rng.uniform(0.8, 1.2)), 3, 600))
        pts = _place_centres(rng, size, radius, n_target, profile.clustering, profile.large_fraction)
        mitotic = [bool(rng.random() < profile.mitotic_rate) for _ in pts]
        inner = [i for i, (cy, cx, r) in enumerate(pts) if min(cy, cx, size - cy, size - cx) > r]
        pool = inner or list(range(len(pts)))
        if n_forced_mitotic and pool:
            chosen = rng.choice(pool, size=min(n_forced_mitotic, len(pool)), replace=False)
            for i in chosen:
                mitotic[int(i)] = True
        orientation = rng.uniform(0, np.pi)
        big = [profile.large_fraction > 0 and r >= 1.6 * radius for _, _, r in pts]
        geoms = [
            _cell_geom(rng, cy, cx, r, profile, orientation, m and not b, big=b)
            for (cy, cx, r), m, b in zip(pts, mitotic, big)
        ]
        cells, nucflag = _rasterize(geoms, size)
        result = _clean(cells, nucflag, geoms)
        if result[2] and (not n_forced_mitotic or any(g.mitotic for g in result[2])):
            return result
        if result[2] and best is None:
            best = result
    if best is not None:
        return best
    r = min(max(radius, 0.25 * size), 0.3 * size)
    geom = _cell_geom(rng, size / 2, size / 2, r, profile, 0.0, n_forced_mitotic > 0)
    geom.body.aspect = 1.0
    geom.body.spikes = 0.0
    cells, nucflag = _rasterize([geom], size)
    return _clean(cells, nucflag, [geom])
