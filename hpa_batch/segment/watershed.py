"""Built-in seeded watershed backend (CPU, offline, no weights).

Nuclei come from the blue channel (smoothed, Otsu threshold, holes filled, touching nuclei split by a
distance-transform watershed); cell bodies from the reference channels (microtubules, ER and, if asked,
protein): their smoothed, normalised sum is thresholded into a foreground and flooded from the nuclei
as markers. Size parameters are given in full-resolution pixels and converted with ``scale`` (the
working level's downsampling factor), so the same config works at any pyramid level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label as cc_label
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from hpa_batch import CHANNELS
from hpa_batch.segment import register_backend


def _normalise(channel: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Float32 channel scaled so its ``percentile`` maps to 1 (background offset removed)."""
    ch = channel.astype(np.float32)
    lo = float(np.percentile(ch, 1.0))
    hi = float(np.percentile(ch, percentile))
    return (ch - lo) / max(hi - lo, 1e-6)


@register_backend("watershed")
@dataclass
class WatershedSegmenter:
    """Seeded watershed segmentation.

    Parameters
    ----------
    nucleus_sigma, cell_sigma : float
        Gaussian smoothing (full-resolution px) before thresholding nuclei / cell bodies.
    min_nucleus_area : float
        Smaller nuclei are dropped (full-resolution px^2).
    nucleus_min_distance : float
        Minimum distance (full-resolution px) between nucleus centres when splitting touching nuclei.
    cell_threshold : float
        Foreground threshold of the cell-body signal, as a fraction of its Otsu threshold.
    cell_channels : tuple of str
        Channels summed for the cell-body signal.
    compactness : float
        Compact-watershed parameter for the cell flooding (0 = classic watershed).
    """

    nucleus_sigma: float = 4.0
    cell_sigma: float = 6.0
    min_nucleus_area: float = 1500.0
    nucleus_min_distance: float = 40.0
    cell_threshold: float = 0.5
    cell_channels: tuple[str, ...] = ("red", "yellow", "green")
    compactness: float = 0.0
    name: str = "watershed"

    def nuclei(self, blue: np.ndarray, scale: float) -> np.ndarray:
        """Nucleus labels from the blue channel: ``(h, w)`` float -> ``(h, w)`` int32."""
        smooth = gaussian(blue, sigma=max(self.nucleus_sigma / scale, 0.5))
        mask = smooth > threshold_otsu(smooth)
        mask = ndi.binary_fill_holes(mask)
        min_area = max(int(self.min_nucleus_area / scale**2), 4)
        mask = drop_small(mask, min_area)
        if not mask.any():
            return np.zeros(blue.shape, np.int32)
        dist = ndi.distance_transform_edt(mask)
        dist = gaussian(dist, sigma=max(2.0 / scale, 0.5))
        min_dist = max(int(self.nucleus_min_distance / scale), 2)
        peaks = peak_local_max(dist, min_distance=min_dist, labels=cc_label(mask), exclude_border=False)
        markers = np.zeros(blue.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        nuclei = watershed(-dist, markers, mask=mask)
        nuclei = drop_small(nuclei, min_area // 4)
        return relabel_sequential(nuclei)[0].astype(np.int32)

    def cell_signal(self, image: np.ndarray, scale: float) -> np.ndarray:
        """Smoothed, normalised sum of the cell-body channels: ``(h, w)`` float32."""
        idx = [CHANNELS.index(c) for c in self.cell_channels]
        total = sum(_normalise(image[i]) for i in idx) / len(idx)
        return gaussian(total, sigma=max(self.cell_sigma / scale, 0.5)).astype(np.float32)

    def segment(self, image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`hpa_batch.segment.Segmenter`."""
        nuclei = self.nuclei(_normalise(image[CHANNELS.index("blue")]), scale)
        if nuclei.max() == 0:
            return nuclei, nuclei.copy()
        signal = self.cell_signal(image, scale)
        foreground = signal > self.cell_threshold * threshold_otsu(signal)
        foreground = ndi.binary_fill_holes(foreground | (nuclei > 0))
        cells = watershed(-signal, nuclei, mask=foreground, compactness=self.compactness)
        return consistent_labels(cells.astype(np.int32), nuclei)


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects with fewer than ``min_area`` pixels (bool mask or label image)."""
    try:  # scikit-image >= 0.26 names the bound max_size (objects <= max_size are removed)
        return remove_small_objects(labels, max_size=max(min_area - 1, 0))
    except TypeError:
        return remove_small_objects(labels, min_size=min_area)


def consistent_labels(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make ids consistent: keep each nucleus only inside its own cell, drop cells without a nucleus,
    renumber both to ``1..n``.

    Parameters
    ----------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` integer label images where cell ``k`` was grown from nucleus ``k``.

    Returns
    -------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int32, ids ``1..n`` shared.
    """
    nuclei = np.where(cells == nuclei, nuclei, 0)
    keep = np.unique(nuclei[nuclei > 0])
    lut = np.zeros(max(int(cells.max()), int(nuclei.max())) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[cells], lut[nuclei]
