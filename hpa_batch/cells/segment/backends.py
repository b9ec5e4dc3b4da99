"""The segmentation backend registry and the protocol every backend follows (imported by the backends
and by :mod:`hpa_batch.cells.segment`, which adds the built-in ones on first use)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hpa_batch.core.registry import Registry


class Segmenter(Protocol):
    """What every backend provides."""

    name: str

    @property
    def image_partitioned(self) -> bool:
        """True only for a backend whose cells are the QC's image-driven reference partition (the
        built-in ``watershed`` with ``boundary: edges``): comparing them with it would say nothing."""
        ...

    def segment(self, image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Segment one image.

        Parameters
        ----------
        image : numpy.ndarray
            ``(4, h, w)`` uint16 in canonical channel order (red, green, blue, yellow), at the
            working pyramid level.
        scale : float
            Downsampling factor of that level relative to full resolution (1, 2, 4, ...); backends
            convert their full-resolution size parameters with it.

        Returns
        -------
        cells, nuclei : numpy.ndarray
            ``(h, w)`` int32 label images; ids ``1..n`` in both, nucleus ``k`` inside cell ``k``.
        """
        ...


class BackendUnavailable(RuntimeError):
    """A backend whose package or local weights are missing (never downloaded)."""


BACKENDS: Registry[Segmenter] = Registry("segmentation backend")
register_backend = BACKENDS.register
