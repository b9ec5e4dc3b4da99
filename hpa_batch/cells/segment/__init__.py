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

from typing import Any

from hpa_batch.cells.segment.backends import BACKENDS, BackendUnavailable, Segmenter, register_backend

__all__ = ["BACKENDS", "BackendUnavailable", "Segmenter", "create_segmenter", "list_backends", "register_backend"]


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
