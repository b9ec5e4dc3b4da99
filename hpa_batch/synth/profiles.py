"""Cell line morphology profiles (:class:`CellLineProfile`)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from hpa_batch.synth.common import REFERENCE_SIZE

# --------------------------------------------------------------------------------------
# Cell line profiles
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellLineProfile:
    """Morphology of one cell line.

    Attributes
    ----------
    name : str
        Cell line name.
    radius : float
        Mean equal-area cell radius in px at a 2048 px image.
    aspect : float
        Mean ratio of long to short cell axis (>= 1).
    irregularity : float
        Amplitude of the low-order Fourier terms of the cell outline.
    spikiness : float
        Relative length of tapered processes at both ends of the long axis.
    nucleus_ratio : float
        Nucleus radius / cell radius.
    coverage : float
        Fraction of the image covered by cells; sets the number of cells.
    clustering : float
        0 = cells scattered, 1 = cells grow in tight islands.
    alignment : float
        Probability that a cell follows the image-wide orientation.
    mitotic_rate : float
        Probability that a cell is in mitosis.
    nucleus_offset : float
        How far off the cell centre a nucleus may sit, as a fraction of the room it has there
        (0 = centred, 1 = touching the cell edge); drawn uniformly up to this, per axis.
    large_fraction : float
        Share of cells that are big and flat (radius 1.8-2.6x, a proportionally small nucleus, dim
        and even cytoplasm) among the others in the same field.
    binucleate_rate : float
        Probability that an interphase cell has two nuclei side by side (one cell).
    """

    name: str
    radius: float
    aspect: float
    irregularity: float
    spikiness: float
    nucleus_ratio: float
    coverage: float
    clustering: float
    alignment: float
    mitotic_rate: float = 0.02
    nucleus_offset: float = 0.7
    large_fraction: float = 0.0
    binucleate_rate: float = 0.0


def _profile(name: str, *values: float) -> CellLineProfile:
    """Positional shorthand for :class:`CellLineProfile` (table below)."""
    return CellLineProfile(name, *values)


# name, radius, aspect, irregularity, spikiness, nucleus_ratio, coverage, clustering,
# alignment, mitotic_rate
_PROFILES: dict[str, CellLineProfile] = {
    p.name: p
    for p in (
        _profile("U-2 OS", 190, 1.45, 0.17, 0.10, 0.33, 0.42, 0.15, 0.2, 0.02),
        _profile("A-431", 140, 1.08, 0.05, 0.00, 0.48, 0.40, 0.85, 0.0, 0.03),
        _profile("U-251 MG", 150, 2.40, 0.12, 0.45, 0.34, 0.38, 0.25, 0.6, 0.02),
        _profile("HeLa", 145, 1.30, 0.12, 0.05, 0.40, 0.40, 0.35, 0.1, 0.03),
        _profile("A549", 140, 1.25, 0.10, 0.03, 0.50, 0.38, 0.45, 0.1, 0.02),
        _profile("MCF7", 135, 1.15, 0.08, 0.00, 0.50, 0.36, 0.75, 0.0, 0.02),
        _profile("RT4", 130, 1.10, 0.06, 0.00, 0.48, 0.34, 0.85, 0.0, 0.02),
        _profile("SH-SY5Y", 115, 1.60, 0.20, 0.60, 0.56, 0.28, 0.60, 0.3, 0.02),
        _profile("HEK 293", 125, 1.20, 0.12, 0.10, 0.55, 0.32, 0.60, 0.1, 0.03),
        _profile("CACO-2", 135, 1.10, 0.06, 0.00, 0.45, 0.38, 0.90, 0.0, 0.02),
        _profile("PC-3", 150, 1.30, 0.20, 0.15, 0.40, 0.40, 0.25, 0.1, 0.02),
        _profile("Hep G2", 130, 1.15, 0.08, 0.00, 0.50, 0.36, 0.85, 0.0, 0.02),
    )
}

#: Real HPA cell line names with built-in morphology profiles.
DEFAULT_CELL_LINES: tuple[str, ...] = tuple(_PROFILES)


def cell_line_profile(name: str) -> CellLineProfile:
    """Morphology profile of a cell line.

    Parameters
    ----------
    name : str
        Cell line name.  Known names return the built-in profile; any other name gets
        a profile drawn deterministically from a SHA-256 hash of the name.

    Returns
    -------
    CellLineProfile
    """
    if name in _PROFILES:
        return _PROFILES[name]
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    r = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    radius = float(r.uniform(120, 190))
    n_cells = float(r.uniform(12, 28))
    return CellLineProfile(
        name=name,
        radius=radius,
        aspect=float(r.uniform(1.05, 2.2)),
        irregularity=float(r.uniform(0.04, 0.2)),
        spikiness=float(r.choice([0.0, 0.0, r.uniform(0.1, 0.5)])),
        nucleus_ratio=float(r.uniform(0.32, 0.55)),
        coverage=n_cells * math.pi * radius**2 / REFERENCE_SIZE**2,
        clustering=float(r.uniform(0.1, 0.9)),
        alignment=float(r.uniform(0.0, 0.5)),
        mitotic_rate=0.02,
    )
