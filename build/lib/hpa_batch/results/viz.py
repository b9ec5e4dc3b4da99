"""Pictures of stored images: RGB composites with cell and nucleus outlines (for docs and reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from PIL import Image
from skimage.segmentation import find_boundaries

from hpa_batch import CHANNELS
from hpa_batch.core.ngff import label_level, level_name

F32 = np.float32


def _stretch(a: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.9) -> np.ndarray:
    """Percentile stretch to [0, 1] (float32) with a minimum range of 3% of the dtype range.

    The floor keeps noise-only channels (Negative images) dark instead of stretching
    the noise to full brightness.
    """
    lo, hi = np.percentile(a, [lo_pct, hi_pct])
    full = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    hi = max(float(hi), float(lo) + 0.03 * full)
    return np.clip((a.astype(F32) - F32(lo)) / F32(hi - lo), 0, 1)


def composite(channels: np.ndarray) -> np.ndarray:
    """HPA-style RGB composite of a (4, h, w) stack in canonical order.

    Each channel is percentile-stretched (1 - 99.9 %, see :func:`_stretch`); yellow is
    added to red and green.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3)
    """
    r, g, b, y = (_stretch(channels[CHANNELS.index(c)]) for c in ("red", "green", "blue", "yellow"))
    rgb = np.stack([r + F32(0.8) * y, g + F32(0.8) * y, b], axis=-1)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(channels: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None = None) -> np.ndarray:
    """RGB composite with cell outlines (white) and nucleus outlines (cyan).

    Parameters
    ----------
    channels : numpy.ndarray
        ``(4, h, w)`` intensities, canonical channel order.
    cells, nuclei : numpy.ndarray
        ``(h, w)`` integer labels.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8.
    """
    rgb = composite(channels)
    rgb[find_boundaries(cells, mode="inner")] = (255, 255, 255)
    if nuclei is not None:
        rgb[find_boundaries(nuclei, mode="inner")] = (0, 255, 255)
    return rgb


def store_overlay(image_path: str | Path, level: int = 1) -> np.ndarray:
    """Overlay of a stored, segmented image at pyramid ``level`` (``(h, w, 3)`` uint8)."""
    group = zarr.open_group(image_path, mode="r", zarr_format=3)
    return overlay(
        group[level_name(level)][...],
        group[label_level("cells", level)][...],
        group[label_level("nuclei", level)][...],
    )


def save_png(rgb: np.ndarray, path: str | Path, size: int | None = None) -> Path:
    """Save ``(h, w, 3)`` uint8 as PNG, optionally resized to ``size`` px on the longer side."""
    img = Image.fromarray(rgb)
    if size is not None and max(img.size) != size:
        scale = size / max(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.LANCZOS)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
