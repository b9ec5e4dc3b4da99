"""Green localisation pattern renderers, keyed by HPA 2021 class name."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from hpa_batch.synth.common import F32
from hpa_batch.synth.context import CellContext
from hpa_batch.synth.drawing import _angdiff, _sample_pixels, _saturate, _splat, _trace

# --------------------------------------------------------------------------------------
# Green pattern renderers (keyed by HPA 2021 class name)
# --------------------------------------------------------------------------------------

PatternRenderer = Callable[[CellContext], np.ndarray]


def _nucleoplasm(c: CellContext) -> np.ndarray:
    """Diffuse nucleus fill with dark nucleoli."""
    soft, _ = c.nucleoli
    v = (F32(0.85) + F32(0.1) * c.nuc_noise(3.0)) * (F32(1) - F32(0.85) * soft)
    return np.where(c.nuc, v, F32(0.02) * c.thickness).astype(F32)


def _nuclear_membrane(c: CellContext) -> np.ndarray:
    """Thin ring at the nucleus edge."""
    w = c.px(2.2, 0.7)
    sd = c.d_nuc_in - c.d_nuc_out
    ring = np.exp(-(((sd - F32(0.5)) / F32(w)) ** 2)) * (F32(0.85) + F32(0.15) * c.noise(4.0))
    return (ring + F32(0.05) * c.nuc).astype(F32)


def _nucleoli(c: CellContext) -> np.ndarray:
    """2-4 bright irregular blobs in the nucleus."""
    soft, _ = c.nucleoli
    return (soft * (F32(0.9) + F32(0.1) * c.nuc_noise(1.5)) + F32(0.04) * c.nuc).astype(F32)


def _fibrillar_center(c: CellContext) -> np.ndarray:
    """Clusters of tiny dots inside the nucleoli."""
    soft, blobs = c.nucleoli
    ys, xs = [], []
    for by, bx, rr in blobs:
        k = int(c.rng.integers(3, 9))
        ang = c.rng.uniform(0, 2 * np.pi, k)
        rad = rr * 0.85 * np.sqrt(c.rng.uniform(0, 1, k))
        ys.append(by + rad * np.sin(ang))
        xs.append(bx + rad * np.cos(ang))
    if not ys:
        return np.zeros(c.shape, F32)
    dots = _splat(c.shape, np.concatenate(ys), np.concatenate(xs), c.px(1.3))
    return (np.minimum(dots, F32(1.3)) + F32(0.1) * soft).astype(F32)


def _nuclear_dots(c: CellContext, n: int, sigma_ref: float, jitter: int, diffuse: float) -> np.ndarray:
    """``n`` dots (each ``jitter`` sub-spots) in the nucleoplasm on a ``diffuse`` fill."""
    soft, _ = c.nucleoli
    sigma = c.px(sigma_ref)
    where = c.nuc & (soft < 0.3) & (c.d_nuc_in > sigma)
    if not where.any():
        where = c.nuc
    ys, xs = _sample_pixels(c.rng, where, n)
    m = ys.size
    if jitter > 1:
        ys = np.repeat(ys, jitter) + c.rng.normal(0, 0.8 * sigma, m * jitter)
        xs = np.repeat(xs, jitter) + c.rng.normal(0, 0.8 * sigma, m * jitter)
    wts = np.repeat(c.rng.uniform(0.5, 1.0, m), max(jitter, 1)) / max(1.0, jitter * 0.5)
    dots = _splat(c.shape, ys, xs, sigma, wts)
    v = np.minimum(dots, F32(1.5)) + F32(diffuse) * (1 - soft)
    return np.where(c.nuc, v, F32(0)).astype(F32)


def _nuclear_speckles(c: CellContext) -> np.ndarray:
    """15-40 irregular speckles on a dim nucleoplasm."""
    return _nuclear_dots(c, int(c.rng.integers(15, 41)), 2.4, 3, 0.15)


def _nuclear_bodies(c: CellContext) -> np.ndarray:
    """2-6 small bright dots in the nucleus."""
    return _nuclear_dots(c, int(c.rng.integers(2, 7)), 2.8, 1, 0.04)


def _endoplasmic_reticulum(c: CellContext) -> np.ndarray:
    """Reticular perinuclear network (the yellow channel pattern)."""
    return c.er


def _golgi(c: CellContext) -> np.ndarray:
    """Compact cluster of fragments next to the nucleus, on the centrosome side."""
    near = np.exp(-((c.d_nuc_out / F32(max(2.0, 0.25 * c.rn))) ** 2))
    side = np.exp(-((_angdiff(c.theta, c.golgi_angle) / F32(0.5)) ** 2))
    weight = np.where(c.cyto, near * side, F32(0))
    n = int(c.rng.integers(40, 80))
    ys, xs = _sample_pixels(c.rng, weight, n)
    blobs = _splat(c.shape, ys, xs, c.px(2.6), c.rng.uniform(0.25, 0.5, ys.size))
    v = np.minimum(blobs, F32(1.3)) + F32(0.3) * weight + F32(0.02) * c.thickness
    return np.where(c.cell, v, F32(0)).astype(F32)


def _intermediate_filaments(c: CellContext) -> np.ndarray:
    """Long wavy fibres, densest around the nucleus."""
    rng, s = c.rng, max(c.s, 0.1)
    n = int(np.clip(c.rc / (1.2 * s), 20, 250))
    weight = np.where(c.cyto, np.exp(-c.u / F32(0.25)), F32(0))
    y0, x0 = _sample_pixels(rng, weight, n)
    if y0.size == 0:
        return np.zeros(c.shape, F32)
    th = np.arctan2(y0 - c.ncy, x0 - c.ncx)
    a0 = th + rng.choice([-1.0, 1.0], y0.size) * rng.uniform(0.4, 1.4, y0.size)
    step = 0.8
    lengths = (rng.uniform(0.4, 1.2, y0.size) * c.far / step).astype(np.int64)
    counts = _trace(
        rng,
        c.cell,
        y0,
        x0,
        a0,
        int(1.2 * c.far / step),
        step=step,
        lengths=lengths,
        curvature=0.004 / s,
        wiggle=0.0012 / s,
        weights=rng.uniform(0.3, 1.0, y0.size),
    )
    fil = _saturate(counts, 1.6)
    v = np.where(c.nuc, F32(0.3) * fil, fil) + F32(0.1) * c.thickness
    return np.where(c.cell, v, F32(0)).astype(F32)


def _actin(c: CellContext) -> np.ndarray:
    """Cortical ring plus parallel stress fibres (cortex only in mitotic cells)."""
    w = c.px(2.5, 0.8)
    cortex = np.exp(-(((c.d_edge - 1) / F32(w)) ** 2)) * F32(0.8)
    base = np.where(c.cell, cortex + F32(0.06) * c.thickness, F32(0))
    if c.mitotic:
        return base.astype(F32)
    rng = c.rng
    ang = c.geom.body.angle + rng.normal(0, 0.15)
    d = np.array([math.sin(ang), math.cos(ang)])
    perp = np.array([d[1], -d[0]])
    ys, xs = np.nonzero(c.cell)
    proj = (ys - c.ccy) * perp[0] + (xs - c.ccx) * perp[1]
    spacing = c.px(9.0, 1.5)
    n = max(3, int((proj.max() - proj.min()) / spacing))
    off = rng.uniform(proj.min(), proj.max(), n)
    half = math.hypot(*c.shape) / 2
    y0 = c.ccy + off * perp[0] - half * d[0]
    x0 = c.ccx + off * perp[1] - half * d[1]
    a0 = np.full(n, math.atan2(d[0], d[1])) + rng.normal(0, 0.04, n)
    counts = _trace(
        rng, c.cell, y0, x0, a0, int(2 * half / 0.8), step=0.8, terminate=False, weights=rng.uniform(0.3, 1.0, n)
    )
    fib = _saturate(counts, 1.0) * (F32(0.4) + F32(0.6) * _saturate(c.d_edge, 6 * c.s + 1))
    fib = np.where(c.nuc, F32(0.4) * fib, fib)
    return (base + np.where(c.cell, fib, F32(0))).astype(F32)


def _microtubules(c: CellContext) -> np.ndarray:
    """The microtubule network of the red channel."""
    return c.microtubules


def _mitotic_spindle(c: CellContext) -> np.ndarray:
    """Bipolar spindle of a mitotic cell."""
    return (c.spindle + F32(0.05) * c.thickness).astype(F32)


def _centrosome(c: CellContext) -> np.ndarray:
    """One or two bright dots next to the nucleus."""
    cy, cx = c.centrosome
    ang = c.rng.uniform(0, 2 * np.pi)
    gap = c.px(5.0, 0.8)
    n = 1 if c.rng.random() < 0.3 else 2
    ys = np.array([cy, cy + gap * math.sin(ang)])[:n]
    xs = np.array([cx, cx + gap * math.cos(ang)])[:n]
    dots = _splat(c.shape, ys, xs, c.px(2.4))
    return np.where(c.cell, F32(1.3) * dots + F32(0.03) * c.thickness, F32(0)).astype(F32)


def _plasma_membrane(c: CellContext) -> np.ndarray:
    """Thin ring along the cell edge."""
    w = c.px(2.2, 0.7)
    ring = np.exp(-(((c.d_edge - 1) / F32(w)) ** 2)) * (F32(0.85) + F32(0.15) * c.noise(6.0))
    return np.where(c.cell, ring + F32(0.04) * c.thickness, F32(0)).astype(F32)


def _mitochondria(c: CellContext) -> np.ndarray:
    """Many short worm-like segments, denser near the nucleus."""
    rng, s = c.rng, max(c.s, 0.1)
    area = float(c.cyto.sum())
    n = int(np.clip(area / (160.0 * s * s), 10, 1500))
    weight = np.where(c.cyto, F32(0.2) + (F32(1) - c.u) ** 2, F32(0))
    y0, x0 = _sample_pixels(rng, weight, n)
    n = y0.size
    if n == 0:
        return np.zeros(c.shape, F32)
    max_len = max(3, int(24 * s / 0.7))
    lengths = rng.integers(max(2, max_len // 3), max_len + 1, n)
    counts = _trace(
        rng,
        c.cyto,
        y0,
        x0,
        rng.uniform(-np.pi, np.pi, n),
        max_len,
        curvature=0.05 / s,
        wiggle=0.01 / s,
        lengths=lengths,
        weights=rng.uniform(0.5, 1.0, n),
    )
    v = _saturate(counts, 1.0) + F32(0.05) * c.thickness
    return np.where(c.cyto, v, F32(0)).astype(F32)


def _aggresome(c: CellContext) -> np.ndarray:
    """One large bright perinuclear blob."""
    cy, cx = c.centrosome
    rad = max(1.0, 0.28 * c.rn)
    ang = c.golgi_angle
    cy, cx = cy + 0.4 * rad * math.sin(ang), cx + 0.4 * rad * math.cos(ang)
    k = 7
    ys = cy + c.rng.normal(0, 0.3 * rad, k)
    xs = cx + c.rng.normal(0, 0.3 * rad, k)
    blob = _splat(c.shape, ys, xs, 0.55 * rad, np.full(k, 0.35))
    return np.where(c.cell, np.minimum(blob, F32(1.8)) + F32(0.1) * c.thickness, F32(0)).astype(F32)


def _cytosol(c: CellContext) -> np.ndarray:
    """Diffuse cytoplasm fill, nucleus excluded."""
    v = c.thickness * (F32(0.85) + F32(0.12) * c.noise(8.0) + F32(0.05) * c.noise(1.5))
    return np.where(c.nuc, F32(0.05), v).astype(F32) * c.cell


def _vesicles(c: CellContext) -> np.ndarray:
    """Many small dots across the cytoplasm."""
    s = max(c.s, 0.1)
    area = float(c.cyto.sum())
    n = int(np.clip(area / (450.0 * s * s), 8, 600))
    weight = np.where(c.cyto, F32(0.4) + (F32(1) - c.u), F32(0))
    ys, xs = _sample_pixels(c.rng, weight, n)
    dots = _splat(c.shape, ys, xs, c.px(1.9), c.rng.lognormal(0, 0.4, ys.size))
    v = np.minimum(dots, F32(2.0)) + F32(0.04) * c.thickness
    return np.where(c.cell, v, F32(0)).astype(F32)


def _negative(c: CellContext) -> np.ndarray:
    """No specific signal (autofluorescence is added for every cell)."""
    return np.zeros(c.shape, F32)


#: Green-channel renderer per HPA 2021 class name: ``f(ctx) -> float32 (h, w)`` with
#: peak ~1 inside the cell's bounding box (zero outside the cell).
PATTERN_RENDERERS: dict[str, PatternRenderer] = {
    "Nucleoplasm": _nucleoplasm,
    "Nuclear membrane": _nuclear_membrane,
    "Nucleoli": _nucleoli,
    "Nucleoli fibrillar center": _fibrillar_center,
    "Nuclear speckles": _nuclear_speckles,
    "Nuclear bodies": _nuclear_bodies,
    "Endoplasmic reticulum": _endoplasmic_reticulum,
    "Golgi apparatus": _golgi,
    "Intermediate filaments": _intermediate_filaments,
    "Actin filaments": _actin,
    "Microtubules": _microtubules,
    "Mitotic spindle": _mitotic_spindle,
    "Centrosome": _centrosome,
    "Plasma membrane": _plasma_membrane,
    "Mitochondria": _mitochondria,
    "Aggresome": _aggresome,
    "Cytosol": _cytosol,
    "Vesicles and punctate cytosolic patterns": _vesicles,
    "Negative": _negative,
}
