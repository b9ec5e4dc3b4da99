"""Image styles: what real HPA images vary beyond the cell line (:class:`SynthStyle`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hpa_batch.synth.profiles import CellLineProfile

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
    cell_brightness : tuple of float
        Ratio between the brightest and the dimmest cell of the image in the reference channels
        (microtubules and ER together); each cell draws its factor log-uniformly within it, so
        touching neighbours often differ 2-3x at a ratio of 4-6 (1 = only the standard +-30 %).
    er_decay : tuple of float
        Decay length of the ER away from the nucleus, as a fraction of the cytoplasm width
        (standard 0.4; 0.12 = ER only around the nucleus, the cell periphery nearly dark).
    flatness : tuple of float
        Blends the cytoplasm thickness towards flat (0 = thick around the nucleus and dim at every
        cell edge, 1 = even: touching cells meet without a darker gap, only their brightness differs).
    irregularity_scale : tuple of float
        Multiplies the profile's outline irregularity.
    nucleus_offset : tuple of float, optional
        Replaces the profile's ``nucleus_offset`` (how far nuclei sit off the cell centre).
    large_fraction : tuple of float, optional
        Share of big flat cells among small rounded ones (replaces the profile's): their territories
        grow with their own size, so boundaries lie far from the midpoint between nuclei.
    binucleate_rate : tuple of float, optional
        Share of interphase cells with two nuclei (replaces the profile's).
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
    cell_brightness: Range = (1.0, 1.0)
    er_decay: Range = (0.4, 0.4)
    flatness: Range = (0.0, 0.0)
    irregularity_scale: Range = (1.0, 1.0)
    nucleus_offset: Range | None = None
    large_fraction: Range | None = None
    binucleate_rate: Range | None = None


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
            "confluent",
            coverage=(1.0, 1.6),
            clustering=(0.8, 1.0),
            aspect_scale=(1.1, 1.8),
            irregularity_scale=(1.2, 2.2),
            nucleus_offset=(0.7, 1.0),
            cell_brightness=(3.0, 6.0),
            er_decay=(0.12, 1.5),
            flatness=(0.0, 0.9),
        ),
        SynthStyle(
            "mixed",
            coverage=(0.9, 1.4),
            clustering=(0.3, 0.8),
            nucleus_offset=(0.8, 1.0),
            cell_brightness=(2.0, 5.0),
            flatness=(0.0, 0.8),
            er_decay=(0.15, 0.5),
            large_fraction=(0.15, 0.35),
            binucleate_rate=(0.04, 0.1),
        ),
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
            cell_brightness=(1.0, 5.0),
            er_decay=(0.12, 0.5),
            flatness=(0.0, 0.6),
            irregularity_scale=(0.7, 2.0),
            nucleus_offset=(0.3, 1.0),
            large_fraction=(0.0, 0.3),
            binucleate_rate=(0.0, 0.08),
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
    cell_brightness: float = 1.0
    er_decay: float = 0.4
    flatness: float = 0.0

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
            "cell_brightness": round(self.cell_brightness, 2),
            "er_decay": round(self.er_decay, 3),
            "flatness": round(self.flatness, 3),
            "nucleus_offset": round(p.nucleus_offset, 2),
            "large_fraction": round(p.large_fraction, 3),
            "binucleate_rate": round(p.binucleate_rate, 3),
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
    changes: dict[str, Any] = {}
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
    if style.irregularity_scale != (1.0, 1.0):
        changes["irregularity"] = profile.irregularity * _log_uniform(rng, style.irregularity_scale)
    if style.nucleus_offset is not None:
        changes["nucleus_offset"] = _uniform(rng, style.nucleus_offset)
    if style.large_fraction is not None:
        changes["large_fraction"] = _uniform(rng, style.large_fraction)
    if style.binucleate_rate is not None:
        changes["binucleate_rate"] = _uniform(rng, style.binucleate_rate)
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
        cell_brightness=_log_uniform(rng, style.cell_brightness),
        er_decay=_log_uniform(rng, style.er_decay),
        flatness=_uniform(rng, style.flatness),
    )
