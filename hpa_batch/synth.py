"""Synthetic Human Protein Atlas (HPA) immunofluorescence dataset generator.

The generator draws a field of cells, renders the four HPA stains and passes them
through a simple camera model, so that the rest of the pipeline (segmentation,
per-cell crops, weak-label classification) can be tested without downloading HPA data.

What one image contains
-----------------------
* **Geometry** - cells are smooth random blobs (radius modulated by low-order Fourier
  terms, stretched to the cell line's elongation, optional tapered processes) placed
  by dart throwing with optional clustering.  Overlaps are resolved per pixel by the
  smallest shape-normalised distance, and nuclei have priority over cytoplasm, so
  every pixel belongs to at most one cell and nucleus ``k`` always lies inside cell
  ``k``.  Cell size is proportional to the image size (reference 2048 px), so the
  number of cells per image depends on the cell line, not on the image size.
* **Cell line morphology** - :class:`CellLineProfile` (radius, elongation,
  irregularity, processes, nucleus/cell ratio, coverage, clustering, alignment,
  mitotic rate).  Unknown cell line names get a profile derived from a hash of the
  name.
* **Stains** - blue: textured DAPI nuclei with dim nucleoli; red: microtubules traced
  from the nucleus outwards (spindles in mitotic cells); yellow: reticular ER that
  decays from the nucleus to the cell edge; green: the sum of the cell's localisation
  patterns, one renderer per HPA 2021 class in :data:`PATTERN_RENDERERS`, times a per
  cell expression level (about 5x range between cells).
* **Camera** - Gaussian PSF, out-of-focus haze, vignetting, smooth background,
  ``ADU = offset + gain * photons + read noise`` with shot noise, clipped to uint16.
  Shot noise uses the normal approximation ``N(lambda, lambda)`` of the Poisson
  distribution (exact Poisson sampling costs about 1.5 s per 2048 px image); it is
  accurate for the photon counts of cells and close enough for the background, where
  the read noise dominates.

Labels
------
Every image gets 1-3 patterns drawn with HPA-like imbalance (or, for catalogs with a
Negative class, a Negative-only image with probability 5%).  Every cell gets a
non-empty subset of them, or is negative (probability 0.15).  The mitotic spindle is
only given to mitotic cells, nuclear patterns only to interphase cells.  The image
labels are exactly the union of the cell labels.  For ``hpa2018`` the same renderers
are mapped to that catalog by class name; negative cells there have no label.

On disk (:func:`synthesize_dataset`)
------------------------------------
``images/{ID}_{red,green,blue,yellow}.{png,tif,jpg}``, ``train.csv``
(``ID,Label,Cell_line``), ``truth/{ID}_cells.tif``, ``truth/{ID}_nuclei.tif``,
``truth/cells.csv`` and ``truth/README.txt``.  PNG and TIFF are 16-bit; JPEG is
8-bit with ``u8 = min(adu >> 7, 255)`` (ADU / 128, saturating at 32640 ADU).
"""

from __future__ import annotations

import csv
import hashlib
import math
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache, cached_property, lru_cache
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from scipy import ndimage as ndi

from hpa_batch import CHANNELS
from hpa_batch.core.labels import LabelCatalog, format_labels, get_catalog
from hpa_batch.results.viz import composite

__all__ = [
    "DEFAULT_CELL_LINES",
    "PATTERN_RENDERERS",
    "STYLES",
    "CellLineProfile",
    "SynthImage",
    "SynthStyle",
    "SynthSummary",
    "cell_line_profile",
    "contact_sheet",
    "draw_style",
    "get_style",
    "parse_styles",
    "synthesize_dataset",
    "synthesize_image",
]

#: Image size (px) at which all lengths in this module are specified.
REFERENCE_SIZE = 2048
#: Image formats :func:`synthesize_dataset` can write.
FORMATS = ("png", "tif", "jpg")
#: Probability that an image of a catalog with a Negative class is Negative only.
NEGATIVE_IMAGE_P = 0.05
#: Probability that a cell of a positive image is negative.
NEGATIVE_CELL_P = 0.15
#: Probability that a pattern of the image is present in a (positive) cell.
CELL_PATTERN_P = 0.75
#: Images up to this size draw texture noise once per image instead of per cell.
GLOBAL_TEXTURE_MAX = 768

F32 = np.float32


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


# --------------------------------------------------------------------------------------
# Image styles (what real HPA images vary beyond the cell line)
# --------------------------------------------------------------------------------------

Range = tuple[float, float]

#: Patterns whose green signal is a few compact dots or blobs (bright dots on black).
DOT_PATTERNS: frozenset[str] = frozenset(
    {
        "Nucleoli",
        "Nucleoli fibrillar center",
        "Nuclear speckles",
        "Nuclear bodies",
        "Golgi apparatus",
        "Centrosome",
        "Aggresome",
        "Vesicles and punctate cytosolic patterns",
    }
)
#: Patterns whose green signal fills a compartment.
DIFFUSE_PATTERNS: frozenset[str] = frozenset(
    {
        "Nucleoplasm",
        "Cytosol",
        "Endoplasmic reticulum",
        "Plasma membrane",
        "Mitochondria",
        "Intermediate filaments",
        "Actin filaments",
        "Microtubules",
    }
)


@dataclass(frozen=True)
class SynthStyle:
    """Ranges of the image properties a style draws per image (deterministic per image seed).

    A range ``(a, a)`` draws nothing (the ``standard`` style draws nothing at all, so its images are
    those of the cell-line profiles alone). Scale-type ranges are drawn log-uniformly, others uniformly.

    Attributes
    ----------
    name : str
        Style name (recorded per image in ``truth/images.csv``).
    radius : tuple of float, optional
        Equal-area cell radius in px at 2048 (replaces the profile's): 40 px ~ 5,000 px^2,
        218 px ~ 150,000 px^2 at full resolution.
    coverage, clustering : tuple of float, optional
        Replace the profile's coverage (sum of cell areas / image) and clustering.
    aspect_scale : tuple of float
        Multiplies the profile's elongation (``> 1`` = longer cells).
    nucleus_area_ratio : tuple of float, optional
        Nucleus area / cell area (replaces the profile's nucleus radius ratio).
    mitotic_rate : tuple of float, optional
        Probability that a cell is mitotic (round, bright condensed chromatin).
    patterns : tuple of str
        Pattern families drawn from (one per image): ``any``, ``dots`` (:data:`DOT_PATTERNS`),
        ``diffuse`` (:data:`DIFFUSE_PATTERNS`).
    green_scale, green_af_scale : tuple of float
        Multiply the protein expression level and the green autofluorescence.
    green_background : tuple of float
        Extra green background, as a fraction of the protein expression level (dim on high background).
    background_scale : tuple of float
        Multiplies the smooth background of every channel.
    reference_scale : tuple of float
        Multiplies the brightness of the microtubule and ER channels.
    brightness : tuple of float
        Multiplies every stain (values > 2 saturate bright structures at 65535).
    vignette : tuple of float
        Relative intensity loss at the image corners (standard: 0.08-0.2).
    gradient : tuple of float
        Amplitude of a linear illumination ramp across the image (random direction).
    """

    name: str
    radius: Range | None = None
    coverage: Range | None = None
    clustering: Range | None = None
    aspect_scale: Range = (1.0, 1.0)
    nucleus_area_ratio: Range | None = None
    mitotic_rate: Range | None = None
    patterns: tuple[str, ...] = ("any",)
    green_scale: Range = (1.0, 1.0)
    green_af_scale: Range = (1.0, 1.0)
    green_background: Range = (0.0, 0.0)
    background_scale: Range = (1.0, 1.0)
    reference_scale: Range = (1.0, 1.0)
    brightness: Range = (1.0, 1.0)
    vignette: Range = (0.08, 0.2)
    gradient: Range = (0.0, 0.0)


#: Built-in styles; ``vary`` draws every axis over its whole range independently.
STYLES: dict[str, SynthStyle] = {
    s.name: s
    for s in (
        SynthStyle("standard"),
        SynthStyle("dots", patterns=("dots",), green_scale=(4.0, 20.0), green_af_scale=(0.0, 0.2)),
        SynthStyle(
            "dim",
            green_scale=(0.04, 0.15),
            green_background=(0.5, 2.0),
            background_scale=(3.0, 8.0),
            reference_scale=(0.35, 0.7),
        ),
        SynthStyle("crowded", coverage=(0.6, 0.9), clustering=(0.7, 1.0), aspect_scale=(1.2, 1.7)),
        SynthStyle("large", radius=(170.0, 215.0), coverage=(0.35, 0.6)),
        SynthStyle("small", radius=(40.0, 75.0), coverage=(0.25, 0.5)),
        SynthStyle("nuclear-ratio", nucleus_area_ratio=(0.05, 0.5)),
        SynthStyle("uneven", background_scale=(2.0, 6.0), vignette=(0.3, 0.6), gradient=(0.25, 0.6)),
        SynthStyle("saturated", brightness=(3.5, 8.0), green_scale=(1.5, 4.0)),
        SynthStyle("mitotic", mitotic_rate=(0.12, 0.25)),
        SynthStyle(
            "vary",
            radius=(40.0, 215.0),
            coverage=(0.2, 0.85),
            clustering=(0.0, 1.0),
            aspect_scale=(0.8, 1.6),
            nucleus_area_ratio=(0.05, 0.5),
            mitotic_rate=(0.01, 0.2),
            patterns=("any", "dots", "diffuse"),
            green_scale=(0.05, 20.0),
            green_af_scale=(0.05, 2.0),
            green_background=(0.0, 1.0),
            background_scale=(0.5, 6.0),
            reference_scale=(0.35, 1.5),
            brightness=(0.7, 4.0),
            vignette=(0.05, 0.5),
            gradient=(0.0, 0.5),
        ),
    )
}
#: ``--style all`` = every built-in style but ``standard``.
ALL_STYLES: tuple[str, ...] = tuple(n for n in STYLES if n != "standard")


@dataclass(frozen=True)
class StyleDraw:
    """The concrete values one image drew from its :class:`SynthStyle` (see there)."""

    style: str
    profile: CellLineProfile
    patterns: str
    green_scale: float
    green_af_scale: float
    green_background: float
    background_scale: float
    reference_scale: float
    brightness: float
    vignette: Range
    gradient: Range

    def record(self) -> dict[str, object]:
        """The drawn values as flat columns (``truth/images.csv``)."""
        p = self.profile
        return {
            "style": self.style,
            "radius": round(p.radius, 1),
            "nucleus_area_ratio": round(p.nucleus_ratio**2, 3),
            "coverage": round(p.coverage, 3),
            "aspect": round(p.aspect, 2),
            "mitotic_rate": round(p.mitotic_rate, 3),
            "patterns": self.patterns,
            "green_scale": round(self.green_scale, 3),
            "green_background": round(self.green_background, 3),
            "background_scale": round(self.background_scale, 2),
            "reference_scale": round(self.reference_scale, 2),
            "brightness": round(self.brightness, 2),
            "gradient": round(self.gradient[0], 3),
        }


def get_style(style: str | SynthStyle) -> SynthStyle:
    """A built-in style by name (or the style itself).

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    if isinstance(style, SynthStyle):
        return style
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; known: {', '.join(STYLES)}")
    return STYLES[style]


def parse_styles(text: str) -> tuple[str, ...]:
    """``"dots,dim"`` / ``"all"`` -> style names, each checked."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    out: list[str] = []
    for name in names:
        out.extend(ALL_STYLES if name == "all" else [get_style(name).name])
    if not out:
        raise ValueError("no style given")
    return tuple(out)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    lo, hi = bounds
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, bounds: Range) -> float:
    lo, hi = bounds
    if lo == hi:
        return float(lo)
    if lo <= 0:
        return float(rng.uniform(lo, hi))
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_style(rng: np.random.Generator, style: SynthStyle, profile: CellLineProfile) -> StyleDraw:
    """Draw one image's values of ``style`` on top of the cell line's ``profile``."""
    changes: dict[str, float] = {}
    if style.radius is not None:
        changes["radius"] = _log_uniform(rng, style.radius)
    if style.coverage is not None:
        changes["coverage"] = _uniform(rng, style.coverage)
    if style.clustering is not None:
        changes["clustering"] = _uniform(rng, style.clustering)
    if style.aspect_scale != (1.0, 1.0):
        changes["aspect"] = max(1.0, profile.aspect * _log_uniform(rng, style.aspect_scale))
    if style.nucleus_area_ratio is not None:
        changes["nucleus_ratio"] = math.sqrt(_log_uniform(rng, style.nucleus_area_ratio))
    if style.mitotic_rate is not None:
        changes["mitotic_rate"] = _uniform(rng, style.mitotic_rate)
    patterns = style.patterns[int(rng.integers(len(style.patterns)))] if len(style.patterns) > 1 else style.patterns[0]
    # vignette / gradient stay ranges for the camera (the standard draws happen there, in order)
    return StyleDraw(
        style=style.name,
        profile=replace(profile, **changes),
        patterns=patterns,
        green_scale=_log_uniform(rng, style.green_scale),
        green_af_scale=_uniform(rng, style.green_af_scale),
        green_background=_uniform(rng, style.green_background),
        background_scale=_log_uniform(rng, style.background_scale),
        reference_scale=_log_uniform(rng, style.reference_scale),
        brightness=_log_uniform(rng, style.brightness),
        vignette=style.vignette,
        gradient=(_uniform(rng, style.gradient), 0.0),
    )


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------

# 2021 class name -> (relative frequency, compartment, allowed in mitotic cells)
_PATTERN_INFO: dict[str, tuple[float, str, bool]] = {
    "Nucleoplasm": (30.0, "nucleus", False),
    "Nuclear membrane": (3.0, "nucleus", False),
    "Nucleoli": (8.0, "nucleus", False),
    "Nucleoli fibrillar center": (3.0, "nucleus", False),
    "Nuclear speckles": (5.0, "nucleus", False),
    "Nuclear bodies": (5.0, "nucleus", False),
    "Endoplasmic reticulum": (4.0, "cytoplasm", True),
    "Golgi apparatus": (6.0, "cytoplasm", False),
    "Intermediate filaments": (3.0, "cytoplasm", False),
    "Actin filaments": (2.5, "cytoplasm", True),
    "Microtubules": (3.0, "cytoplasm", False),
    "Mitotic spindle": (0.6, "mitotic", True),
    "Centrosome": (3.0, "cytoplasm", False),
    "Plasma membrane": (8.0, "cytoplasm", True),
    "Mitochondria": (7.0, "cytoplasm", True),
    "Aggresome": (1.0, "cytoplasm", False),
    "Cytosol": (20.0, "cytoplasm", True),
    "Vesicles and punctate cytosolic patterns": (6.0, "cytoplasm", True),
}


@dataclass(frozen=True)
class _Pattern:
    """A renderable class of a catalog."""

    class_id: int
    name: str  # 2021 class name = key of PATTERN_RENDERERS
    weight: float
    mitotic_only: bool
    mitotic_ok: bool

    def allowed(self, mitotic: bool) -> bool:
        """Whether the pattern may be drawn on a (non-)mitotic cell."""
        return self.mitotic_ok if mitotic else not self.mitotic_only


@cache
def _pattern_space(catalog: LabelCatalog) -> tuple[_Pattern, ...]:
    """Renderable classes of ``catalog``, matched to the renderers by class name."""
    out: list[_Pattern] = []
    for name, (weight, compartment, mitotic_ok) in _PATTERN_INFO.items():
        try:
            cid = catalog.index(name)
        except KeyError:
            continue
        out.append(_Pattern(cid, name, weight, compartment == "mitotic", mitotic_ok))
    if not out:
        raise ValueError(f"catalog {catalog.name} has no class with a pattern renderer")
    return tuple(out)


def _draw_image_patterns(
    rng: np.random.Generator, catalog: LabelCatalog, forced: Sequence[str] | None, family: str = "any"
) -> list[_Pattern]:
    """Image-level patterns: [] means a Negative-only image; ``family`` restricts the draw."""
    space = _pattern_space(catalog)
    if forced is not None:
        if not forced and catalog.negative is None:
            raise ValueError(f"catalog {catalog.name} has no Negative class; give at least one pattern")
        by_name = {p.name.lower(): p for p in space}
        try:
            return [by_name[n.lower()] for n in forced]
        except KeyError as exc:
            raise ValueError(f"pattern {exc.args[0]!r} not renderable in {catalog.name}") from None
    if family != "any":
        names = DOT_PATTERNS if family == "dots" else DIFFUSE_PATTERNS
        space = tuple(p for p in space if p.name in names) or space
    elif catalog.negative is not None and rng.random() < NEGATIVE_IMAGE_P:
        return []
    k = min(int(rng.choice([1, 2, 3], p=[0.55, 0.33, 0.12])), len(space))
    w = np.array([p.weight for p in space])
    idx = rng.choice(len(space), size=k, replace=False, p=w / w.sum())
    return [space[i] for i in sorted(idx)]


def _assign_cell_patterns(
    rng: np.random.Generator,
    mitotic: Sequence[bool],
    image_patterns: list[_Pattern],
    catalog: LabelCatalog,
) -> list[list[_Pattern]]:
    """Per-cell pattern lists whose union is the image's (fixed up if needed)."""
    n = len(mitotic)
    cells: list[list[_Pattern]] = [[] for _ in range(n)]
    if not image_patterns:
        return cells
    has_spindle = any(p.mitotic_only for p in image_patterns)
    for i in range(n):
        eligible = [p for p in image_patterns if p.allowed(mitotic[i])]
        forced_spindle = mitotic[i] and has_spindle
        if not forced_spindle and rng.random() < NEGATIVE_CELL_P:
            continue
        chosen = [p for p in eligible if p.mitotic_only or rng.random() < CELL_PATTERN_P]
        if not chosen and eligible:
            chosen = [eligible[int(rng.integers(len(eligible)))]]
        cells[i] = chosen
    # Fix up: every image pattern must be on at least one cell.
    for p in image_patterns:
        if any(p in c for c in cells):
            continue
        eligible = [i for i in range(n) if p.allowed(mitotic[i])]
        if not eligible:
            continue
        positive = [i for i in eligible if cells[i]]
        pool = positive or eligible
        i = pool[int(rng.integers(len(pool)))]
        cells[i] = sorted([*cells[i], p], key=lambda q: q.class_id)
    # The union must not be empty for a positive image (e.g. spindle without mitosis).
    if not any(cells) and n:
        space = _pattern_space(catalog)
        i = next((j for j in range(n) if not mitotic[j]), 0)
        options = [p for p in space if p.allowed(mitotic[i])]
        cells[i] = [max(options, key=lambda q: q.weight)]
    return cells


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
    """Cell body, nucleus and mitotic state of one cell."""

    body: _Shape
    nucleus: _Shape
    mitotic: bool


def _harmonics(rng: np.random.Generator, amp: float, ks: Sequence[int], decay: float = 0.8) -> np.ndarray:
    """(K, 3) rows of (k, amplitude, phase); amplitudes ~ N(0, amp / k**decay)."""
    ks_arr = np.asarray(ks, dtype=float)
    a = rng.normal(0.0, 1.0, ks_arr.size) * amp / ks_arr**decay
    p = rng.uniform(0, 2 * np.pi, ks_arr.size)
    return np.stack([ks_arr, a, p], axis=1)


def _place_centres(
    rng: np.random.Generator, size: int, radius: float, n: int, clustering: float
) -> list[tuple[float, float, float]]:
    """Dart throwing with clustering; returns (cy, cx, r) per cell.

    Clustered cell lines place new cells next to existing ones and pack them more
    tightly (the overlap is resolved when rasterising).
    """
    min_sep = 0.8 - 0.2 * clustering
    pts: list[tuple[float, float, float]] = []
    arr = np.zeros((0, 3))
    tries = 0
    while len(pts) < n and tries < 60 * n:
        tries += 1
        r = radius * float(np.exp(rng.normal(0.0, 0.15)))
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
) -> _CellGeom:
    """Random body and nucleus shapes for one cell."""
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
    n_aspect = 1.0 + (aspect - 1.0) * 0.35 + abs(rng.normal(0, 0.12))
    n_harm = _harmonics(rng, 0.05, range(2, 5))
    n_amp = 1.0 + float(np.abs(n_harm[:, 1]).sum())
    sa, sn = math.sqrt(aspect), math.sqrt(n_aspect)
    room_long = max(0.0, 0.85 * r * sa * (1 - amp) - rn * sn * n_amp)
    room_short = max(0.0, 0.85 * r / sa * (1 - amp) - rn * n_amp)
    ol = room_long * rng.uniform(-0.7, 0.7)
    os_ = room_short * rng.uniform(-0.7, 0.7)
    c, s = math.cos(angle), math.sin(angle)
    ny, nx = cy + ol * s + os_ * c, cx + ol * c - os_ * s
    nucleus = _Shape(ny, nx, rn, n_aspect, angle + rng.normal(0, 0.3), n_harm)
    return _CellGeom(body, nucleus, False)


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
        nsl = _bbox(g.nucleus, size)
        if nsl is not None:
            wy = _local_window(nsl[0], sl[0])
            wx = _local_window(nsl[1], sl[1])
            if wy.start < wy.stop and wx.start < wx.stop:
                dn = g.nucleus.distance(ys[wy] - F32(g.nucleus.cy), xs[:, wx] - F32(g.nucleus.cx))
                nuc[wy, wx] = (dn < 1) & (score[wy, wx] < 0.92)
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
        n_target = int(np.clip(round(n_target * rng.uniform(0.8, 1.2)), 3, 600))
        pts = _place_centres(rng, size, radius, n_target, profile.clustering)
        mitotic = [bool(rng.random() < profile.mitotic_rate) for _ in pts]
        inner = [i for i, (cy, cx, r) in enumerate(pts) if min(cy, cx, size - cy, size - cx) > r]
        pool = inner or list(range(len(pts)))
        if n_forced_mitotic and pool:
            chosen = rng.choice(pool, size=min(n_forced_mitotic, len(pool)), replace=False)
            for i in chosen:
                mitotic[int(i)] = True
        orientation = rng.uniform(0, np.pi)
        geoms = [_cell_geom(rng, cy, cx, r, profile, orientation, m) for (cy, cx, r), m in zip(pts, mitotic)]
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
    ) -> None:
        self.rng = rng
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
        """Relative cytoplasm thickness: 1 near the nucleus, ~0.1 at the cell edge, 0 outside."""
        v = F32(1) - self.u
        edge = F32(1) - np.exp(-self.d_edge / F32(self.px(7.0, 0.8)))
        t = (F32(0.25) + F32(0.75) * v * np.sqrt(v)) * (F32(0.3) + F32(0.7) * edge)
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
        """Endoplasmic reticulum: reticular, perinuclear, decaying to the edge; float32 (h, w)."""
        net = self.bank.ridges(self.sl, self.px(2.2, 0.7))
        if self.mitotic:
            env = F32(0.55) * (F32(1) - F32(0.7) * np.minimum(self.spindle, F32(1)))
            cyto = env * (F32(0.25) + F32(0.75) * net)
            return np.where(self.cyto, cyto, F32(0)).astype(F32)
        env = F32(0.12) + F32(0.88) * np.exp(-self.u / F32(0.4))
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


# --------------------------------------------------------------------------------------
# Image synthesis
# --------------------------------------------------------------------------------------


@dataclass
class SynthImage:
    """One synthetic HPA image with its ground truth.

    Attributes
    ----------
    channels : ndarray of uint16, shape (4, size, size)
        Stains in canonical order :data:`hpa_batch.CHANNELS` (red, green, blue, yellow), ADU.
    cells : ndarray of uint16, shape (size, size)
        Cell label image, 0 = background, cells 1..n.
    nuclei : ndarray of uint16, shape (size, size)
        Nucleus label image; nucleus ``k`` lies inside cell ``k``.
    cell_labels : dict of int to tuple of int
        Class ids per cell id; negative cells are ``(negative,)`` for catalogs with a
        Negative class and ``()`` otherwise.
    image_labels : tuple of int
        Sorted union of the non-negative cell labels (``(negative,)`` if there are none).
    cell_line : str
        Cell line the morphology was drawn from.
    mitotic : tuple of int
        Ids of mitotic cells.
    offset : tuple of float
        Camera offset (ADU) per channel.
    style : dict
        The style and the values this image drew (:meth:`StyleDraw.record` + ``vignette``).
    """

    channels: np.ndarray
    cells: np.ndarray
    nuclei: np.ndarray
    cell_labels: dict[int, tuple[int, ...]]
    image_labels: tuple[int, ...]
    cell_line: str = ""
    mitotic: tuple[int, ...] = ()
    offset: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0))
    style: dict[str, object] = field(default_factory=dict)


def _sides(sl: tuple[slice, slice], size: int) -> tuple[bool, bool, bool, bool]:
    """Which sides (top, bottom, left, right) of ``sl`` lie on the image border."""
    return sl[0].start == 0, sl[0].stop == size, sl[1].start == 0, sl[1].stop == size


def _render_cells(
    rng: np.random.Generator,
    size: int,
    cells: np.ndarray,
    nuclei: np.ndarray,
    geoms: list[_CellGeom],
    cell_patterns: list[list[_Pattern]],
    levels: np.ndarray,
) -> np.ndarray:
    """Expected photons per channel before optics.

    Parameters
    ----------
    cells, nuclei : ndarray of uint16, shape (size, size)
        Label images.
    geoms, cell_patterns : list
        Geometry and patterns of cell ``k`` at index ``k - 1``.
    levels : ndarray, shape (5,)
        Photons of a bright structure in red, green (expression), blue and yellow
        (canonical channel order), then the green autofluorescence.

    Returns
    -------
    ndarray of float32, shape (4, size, size)
    """
    s = size / REFERENCE_SIZE
    canvas = np.zeros((4, size, size), F32)
    red, green, blue, yellow = (CHANNELS.index(c) for c in ("red", "green", "blue", "yellow"))
    green_af = levels[4]  # autofluorescence photons
    bank = _TextureBank(rng, size)
    for k, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        cell = cells[sl] == k
        nuc = nuclei[sl] == k
        ctx = CellContext(rng, s, cell, nuc, _sides(sl, size), geoms[k - 1], bank, sl)
        canvas[blue][sl] += F32(levels[blue] * rng.uniform(0.8, 1.2)) * ctx.dna
        canvas[red][sl] += F32(levels[red] * rng.uniform(0.7, 1.3)) * ctx.microtubules
        canvas[yellow][sl] += F32(levels[yellow] * rng.uniform(0.7, 1.3)) * ctx.er
        g = F32(green_af) * np.where(ctx.nuc, F32(0.6), ctx.thickness)
        expression = levels[green] * float(np.exp(rng.uniform(-0.8, 0.8)))
        for p in cell_patterns[k - 1]:
            g = g + F32(expression * rng.uniform(0.6, 1.0)) * PATTERN_RENDERERS[p.name](ctx)
        canvas[green][sl] += np.where(cell, g, F32(0))
    return canvas


def _camera(
    rng: np.random.Generator,
    photons: np.ndarray,
    size: int,
    *,
    background_scale: float = 1.0,
    green_background: float = 0.0,
    vignette: Range = (0.08, 0.2),
    gradient: float = 0.0,
) -> tuple[np.ndarray, tuple[float, ...], float]:
    """Optics and camera: PSF, haze, vignetting, background, shot and read noise.

    ``ADU = offset + gain * lambda + sqrt(gain**2 * lambda + read_noise**2) * N(0, 1)``
    with ``lambda`` the expected photons (normal approximation of the Poisson shot noise).

    Parameters
    ----------
    photons : ndarray of float32, shape (4, size, size)
        Expected signal photons.
    background_scale : float
        Multiplies every channel's smooth background.
    green_background : float
        Extra smooth green background (photons), following the illumination.
    vignette : tuple of float
        Range of the corner intensity loss.
    gradient : float
        Amplitude of a linear illumination ramp in a random direction (0 = none, no draw).

    Returns
    -------
    adu : ndarray of uint16, shape (4, size, size)
    offsets : tuple of float
        Camera offset per channel (ADU).
    vignette : float
        The drawn corner loss.
    """
    s = size / REFERENCE_SIZE
    psf = max(0.5, 1.1 * s)
    gain = F32(rng.uniform(2.5, 4.0))
    base = float(rng.uniform(300, 600))
    read_var = F32(rng.uniform(5, 15) ** 2)
    offsets = tuple(float(base + rng.uniform(-15, 15)) for _ in range(4))
    f = max(1, size // 64)
    m = size // f
    grid = (np.arange(m, dtype=F32) + F32(0.5)) / F32(m)
    cy, cx = rng.uniform(0.4, 0.6, 2)
    r2 = ((grid[:, None] - F32(cy)) ** 2 + (grid[None, :] - F32(cx)) ** 2) * F32(2)
    vig = float(rng.uniform(*vignette))
    vig_small = F32(1) - F32(vig) * r2
    if gradient > 0:
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (grid[:, None] - F32(0.5)) * F32(math.sin(ang)) + (grid[None, :] - F32(0.5)) * F32(math.cos(ang))
        vig_small = vig_small * (F32(1) + F32(gradient) * ramp)
    vig_small = np.maximum(vig_small, F32(0.05))
    vignette = _upsample(vig_small, (size, size))
    out = np.empty(photons.shape, np.uint16)
    for c in range(photons.shape[0]):
        lam = ndi.gaussian_filter(photons[c], psf, truncate=3.0)
        small = lam[: m * f, : m * f].reshape(m, f, m, f).mean(axis=(1, 3))
        haze = ndi.gaussian_filter(small, 2.0)
        bg = F32(rng.uniform(4, 14)) * (F32(1) + F32(0.25) * _smooth_noise(rng, (m, m), 6.0))
        bg *= F32(background_scale)
        if c == CHANNELS.index("green") and green_background > 0:
            bg = bg + F32(green_background) * vig_small
        low = _upsample(F32(0.04) * haze * vig_small + bg, (size, size))
        lam *= vignette
        lam += low
        np.maximum(lam, F32(0), out=lam)
        sd = lam * (gain * gain)
        sd += read_var
        np.sqrt(sd, out=sd)
        sd *= rng.standard_normal((size, size), dtype=F32)
        lam *= gain
        lam += F32(offsets[c])
        lam += sd
        np.rint(lam, out=lam)
        np.clip(lam, 0, 65535, out=lam)
        out[c] = lam
    return out, offsets, vig


def synthesize_image(
    rng: np.random.Generator,
    size: int,
    cell_line: str,
    catalog: LabelCatalog | str,
    *,
    patterns: Sequence[str] | None = None,
    style: str | SynthStyle = "standard",
) -> SynthImage:
    """Draw one synthetic 4-channel HPA image with masks and labels.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all randomness (the result is a function of its state).
    size : int
        Image height = width in px (cell sizes scale with ``size / 2048``).
    cell_line : str
        Cell line; selects the morphology profile (see :func:`cell_line_profile`).
    catalog : LabelCatalog or str
        Label catalog the class ids refer to.
    patterns : sequence of str, optional
        Force the image-level patterns (2021 class names); ``[]`` gives a
        Negative-only image.  Default: drawn at random.
    style : str or SynthStyle
        Image style (:data:`STYLES`); its values are drawn first from ``rng``.  ``"standard"``
        draws nothing (the cell line profile alone).

    Returns
    -------
    SynthImage
    """
    if isinstance(catalog, str):
        catalog = get_catalog(catalog)
    size = int(size)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    look = draw_style(rng, get_style(style), cell_line_profile(cell_line))
    profile = look.profile
    image_patterns = _draw_image_patterns(rng, catalog, patterns, look.patterns)
    n_spindle = 0
    if any(p.mitotic_only for p in image_patterns):
        n_spindle = 1 if rng.random() < 0.6 else 2
    cells, nuclei, geoms = _make_geometry(rng, size, profile, n_spindle)
    mitotic = [g.mitotic for g in geoms]
    cell_patterns = _assign_cell_patterns(rng, mitotic, image_patterns, catalog)

    gain_guess = 3.2  # levels are in photons; ~3.2 ADU per photon on average
    levels = np.array(
        [
            rng.uniform(8000, 20000) / gain_guess,  # red
            float(np.exp(rng.uniform(np.log(3000), np.log(20000)))) / gain_guess,  # green
            rng.uniform(14000, 28000) / gain_guess,  # blue
            rng.uniform(12000, 26000) / gain_guess,  # yellow
            rng.uniform(40, 120) / gain_guess,  # green autofluorescence
        ]
    )
    levels[[0, 3]] *= look.reference_scale
    levels[1] *= look.green_scale
    levels[4] *= look.green_af_scale
    levels[:4] *= look.brightness
    photons = _render_cells(rng, size, cells, nuclei, geoms, cell_patterns, levels)
    channels, offsets, vignette = _camera(
        rng,
        photons,
        size,
        background_scale=look.background_scale,
        green_background=look.green_background * levels[1],
        vignette=look.vignette,
        gradient=look.gradient[0],
    )

    neg = catalog.negative
    cell_labels: dict[int, tuple[int, ...]] = {}
    union: set[int] = set()
    for k, pats in enumerate(cell_patterns, start=1):
        ids = tuple(sorted({p.class_id for p in pats}))
        union.update(ids)
        cell_labels[k] = ids if ids or neg is None else (neg,)
    image_labels = tuple(sorted(union)) if union or neg is None else (neg,)
    return SynthImage(
        channels=channels,
        cells=cells,
        nuclei=nuclei,
        cell_labels=cell_labels,
        image_labels=image_labels,
        cell_line=cell_line,
        mitotic=tuple(k for k, m in enumerate(mitotic, start=1) if m),
        offset=offsets,
        style={**look.record(), "vignette": round(vignette, 3)},
    )


# --------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_dataset` wrote.

    Attributes
    ----------
    out : Path
        Dataset root.
    metadata : Path
        ``out/train.csv``.
    images_dir : Path
        ``out/images``.
    truth_dir : Path
        ``out/truth``.
    ids : tuple of str
        Image ids in generation order.
    n_cells : int
        Total number of cells.
    """

    out: Path
    metadata: Path
    images_dir: Path
    truth_dir: Path
    ids: tuple[str, ...]
    n_cells: int


@dataclass(frozen=True)
class _Job:
    """Arguments of :func:`_generate_one` (picklable for process pools)."""

    index: int
    seed: int
    size: int
    cell_line: str
    fmt: str
    catalog: str
    images_dir: Path
    truth_dir: Path
    style: str = "standard"
    depth: int = 16


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    """uint16 ADU -> uint8 (``min(adu >> 7, 255)``), as 8-bit public sets store them."""
    return np.minimum(arr >> 7, 255).astype(np.uint8)


def _encode_channel(arr: np.ndarray, fmt: str, depth: int = 16) -> bytes:
    """Encode a uint16 (h, w) channel: 16- or 8-bit PNG / zlib TIFF, or 8-bit JPEG (``adu >> 7``)."""
    if fmt == "png":
        return bytes(imagecodecs.png_encode(arr if depth == 16 else _eight_bit(arr), level=3))
    if fmt == "jpg":
        return bytes(imagecodecs.jpeg8_encode(_eight_bit(arr), level=95))
    raise ValueError(fmt)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    """Write a 2-D array as zlib-compressed TIFF (deterministic bytes)."""
    tifffile.imwrite(path, arr, compression="zlib", predictor=True, metadata=None)


def _generate_one(job: _Job) -> tuple[str, str, str, list[list[object]], dict[str, object]]:
    """Generate and write image ``job.index``.

    Returns
    -------
    tuple
        (ID, Label, Cell_line, rows of cells.csv, row of images.csv)
    """
    rng = np.random.default_rng([job.seed, job.index])
    image_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    catalog = get_catalog(job.catalog)
    img = synthesize_image(rng, job.size, job.cell_line, catalog, style=job.style)
    for name, arr in zip(CHANNELS, img.channels):
        path = job.images_dir / f"{image_id}_{name}.{job.fmt}"
        if job.fmt == "tif":
            _write_tif(path, arr if job.depth == 16 else _eight_bit(arr))
        else:
            path.write_bytes(_encode_channel(arr, job.fmt, job.depth))
    _write_tif(job.truth_dir / f"{image_id}_cells.tif", img.cells)
    _write_tif(job.truth_dir / f"{image_id}_nuclei.tif", img.nuclei)
    n = len(img.cell_labels)
    areas = np.bincount(img.cells.ravel(), minlength=n + 1)
    nuc_areas = np.bincount(img.nuclei.ravel(), minlength=n + 1)
    edge = np.concatenate([img.cells[0], img.cells[-1], img.cells[:, 0], img.cells[:, -1]])
    border = set(np.unique(edge).tolist())
    rows: list[list[object]] = [
        [
            image_id,
            k,
            format_labels(img.cell_labels[k], catalog),
            job.cell_line,
            int(areas[k]),
            int(nuc_areas[k]),
            k in border,
        ]
        for k in range(1, n + 1)
    ]
    summary = {
        "ID": image_id,
        "Cell_line": job.cell_line,
        "size": job.size,
        "n_cells": n,
        "mitotic_cells": len(img.mitotic),
        **img.style,
    }
    return image_id, format_labels(img.image_labels, catalog), job.cell_line, rows, summary


_README = """\
Ground truth of a synthetic HPA dataset written by hpa_batch.synth
(catalog: {catalog}, seed: {seed}).

{{ID}}_cells.tif   uint16 cell label image (zlib TIFF, full resolution): 0 = background, cells 1..n.
{{ID}}_nuclei.tif  uint16 nucleus label image: nucleus k lies inside cell k.
images.csv       one row per image: ID, Cell_line, size, n_cells, mitotic_cells, the style and
                 the values it drew (radius px at 2048, nucleus_area_ratio, coverage, ...).
cells.csv        one row per cell: ID, cell_id, Label (that cell's class ids joined with the
                 catalog separator; {negative}), Cell_line, area and nucleus_area (px),
                 border (True if the cell touches the image edge).
../train.csv     image-level labels = the union of the cell labels of the image.
Images: ../images/{{ID}}_{{red,green,blue,yellow}}.{fmt} ({depth}).
"""


def synthesize_dataset(
    out: str | Path,
    n_images: int,
    seed: int = 0,
    *,
    sizes: Sequence[int] = (1728, 2048, 3072),
    cell_lines: Sequence[str] | None = None,
    fmt: str = "png",
    catalog: str = "hpa2021",
    workers: int = 1,
    styles: Sequence[str] = ("standard",),
    depth: int = 16,
    table: str = "hpa2021",
) -> SynthSummary:
    """Write a synthetic HPA dataset with ground-truth masks and per-cell labels.

    Parameters
    ----------
    out : str or Path
        Dataset root (created).
    n_images : int
        Number of images.
    seed : int
        Non-negative seed; image ``i`` uses ``numpy.random.default_rng([seed, i])``, so
        the output does not depend on ``workers``.
    sizes : sequence of int
        Image sizes; image ``i`` gets ``sizes[(i + i // len(cell_lines)) % len(sizes)]``
        so that every cell line gets every size.
    cell_lines : sequence of str, optional
        Cell lines, assigned round-robin.  Default: first 3 of :data:`DEFAULT_CELL_LINES`.
    fmt : {"png", "tif", "jpg"}
        Image format: 16-bit PNG / TIFF, or 8-bit JPEG (``min(adu >> 7, 255)``).
    catalog : str
        Label catalog name (``"hpa2021"`` or ``"hpa2018"``).
    workers : int
        Number of processes.
    styles : sequence of str
        Image styles (:data:`STYLES`); image ``i`` gets ``styles[(i // len(cell_lines)) % len(styles)]``
        so that every cell line gets every style.
    depth : {16, 8}
        Bits per pixel of PNG / TIFF channels (8: ``min(adu >> 7, 255)``, as the 2018 set's PNGs).
    table : {"hpa2021", "hpa2018"}
        Layout of ``train.csv``: ``ID,Label,Cell_line`` (labels joined with the catalog separator) or
        the 2018 competition's ``Id,Target`` (space-separated labels, no cell-line column).

    Returns
    -------
    SynthSummary
    """
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    if table not in ("hpa2021", "hpa2018"):
        raise ValueError(f"table must be hpa2021 (ID,Label,Cell_line) or hpa2018 (Id,Target), got {table!r}")
    fmt = fmt.lower().lstrip(".")
    if fmt == "tiff":
        fmt = "tif"
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    cat = get_catalog(catalog)
    if n_images < 0:
        raise ValueError("n_images must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    sizes = tuple(int(v) for v in sizes)
    if not sizes or min(sizes) < 32:
        raise ValueError(f"sizes must be a non-empty sequence of ints >= 32, got {sizes}")
    lines = tuple(cell_lines) if cell_lines is not None else DEFAULT_CELL_LINES[:3]
    if not lines:
        raise ValueError("cell_lines must not be empty")
    styles = tuple(get_style(st).name for st in styles) or ("standard",)
    root = Path(out)
    images_dir, truth_dir = root / "images", root / "truth"
    images_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    nl = len(lines)
    jobs = [
        _Job(
            i,
            int(seed),
            sizes[(i + i // nl) % len(sizes)],
            lines[i % nl],
            fmt,
            cat.name,
            images_dir,
            truth_dir,
            styles[(i // nl) % len(styles)],
            depth,
        )
        for i in range(n_images)
    ]
    if workers > 1 and n_images > 1:
        with ProcessPoolExecutor(max_workers=min(workers, n_images)) as ex:
            results = list(ex.map(_generate_one, jobs))
    else:
        results = [_generate_one(j) for j in jobs]

    metadata = root / "train.csv"
    with metadata.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if table == "hpa2018":  # the 2018 competition's train.csv: Id,Target (space-separated), no cell line
            w.writerow(["Id", "Target"])
            for image_id, label, _line, *_rest in results:
                w.writerow([image_id, label.replace(cat.separator, " ")])
        else:
            w.writerow(["ID", "Label", "Cell_line"])
            for image_id, label, line, *_rest in results:
                w.writerow([image_id, label, line])
    n_cells = 0
    with (truth_dir / "cells.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ID", "cell_id", "Label", "Cell_line", "area", "nucleus_area", "border"])
        for *_head, rows, _image in results:
            w.writerows(rows)
            n_cells += len(rows)
    image_rows = [r[-1] for r in results]
    columns = list(image_rows[0]) if image_rows else ["ID", "Cell_line", "size", "n_cells", "style"]
    with (truth_dir / "images.csv").open("w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        dw.writeheader()
        dw.writerows(image_rows)
    negative = f'an all-negative cell is "{cat.negative}"' if cat.negative is not None else "empty for a negative cell"
    depth_text = "8-bit, ADU >> 7" if fmt == "jpg" or depth == 8 else "16-bit ADU"
    (truth_dir / "README.txt").write_text(
        _README.format(catalog=cat.name, seed=seed, negative=negative, fmt=fmt, depth=depth_text)
    )
    return SynthSummary(
        out=root,
        metadata=metadata,
        images_dir=images_dir,
        truth_dir=truth_dir,
        ids=tuple(r[0] for r in results),
        n_cells=n_cells,
    )


# --------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------


def _read_channel(images_dir: Path, image_id: str, channel: str) -> np.ndarray:
    """Read ``{ID}_{channel}.{png,tif,jpg}`` as a 2-D array."""
    for ext in FORMATS:
        path = images_dir / f"{image_id}_{channel}.{ext}"
        if path.exists():
            if ext == "tif":
                return np.asarray(tifffile.imread(path))
            return np.asarray(imagecodecs.imread(path.read_bytes()))
    raise FileNotFoundError(f"no {channel} image for {image_id} in {images_dir}")


def contact_sheet(
    dataset_dir: str | Path,
    out_png: str | Path,
    n: int = 4,
    size: int = 512,
    *,
    catalog: str | None = None,
) -> Path:
    """Grid of RGB composites of a synthetic (or real) HPA dataset.

    Parameters
    ----------
    dataset_dir : str or Path
        Dataset root with ``train.csv`` and ``images/``.
    out_png : str or Path
        Output 8-bit RGB PNG (``ceil(sqrt(n))`` columns of ``size`` px tiles).
    n : int
        Number of images; one per cell line first, in ``train.csv`` order.
    size : int
        Tile size in px.
    catalog : str, optional
        Label catalog of ``train.csv``; when given, tiles are captioned with class names
        instead of ids.

    Returns
    -------
    Path
        ``out_png``.
    """
    from PIL import Image, ImageDraw, ImageFont

    root = Path(dataset_dir)
    with (root / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    first_of_line: dict[str, int] = {}
    for i, r in enumerate(rows):
        first_of_line.setdefault(r["Cell_line"], i)
    firsts = sorted(first_of_line.values())
    chosen = set(firsts)
    order = firsts + [i for i in range(len(rows)) if i not in chosen]
    picked = [rows[i] for i in order[:n]]
    if not picked:
        raise ValueError(f"no images in {root / 'train.csv'}")
    cat = get_catalog(catalog) if catalog else None
    cols = math.ceil(math.sqrt(len(picked)))
    nrows = math.ceil(len(picked) / cols)
    sheet = Image.new("RGB", (cols * size, nrows * size))
    try:
        font = ImageFont.load_default(size=max(10, size // 30))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, row in enumerate(picked):
        stack = np.stack([_read_channel(root / "images", row["ID"], c) for c in CHANNELS])
        tile = Image.fromarray(composite(stack)).resize((size, size), Image.Resampling.LANCZOS)
        label = row["Label"]
        if cat is not None and label:
            tokens = label.split(cat.separator) if cat.separator.strip() else label.split()
            label = ", ".join(cat.classes[int(t)].split(" and ")[0] for t in tokens)
        caption = f"{row['Cell_line']}: {label}"
        ImageDraw.Draw(tile).text((6, 4), caption, fill=(255, 255, 255), font=font)
        sheet.paste(tile, ((i % cols) * size, (i // cols) * size))
    out_path = Path(out_png)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="PNG")
    return out_path
