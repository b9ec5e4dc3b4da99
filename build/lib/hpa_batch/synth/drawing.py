"""Texture and drawing helpers."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from hpa_batch.synth.common import F32

# --------------------------------------------------------------------------------------
# Texture and drawing helpers
# --------------------------------------------------------------------------------------


def _normalise(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation, float32."""
    a = a - a.mean()
    sd = float(a.std())
    return (a / sd if sd > 0 else a).astype(F32, copy=False)


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation matrix (n_out, n_in), float32, mapping end points to end points."""
    m = np.zeros((n_out, n_in), F32)
    if n_in == 1:
        m[:, 0] = 1
        return m
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    t = (pos - i0).astype(F32)
    rows = np.arange(n_out)
    m[rows, i0] = 1 - t
    m[rows, i0 + 1] = t
    return m


def _upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a small float32 (h, w) field to ``shape`` (two matrix products)."""
    a = _interp_matrix(shape[0], small.shape[0])
    b = _interp_matrix(shape[1], small.shape[1])
    return (a @ small.astype(F32, copy=False)) @ b.T


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise, float32 ``shape``.

    Large ``sigma`` is generated on a coarse grid and bilinearly upsampled.
    """
    f = max(1, int(sigma // 2))
    if f == 1:
        z = rng.standard_normal(shape, dtype=F32)
        return _normalise(ndi.gaussian_filter(z, max(sigma, 0.5), truncate=3.0))
    hs, ws = shape[0] // f + 3, shape[1] // f + 3
    z = rng.standard_normal((hs, ws), dtype=F32)
    z = ndi.gaussian_filter(z, sigma / f, truncate=3.0)
    return _normalise(_upsample(z, shape))


def _ridges(rng: np.random.Generator, shape: tuple[int, int], sigma: float, width: float = 0.35) -> np.ndarray:
    """Reticular network in [0, 1]: zero crossings of band-passed noise, float32 ``shape``."""
    z = rng.standard_normal(shape, dtype=F32)
    band = ndi.gaussian_filter(z, sigma, truncate=3.0)
    band -= ndi.gaussian_filter(z, 2.5 * sigma, truncate=3.0)
    band = _normalise(band)
    return np.exp(-((band / F32(width)) ** 2)).astype(F32)


def _splat(
    shape: tuple[int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    sigma: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian spots of peak ~``weights`` at (ys, xs), float32 ``shape``."""
    h, w = shape
    iy = np.clip(np.rint(ys).astype(np.int64), 0, h - 1)
    ix = np.clip(np.rint(xs).astype(np.int64), 0, w - 1)
    acc = np.bincount(iy * w + ix, weights=weights, minlength=h * w).reshape(h, w).astype(F32)
    sigma = max(sigma, 0.5)
    return ndi.gaussian_filter(acc, sigma, truncate=3.0) * F32(2 * np.pi * sigma * sigma)


def _sample_pixels(rng: np.random.Generator, weight: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sub-pixel positions drawn with probability proportional to ``weight``."""
    flat = weight.ravel().astype(np.float64)
    total = flat.sum()
    if n <= 0 or total <= 0:
        return np.zeros(0, F32), np.zeros(0, F32)
    idx = rng.choice(flat.size, size=n, p=flat / total)
    ys, xs = np.divmod(idx, weight.shape[1])
    jit = rng.uniform(-0.5, 0.5, (2, n))
    return (ys + jit[0]).astype(F32), (xs + jit[1]).astype(F32)


def _trace(
    rng: np.random.Generator,
    mask: np.ndarray,
    y0: np.ndarray,
    x0: np.ndarray,
    a0: np.ndarray,
    n_steps: int,
    *,
    curvature: float = 0.0,
    wiggle: float = 0.0,
    step: float = 0.7,
    terminate: bool = True,
    lengths: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise random smooth curves into a float32 count image of ``mask.shape``.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        Curves are only drawn inside; with ``terminate`` a curve stops at its first exit.
    y0, x0, a0 : ndarray, shape (n,)
        Start positions (px) and directions (radians).
    n_steps : int
        Points per curve, ``step`` px apart.
    curvature, wiggle : float
        Standard deviation of the per-curve constant curvature and of the random walk
        of the curvature per step (rad / px).
    lengths : ndarray, shape (n,), optional
        Number of steps of each curve.
    weights : ndarray, shape (n,), optional
        Intensity of each curve.
    """
    h, w = mask.shape
    n = int(y0.size)
    if n == 0 or n_steps <= 0:
        return np.zeros((h, w), F32)
    kappa = rng.normal(0.0, curvature, (n, 1)).astype(F32)
    if wiggle > 0:
        kappa = kappa + np.cumsum(rng.normal(0.0, wiggle, (n, n_steps)).astype(F32), axis=1)
    turn = np.broadcast_to(kappa * F32(step), (n, n_steps))
    theta = a0.astype(F32)[:, None] + np.cumsum(turn, axis=1)
    ys = y0.astype(F32)[:, None] + np.cumsum(np.sin(theta), axis=1) * F32(step)
    xs = x0.astype(F32)[:, None] + np.cumsum(np.cos(theta), axis=1) * F32(step)
    iy = np.rint(ys).astype(np.int64)
    ix = np.rint(xs).astype(np.int64)
    inb = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    np.clip(iy, 0, h - 1, out=iy)
    np.clip(ix, 0, w - 1, out=ix)
    ok = inb & mask[iy, ix]
    if terminate:
        ok = np.logical_and.accumulate(ok, axis=1)
    if lengths is not None:
        ok &= np.arange(n_steps)[None, :] < lengths[:, None]
    wts = None if weights is None else np.broadcast_to(weights[:, None], ok.shape)[ok]
    acc = np.bincount((iy * w + ix)[ok], weights=wts, minlength=h * w)
    return acc.reshape(h, w).astype(F32)


def _segments(mask: np.ndarray, p0: np.ndarray, p1: np.ndarray, step: float = 0.7) -> np.ndarray:
    """Straight segments from ``p0`` to ``p1`` (arrays (n, 2) of y, x) as float32 counts."""
    h, w = mask.shape
    if len(p0) == 0:
        return np.zeros((h, w), F32)
    length = float(np.max(np.hypot(*(p1 - p0).T)))
    t = np.linspace(0.0, 1.0, max(2, int(length / step) + 1), dtype=F32)
    ys = p0[:, :1] + (p1[:, :1] - p0[:, :1]) * t[None, :]
    xs = p0[:, 1:] + (p1[:, 1:] - p0[:, 1:]) * t[None, :]
    iy = np.rint(ys).astype(np.int64)
    ix = np.rint(xs).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    iy, ix = iy[ok], ix[ok]
    ok2 = mask[iy, ix]
    acc = np.bincount(iy[ok2] * w + ix[ok2], minlength=h * w)
    return acc.reshape(h, w).astype(F32)


def _saturate(counts: np.ndarray, k: float) -> np.ndarray:
    """Soft saturation ``1 - exp(-counts / k)`` of a count image, float32."""
    return (1.0 - np.exp(-counts / F32(k))).astype(F32)


def _angdiff(a: np.ndarray, b: float) -> np.ndarray:
    """Absolute angular difference in [0, pi], float32."""
    return np.abs((a - F32(b) + F32(np.pi)) % F32(2 * np.pi) - F32(np.pi))


def _edge_distance(mask: np.ndarray, sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Euclidean distance (px, float32) of mask pixels to the nearest non-mask pixel.

    Sides that lie on the image border (top, bottom, left, right) do not count as edges.
    """
    p = np.pad(mask, 1)
    top, bottom, left, right = sides
    if top:
        p[0, 1:-1] = mask[0]
    if bottom:
        p[-1, 1:-1] = mask[-1]
    if left:
        p[1:-1, 0] = mask[:, 0]
    if right:
        p[1:-1, -1] = mask[:, -1]
    if p.all():
        return np.full(mask.shape, F32(max(mask.shape)))
    return ndi.distance_transform_edt(p)[1:-1, 1:-1].astype(F32)
