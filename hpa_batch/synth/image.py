"""One synthetic image: geometry, stains, camera model (:func:`synthesize_image`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from hpa_batch import CHANNELS
from hpa_batch.core.labels import LabelCatalog, get_catalog
from hpa_batch.synth.common import F32, REFERENCE_SIZE
from hpa_batch.synth.context import CellContext, _TextureBank
from hpa_batch.synth.drawing import _smooth_noise, _upsample
from hpa_batch.synth.geometry import _CellGeom, _make_geometry
from hpa_batch.synth.labelling import _assign_cell_patterns, _draw_image_patterns, _Pattern
from hpa_batch.synth.patterns import PATTERN_RENDERERS
from hpa_batch.synth.profiles import cell_line_profile
from hpa_batch.synth.styles import Range, StyleDraw, SynthStyle, draw_style, get_style

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
    *,
    cell_brightness: float = 1.0,
    er_decay: float = 0.4,
    flatness: float = 0.0,
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
    cell_brightness : float
        Brightest / dimmest cell ratio of the reference channels (each cell draws a factor
        log-uniformly in ``[r**-0.5, r**0.5]``; 1 = no draw).
    er_decay : float
        ER decay length (see :attr:`CellContext.er`).
    flatness : float
        Cytoplasm flatness (see :attr:`CellContext.thickness`).

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
        geom = geoms[k - 1]
        # a big flat cell of a mixed field: thin, even cytoplasm, dimmer per pixel than its neighbours
        flat_here = max(flatness, 0.75) if geom.big else flatness
        ctx = CellContext(rng, s, cell, nuc, _sides(sl, size), geom, bank, sl, er_decay=er_decay, flatness=flat_here)
        canvas[blue][sl] += F32(levels[blue] * rng.uniform(0.8, 1.2)) * ctx.dna
        ref = 1.0 if cell_brightness <= 1 else float(cell_brightness ** rng.uniform(-0.5, 0.5))
        ref *= 0.5 if geom.big else 1.0
        canvas[red][sl] += F32(levels[red] * ref * rng.uniform(0.7, 1.3)) * ctx.microtubules
        canvas[yellow][sl] += F32(levels[yellow] * ref * rng.uniform(0.7, 1.3)) * ctx.er
        g: np.ndarray = F32(green_af) * np.where(ctx.nuc, F32(0.6), ctx.thickness)
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
    vignette_map = _upsample(vig_small, (size, size))
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
        lam *= vignette_map
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


def _stain_levels(rng: np.random.Generator, look: StyleDraw) -> np.ndarray:
    """Photons of a bright structure per stain (red, green, blue, yellow) and of the green
    autofluorescence, scaled by the image's drawn look: ``(5,)`` float64."""
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
    return levels


def _labels(cell_patterns: list, catalog: LabelCatalog) -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """Each cell's class ids (the catalog's Negative for a cell without a pattern) and the image's."""
    neg = catalog.negative
    cell_labels: dict[int, tuple[int, ...]] = {}
    union: set[int] = set()
    for k, pats in enumerate(cell_patterns, start=1):
        ids = tuple(sorted({p.class_id for p in pats}))
        union.update(ids)
        cell_labels[k] = ids if ids or neg is None else (neg,)
    image_labels = tuple(sorted(union)) if union or neg is None else (neg,)
    return cell_labels, image_labels


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
    catalog, size = get_catalog(catalog) if isinstance(catalog, str) else catalog, int(size)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    look = draw_style(rng, get_style(style), cell_line_profile(cell_line))
    image_patterns = _draw_image_patterns(rng, catalog, patterns, look.patterns)
    n_spindle = 0
    if any(p.mitotic_only for p in image_patterns):
        n_spindle = 1 if rng.random() < 0.6 else 2
    cells, nuclei, geoms = _make_geometry(rng, size, look.profile, n_spindle)
    mitotic = [g.mitotic for g in geoms]
    cell_patterns = _assign_cell_patterns(rng, mitotic, image_patterns, catalog)

    levels = _stain_levels(rng, look)
    photons = _render_cells(
        rng,
        size,
        cells,
        nuclei,
        geoms,
        cell_patterns,
        levels,
        cell_brightness=look.cell_brightness,
        er_decay=look.er_decay,
        flatness=look.flatness,
    )
    channels, offsets, vignette = _camera(
        rng,
        photons,
        size,
        background_scale=look.background_scale,
        green_background=look.green_background * levels[1],
        vignette=look.vignette,
        gradient=look.gradient[0],
    )

    cell_labels, image_labels = _labels(cell_patterns, catalog)
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
