"""Cell segmentation backends, chosen by name through a registry (as timm chooses models).

A backend turns one image at a working pyramid level into two label images with consistent ids:
``cells`` and ``nuclei`` (nucleus ``k`` lies inside cell ``k``; 0 is background).

>>> import numpy as np
>>> seg = create_segmenter("watershed")
>>> image = np.zeros((4, 64, 64), np.uint16)  # (4, h, w) uint16 at the working level; here: empty
>>> cells, nuclei = seg.segment(image, scale=1)
>>> cells.shape, int(cells.max())
((64, 64), 0)
"""

from __future__ import annotations

from typing import Any, Protocol

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


def list_backends() -> list[str]:
    """Names of all registered backends."""
    _load_builtin()
    return BACKENDS.names()


def create_segmenter(name: str, **kwargs: Any) -> Segmenter:
    """Instantiate the backend registered under ``name`` with its keyword options.

    Raises
    ------
    ValueError
        Unknown backend name (the message lists the known ones).
    BackendUnavailable
        The backend's package or weights are missing.
    """
    _load_builtin()
    return BACKENDS.create(name, **kwargs)


def _load_builtin() -> None:
    # importing the modules runs their @register_backend decorators
    from hpa_batch.cells.segment import adapters, watershed  # noqa: F401
