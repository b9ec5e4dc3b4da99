"""The per-cell rendering context shared by the stain renderers."""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from hpa_batch.synth.common import F32, GLOBAL_TEXTURE_MAX
from hpa_batch.synth.drawing import (
    _angdiff,
    _edge_distance,
    _ridges,
    _sample_pixels,
    _saturate,
    _segments,
    _smooth_noise,
    _splat,
    _trace,
)
from hpa_batch.synth.geometry import _CellGeom

# --------------------------------------------------------------------------------------
# Per-cell rendering context
# --------------------------------------------------------------------------------------


class _TextureBank:
    """Source of texture noise for the cells of one image.

    Large images draw noise per cell bounding box (cheaper than full-image filtering);
    small images (``size <= GLOBAL_TEXTURE_MAX``) draw each kind of noise once for the
    whole image and hand out slices, which avoids per-cell call overhead.
    """

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng = rng
        self.size = size
        self.global_fields = size <= GLOBAL_TEXTURE_MAX
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def _field(self, kind: str, sigma: float) -> np.ndarray:
        """Full-image texture of ``kind`` and ``sigma``, drawn on first use."""
        key = (kind, round(sigma, 3))
        if key not in self._cache:
            shape = (self.size, self.size)
            if kind == "ridges":
                self._cache[key] = _ridges(self.rng, shape, sigma)
            else:
                self._cache[key] = _smooth_noise(self.rng, shape, sigma)
        return self._cache[key]

    def noise(self, sl: tuple[slice, slice], sigma: float) -> np.ndarray:
        """Zero-mean unit-std smooth noise over the image region ``sl``, float32."""
        if self.global_fields:
            return self._field("noise", sigma)[sl]
        return _smooth_noise(self.rng, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), sigma)

    def ridges(self, sl: tuple[slice, slice], sigma: float) -> np.ndarray:
        """Reticular network in [0, 1] over the image region ``sl``, float32."""
        if self.global_fields:
            return self._field("ridges", sigma)[sl]
        return _ridges(self.rng, (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), sigma)


class CellContext:
    """Everything a pattern renderer needs about one cell, in its bounding box.

    Arrays are float32 or bool of shape ``(h, w)`` = the cell's bounding box.  Derived
    fields are computed on first use and cached.  ``s`` is the image size / 2048;
    ``nwin`` is the window (local slices) around the nucleus where nuclear work is done.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        s: float,
        cell: np.ndarray,
        nuc: np.ndarray,
        sides: tuple[bool, bool, bool, bool],
        geom: _CellGeom,
        bank: _TextureBank,
        sl: tuple[slice, slice],
        *,
        er_decay: float = 0.4,
        flatness: float = 0.0,
    ) -> None:
        self.rng = rng
        self.er_decay = er_decay
        self.flatness = flatness
        self.s = s
        self.bank = bank
        self.sl = sl
        self.cell = cell
        self.nuc = nuc
        self.cyto = cell & ~nuc
        self.sides = sides
        self.geom = geom
        self.mitotic = geom.mitotic
        self.shape: tuple[int, int] = (int(cell.shape[0]), int(cell.shape[1]))
        ys, xs = np.nonzero(nuc)
        self.ncy, self.ncx = float(ys.mean()), float(xs.mean())
        cys, cxs = np.nonzero(cell)
        self.ccy, self.ccx = float(cys.mean()), float(cxs.mean())
        self.rn = math.sqrt(ys.size / math.pi)
        self.rc = math.sqrt(cys.size / math.pi)
        h, w = self.shape
        self.nwin = (
            slice(max(0, int(ys.min()) - 2), min(h, int(ys.max()) + 3)),
            slice(max(0, int(xs.min()) - 2), min(w, int(xs.max()) + 3)),
        )
        # Farthest cell pixel from the nucleus centre (bounds curve lengths).
        self.far = float(np.hypot(np.abs(cys - self.ncy).max(), np.abs(cxs - self.ncx).max()))

    # --- coordinates, distances, noise -------------------------------------------------
    @cached_property
    def yy(self) -> np.ndarray:
        """Row coordinates, float32 (h, 1)."""
        return np.arange(self.shape[0], dtype=F32)[:, None]

    @cached_property
    def xx(self) -> np.ndarray:
        """Column coordinates, float32 (1, w)."""
        return np.arange(self.shape[1], dtype=F32)[None, :]

    @cached_property
    def theta(self) -> np.ndarray:
        """Angle around the nucleus centre, radians, (h, w)."""
        return np.arctan2(self.yy - F32(self.ncy), self.xx - F32(self.ncx)).astype(F32)

    @cached_property
    def d_edge(self) -> np.ndarray:
        """Distance to the cell edge (px), 0 outside the cell."""
        return _edge_distance(self.cell, self.sides)

    @cached_property
    def d_nuc_in(self) -> np.ndarray:
        """Distance to the nucleus edge inside the nucleus (px), 0 elsewhere."""
        out = np.zeros(self.shape, F32)
        wy, wx = self.nwin
        h, w = self.shape
        sides = (
            self.sides[0] and wy.start == 0,
            self.sides[1] and wy.stop == h,
            self.sides[2] and wx.start == 0,
            self.sides[3] and wx.stop == w,
        )
        out[self.nwin] = _edge_distance(self.nuc[self.nwin], sides)
        return out

    @cached_property
    def d_nuc_out(self) -> np.ndarray:
        """Distance to the nucleus outside it (px), 0 inside."""
        return ndi.distance_transform_edt(~self.nuc).astype(F32)

    @cached_property
    def u(self) -> np.ndarray:
        """Cytoplasm coordinate: 0 at the nucleus edge, 1 at the cell edge, 0 in the nucleus."""
        dn, dc = self.d_nuc_out, self.d_edge
        u = dn / np.maximum(dn + dc, F32(1e-3))
        u[~self.cyto] = 0
        return u

    @cached_property
    def thickness(self) -> np.ndarray:
        """Relative cytoplasm thickness: 1 near the nucleus, ~0.1 at the cell edge, 0 outside.

        ``flatness`` (0..1) blends it towards a flat 0.7 (cobblestone cells of even height, no
        dimming where neighbours touch).
        """
        v = F32(1) - self.u
        edge = F32(1) - np.exp(-self.d_edge / F32(self.px(7.0, 0.8)))
        t = (F32(0.25) + F32(0.75) * v * np.sqrt(v)) * (F32(0.3) + F32(0.7) * edge)
        if self.flatness > 0:
            t = F32(1 - self.flatness) * t + F32(0.7 * self.flatness)
        t[~self.cyto] = 0
        return t

    def noise(self, sigma_ref: float) -> np.ndarray:
        """Smooth noise (zero mean, unit std) with correlation ``sigma_ref`` px at 2048, (h, w)."""
        return self.bank.noise(self.sl, max(0.6, sigma_ref * self.s))

    def nuc_noise(self, sigma_ref: float) -> np.ndarray:
        """Like :meth:`noise` but only inside the nucleus window (zero elsewhere)."""
        out = np.zeros(self.shape, F32)
        wy, wx = self.nwin
        y0, x0 = self.sl[0].start, self.sl[1].start
        win = (slice(y0 + wy.start, y0 + wy.stop), slice(x0 + wx.start, x0 + wx.stop))
        out[self.nwin] = self.bank.noise(win, max(0.6, sigma_ref * self.s))
        return out

    def px(self, length_ref: float, minimum: float = 0.6) -> float:
        """A length given in px at 2048, in px of this image (at least ``minimum``)."""
        return max(minimum, length_ref * self.s)

    # --- organelles -----------------------------------------------------------------
    @cached_property
    def nucleoli(self) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
        """Soft nucleoli mask in [0, 1] (h, w) and their (y, x, radius)."""
        soft = np.zeros(self.shape, F32)
        if self.mitotic:
            return soft, []
        rng = self.rng
        n = int(rng.integers(2, 5))
        wy, wx = self.nwin
        din = self.d_nuc_in[self.nwin]
        sub = soft[self.nwin]
        yy = np.arange(wy.stop - wy.start, dtype=F32)[:, None]
        xx = np.arange(wx.stop - wx.start, dtype=F32)[None, :]
        blobs: list[tuple[float, float, float]] = []
        centres = []
        for _ in range(n):
            rr = max(0.8, self.rn * rng.uniform(0.12, 0.2))
            cand = din > max(1.0, 1.4 * rr)
            if not cand.any():
                cand = din >= din.max()
            ys, xs = _sample_pixels(rng, cand, 1)
            blobs.append((float(ys[0]) + wy.start, float(xs[0]) + wx.start, rr))
            off = rng.normal(0, 0.45 * rr, (3, 2))
            for (oy, ox), sub_r in zip(off, rr * rng.uniform(0.6, 0.9, 3)):
                centres.append((ys[0] + oy, xs[0] + ox, sub_r))
        cy, cx, cr = (np.asarray(v, F32)[:, None, None] for v in zip(*centres))
        d2 = ((yy[None] - cy) ** 2 + (xx[None] - cx) ** 2) / (cr * cr)
        sub[...] = np.exp(-(d2 * d2)).max(axis=0)
        soft[~self.nuc] = 0
        return soft, blobs

    @cached_property
    def golgi_angle(self) -> float:
        """Direction (radians) from the nucleus to the Golgi / centrosome side."""
        dy, dx = self.ccy - self.ncy, self.ccx - self.ncx
        if math.hypot(dy, dx) > 0.08 * self.rc:
            return math.atan2(dy, dx) + float(self.rng.normal(0, 0.4))
        return float(self.rng.uniform(-np.pi, np.pi))

    @cached_property
    def centrosome(self) -> tuple[float, float]:
        """Centrosome position (y, x) just outside the nucleus on the Golgi side."""
        near = self.cyto & (self.d_nuc_out <= max(2.0, 10 * self.s))
        if not near.any():
            near = self.cyto if self.cyto.any() else self.cell
        score = np.where(near, _angdiff(self.theta, self.golgi_angle), F32(99))
        i = int(np.argmin(score))
        return float(i // self.shape[1]), float(i % self.shape[1])

    # --- channel fields shared by several renderers -----------------------------------
    @cached_property
    def er(self) -> np.ndarray:
        """Endoplasmic reticulum: reticular, perinuclear, decaying to the edge; float32 (h, w).

        The envelope falls as ``exp(-u / er_decay)`` from the nucleus (``u`` = 0) to the cell edge
        (``u`` = 1), to a floor of ``0.3 x er_decay`` (0.12 at the standard 0.4).
        """
        net = self.bank.ridges(self.sl, self.px(2.2, 0.7))
        if self.mitotic:
            env = F32(0.55) * (F32(1) - F32(0.7) * np.minimum(self.spindle, F32(1)))
            cyto = env * (F32(0.25) + F32(0.75) * net)
            return np.where(self.cyto, cyto, F32(0)).astype(F32)
        floor = F32(0.3 * min(self.er_decay, 0.4))  # a fast fade also fades to less
        env = floor + (F32(1) - floor) * np.exp(-self.u / F32(self.er_decay))
        cyto = env * (F32(0.2) + F32(0.8) * net) * (F32(0.5) + F32(0.5) * self.thickness)
        w = self.px(2.5, 0.8)
        rim = np.exp(-(((self.d_nuc_in - 1) / F32(w)) ** 2)) * F32(0.3) + F32(0.03)
        return np.where(self.cyto, cyto, np.where(self.nuc, rim, F32(0))).astype(F32)

    @cached_property
    def microtubules(self) -> np.ndarray:
        """Microtubule network radiating from around the nucleus; float32 (h, w)."""
        if self.mitotic:
            return (self.spindle + F32(0.3) * np.where(self.cyto, F32(0.7), F32(0))).astype(F32)
        rng, s = self.rng, max(self.s, 0.1)
        n = int(np.clip(2 * np.pi * self.rc / (4.0 * s), 24, 400))
        phi = rng.uniform(-np.pi, np.pi, n)
        rad = self.rn * rng.uniform(0.3, 1.0, n)
        y0 = self.ncy + rad * np.sin(phi)
        x0 = self.ncx + rad * np.cos(phi)
        a0 = phi + rng.normal(0, 0.7, n)
        step = 0.8
        counts = _trace(
            rng,
            self.cell,
            y0,
            x0,
            a0,
            int(1.25 * self.far / step),
            step=step,
            curvature=0.003 / s,
            wiggle=0.0004 / s,
            weights=rng.uniform(0.3, 1.0, n),
        )
        fil = _saturate(counts, 2.0)
        cyto = fil * (F32(0.3) + F32(0.7) * self.thickness) + F32(0.3) * self.thickness
        return np.where(self.cyto, cyto, np.where(self.nuc, F32(0.15) * fil + F32(0.05), F32(0)))

    @cached_property
    def spindle(self) -> np.ndarray:
        """Bipolar mitotic spindle (zero for interphase cells); float32 (h, w)."""
        if not self.mitotic:
            return np.zeros(self.shape, F32)
        rng, g = self.rng, self.geom.nucleus
        a = g.angle
        plate_dir = np.array([math.sin(a), math.cos(a)])
        axis = np.array([math.cos(a), -math.sin(a)])
        half = g.radius * math.sqrt(g.aspect)
        centre = np.array([self.ncy, self.ncx])
        length = 0.95 * half
        counts = np.zeros(self.shape, F32)
        poles = []
        for sign in (-1.0, 1.0):
            pole = centre + sign * length * axis
            poles.append(pole)
            m = 70
            t = rng.uniform(-0.95, 0.95, m) * half
            back = rng.uniform(0, 0.12, m)[:, None] * length * axis
            target = centre + t[:, None] * plate_dir[None, :] - sign * back
            counts += _segments(self.cell, np.repeat(pole[None, :], m, 0), target)
            k = 14
            ang = math.atan2(sign * axis[0], sign * axis[1]) + rng.uniform(-1.3, 1.3, k)
            reach = (0.45 * length * rng.uniform(0.5, 1.0, k))[:, None]
            tips = pole[None, :] + reach * np.stack([np.sin(ang), np.cos(ang)], 1)
            counts += F32(0.5) * _segments(self.cell, np.repeat(pole[None, :], k, 0), tips)
        fib = _saturate(counts, 2.5)
        pts = np.asarray(poles)
        dots = _splat(self.shape, pts[:, 0], pts[:, 1], self.px(3.0))
        return np.where(self.cell, fib + dots, F32(0)).astype(F32)

    @cached_property
    def dna(self) -> np.ndarray:
        """DAPI signal: textured chromatin, dim nucleoli, bright rim; float32 (h, w)."""
        chrom = self.nuc_noise(5.0)
        fine = self.nuc_noise(1.5)
        if self.mitotic:
            v = F32(1.5) * (F32(0.8) + F32(0.12) * chrom + F32(0.1) * fine)
            return np.where(self.nuc, v, F32(0)).astype(F32)
        soft, _ = self.nucleoli
        rim = np.exp(-self.d_nuc_in / F32(self.px(4.0, 0.8)))
        v = F32(0.72) + F32(0.12) * chrom + F32(0.07) * fine
        v = v * (F32(1) - F32(0.5) * soft) + F32(0.1) * rim
        return np.where(self.nuc, np.maximum(v, F32(0.2)), F32(0)).astype(F32)
