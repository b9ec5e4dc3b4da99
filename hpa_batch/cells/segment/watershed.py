"""Built-in seeded watershed backend (CPU, offline, no weights), scaled by the image itself.

No size or intensity constant is tied to a dataset: every scale comes from the image.

1. **Background**: per channel, a smooth background surface (low percentile of image blocks, eroded
   over neighbouring blocks, smoothed) is subtracted, which removes camera offsets, haze and most of
   uneven illumination. The robust noise level (MAD of the background pixels) is kept.
2. **Nuclei** (blue): thresholded at the lower of Otsu and a fraction of the typical nucleus intensity
   (dim nuclei next to bright mitotic ones are kept) and above the noise; holes filled. The median
   nucleus size found there sets every later scale: smoothing, the smallest nucleus kept
   (``min_nucleus_fraction`` of the median area) and the depth of the distance-transform maxima that
   split touching nuclei (``nucleus_split`` x the median radius; ``nucleus_split_big`` for a clump of
   at least ``nucleus_big_area`` typical nuclei, where nuclei pressed together leave a shallow neck).
3. **Cell-body signal**: each reference channel (microtubules, ER; the protein channel only with a
   ``green_weight``) is divided by its own typical perinuclear level and clipped at ``clip``, so no
   channel and no saturated structure can dominate the mean; then smoothed.
4. **Cells**: the foreground (signal above 3 noise sigmas) is partitioned among the nuclei, then
   every cell keeps only the pixels above ``cell_threshold`` x **its own** perinuclear level (cells
   differ in brightness and illumination), grown again from its nucleus so that fragments are dropped.
   The partition (``boundary``) is one of:

   * ``edges`` (default): a watershed from the nuclei, grown past the blur of the smoothing, on
     ``-log(signal) + edge_weight x R |grad log(signal)|`` (``R`` = median nucleus radius; the
     nuclei and a thin ring around them raised to their perinuclear level first, so a dark nucleus
     is no ridge around its own seed; a
     ``compactness / R`` x distance-from-the-nucleus term is available, 0 by default since issue 35:
     it handed the far periphery of big flat cells to their small neighbours). The log makes every
     term relative, so a cell 3x brighter than its neighbour has no advantage: the step between
     them is a ridge of the gradient term that its flood cannot cross before the dim neighbour has
     filled its own territory; a valley between equal cells is a ridge of ``-log(signal)``; on an
     even plateau the two floods meet where they arrive together.
   * ``flood``: the watershed of ``-signal`` alone (before issue 24): on touching cells of
     different brightness the brighter one floods into its dimmer neighbour.
   * ``distance``: each foreground pixel goes to its nearest nucleus (a Voronoi partition, no
     intensity at all): the floor any boundary method must beat, and what the QC compares with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as cc_label
from skimage.morphology import convex_hull_image, h_maxima, remove_small_objects
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from hpa_batch import CHANNELS
from hpa_batch.cells.segment.backends import register_backend
from hpa_batch.cells.segment.contacts import merge_binucleate

F32 = np.float32


def background_surface(channel: np.ndarray, blocks: int = 16, percentile: float = 10.0) -> np.ndarray:
    """Smooth background estimate of one channel.

    Parameters
    ----------
    channel : numpy.ndarray
        ``(h, w)`` numeric.
    blocks : int
        Number of blocks along the shorter side; each block's ``percentile`` is taken, the block
        grid eroded over 5 x 5 blocks (a block covered by cells, even a large flat dim one in a
        confluent field, takes a neighbour's background),
        smoothed and interpolated back.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` float32.
    """
    h, w = channel.shape
    b = max(4, min(h, w) // blocks)
    ny, nx = max(1, h // b), max(1, w // b)
    core = channel[: ny * b, : nx * b].astype(F32).reshape(ny, b, nx, b).transpose(0, 2, 1, 3)
    grid = np.percentile(core.reshape(ny, nx, b * b), percentile, axis=2).astype(F32)
    grid = ndi.grey_erosion(grid, size=(5, 5), mode="nearest")
    grid = ndi.gaussian_filter(grid, 1.0, mode="nearest")
    zoom = (h / ny, w / nx)
    surface = ndi.zoom(grid, zoom, order=1, mode="nearest", grid_mode=True)
    return surface[:h, :w].astype(F32)


def flatten(channel: np.ndarray) -> tuple[np.ndarray, float]:
    """Background-subtracted channel and its robust noise sigma: ``(h, w)`` -> float32, float.

    The noise is measured on differences of horizontal neighbours among the darkest tenth of the
    pixels (:func:`background_noise`), so cells covering most of the image do not count as noise.
    """
    ch = channel.astype(F32)
    flat = ch - background_surface(ch)
    return flat, background_noise(flat)


def background_noise(flat: np.ndarray, fraction: float = 0.1) -> float:
    """Robust pixel noise sigma of the darkest ``fraction`` of a background-flattened channel.

    ``1.4826 MAD / sqrt(2)`` of the differences between horizontal neighbours whose mean lies in
    the darkest ``fraction``: smooth background and cell texture cancel in a difference, so the
    estimate holds from sparse fields to confluent ones. ``flat`` is ``(h, w)`` float32.
    """
    a, b = flat[:, :-1], flat[:, 1:]
    mean = (a + b) * F32(0.5)
    dark = mean <= np.percentile(mean[:: max(1, mean.shape[0] // 256)], 100 * fraction)
    diff = (a - b)[dark]
    if diff.size == 0:
        return 1e-3
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return max(1.4826 * mad / math.sqrt(2), 1e-3)


def nuclear_foreground(blue: np.ndarray) -> np.ndarray:
    """Foreground of the nuclear channel, holes filled: ``(h, w)`` numeric -> bool.

    Background-flattened and lightly smoothed; the threshold is the lower of Otsu's and 0.45 x the
    median above Otsu (dim nuclei beside bright mitotic ones stay in), never below 4 noise sigmas.
    """
    flat, noise = flatten(blue)
    smooth = ndi.gaussian_filter(flat, 1.0)
    if float(smooth.max()) <= 4 * noise:
        return np.zeros(blue.shape, bool)
    otsu = threshold_otsu(smooth)
    bright = smooth[smooth > otsu]
    typical = float(np.median(bright)) if bright.size else otsu
    thr = max(min(otsu, 0.45 * typical), 4 * noise)
    return ndi.binary_fill_holes(smooth > thr)


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects with fewer than ``min_area`` pixels (bool mask or label image)."""
    try:  # scikit-image >= 0.26 names the bound max_size (objects <= max_size are removed)
        return remove_small_objects(labels, max_size=max(min_area - 1, 0))
    except TypeError:
        return remove_small_objects(labels, min_size=min_area)


def median_area(mask: np.ndarray, floor: int = 6) -> float:
    """Median area (px) of the connected components of ``mask`` with at least ``floor`` pixels."""
    lab, n = ndi.label(mask)
    if n == 0:
        return 0.0
    areas = np.bincount(lab.ravel())[1:]
    areas = areas[areas >= floor]
    return float(np.median(areas)) if areas.size else 0.0


def perinuclear_rings(nuclei: np.ndarray, width: int) -> np.ndarray:
    """Ring of ``width`` px just outside each nucleus, labelled with the nucleus id: ``(h, w)`` int32."""
    grown = expand_labels(nuclei, distance=width)
    return np.where(nuclei == 0, grown, 0).astype(np.int32)


def ring_levels(signal: np.ndarray, rings: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``signal`` in each nucleus' ring (:func:`perinuclear_rings`).

    Returns
    -------
    numpy.ndarray
        ``(n + 1,)`` float32 indexed by nucleus id (index 0 unused); a nucleus without ring pixels
        gets the median over all rings.
    """
    flat = rings.ravel()
    sums = np.bincount(flat, weights=signal.ravel(), minlength=n + 1)[: n + 1]
    counts = np.bincount(flat, minlength=n + 1)[: n + 1]
    levels = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)[1:]
    ok = np.isfinite(levels)
    fill = float(np.median(levels[ok])) if ok.any() else 1.0
    return np.concatenate([[0.0], np.where(ok, levels, fill)]).astype(F32)


def split_touching(
    mask: np.ndarray,
    radius: float,
    depth: float,
    solidity: float = 0.93,
    *,
    big_depth: float | None = None,
    big_area: float = 1.5,
) -> np.ndarray:
    """Split touching objects at distance-transform maxima deeper than ``depth`` px.

    Only components larger than a typical object (``radius``) that are not convex (area below
    ``solidity`` x their convex hull's: touching round nuclei leave a neck, one elongated nucleus does
    not) are split. A component of at least ``big_area`` typical objects (``pi radius**2``) is most
    likely several nuclei pressed together, whose neck is shallow: it is split at maxima deeper than
    ``big_depth`` px instead (default ``depth``), so single irregular nuclei keep the stricter depth.
    ``mask`` is ``(h, w)`` bool; returns ``(h, w)`` int32 labels. The h-maxima transform runs per
    component on its bounding box, so its cost follows the objects' area.
    """
    typical = math.pi * radius * radius
    dist = ndi.distance_transform_edt(mask).astype(F32)
    dist = ndi.gaussian_filter(dist, max(0.1 * radius, 0.7))
    comps, _ = ndi.label(mask)
    out = np.zeros(mask.shape, np.int32)
    eight = np.ones((3, 3), bool)  # h_maxima's plateaus are 8-connected: so are its markers
    next_id = 1
    for k, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None:
            continue
        own = comps[sl] == k
        area = int(own.sum())
        n = 1
        if area >= 0.8 * typical and area < solidity * convex_hull_image(own).sum():
            # larger than a typical nucleus and not convex: look for several maxima
            h = big_depth if big_depth is not None and area >= big_area * typical else depth
            sub = np.where(own, dist[sl], 0).astype(np.float64)
            markers, n = ndi.label(h_maxima(sub, h).astype(bool) & own, structure=eight)
        if n > 1:
            lab = watershed(-dist[sl], markers, mask=own)
            out[sl] = np.where(lab > 0, lab + next_id - 1, out[sl])
        else:  # one object (smaller than a typical nucleus, convex, or a single maximum)
            out[sl][own] = next_id
            n = 1
        next_id += n
    return out


@register_backend("watershed")
@dataclass
class WatershedSegmenter:
    """Seeded watershed segmentation whose scales come from the image (see the module docstring).

    Parameters
    ----------
    cell_channels : tuple of str
        Reference channels of the cell-body signal (default microtubules and ER).
    green_weight : float
        Weight of the protein channel in the cell-body signal (0 = not used; it is clipped like the
        others when used).
    cell_threshold : float
        A cell keeps the pixels above this fraction of its own perinuclear signal level.
    clip : float
        Each normalised channel is clipped at this multiple of its typical perinuclear level.
    nucleus_split : float
        Touching nuclei are split at distance-transform maxima deeper than this fraction of the median
        nucleus radius.
    nucleus_split_big, nucleus_big_area : float
        A clump of at least ``nucleus_big_area`` median nucleus areas is split at maxima deeper than
        ``nucleus_split_big`` radii (nuclei pressed together in packed fields leave a shallow neck).
    min_nucleus_fraction : float
        Nuclei smaller than this fraction of the median nucleus area are dropped.
    smoothing : float
        Gaussian sigma of the cell-body signal as a fraction of the median nucleus radius.
    boundary : str
        How touching cells are partitioned: ``edges``, ``flood`` or ``distance`` (module docstring).
    edge_weight : float
        Weight of the log-signal gradient (per nucleus radius) in the ``edges`` landscape.
    edge_smoothing : float
        Gaussian sigma of the log signal and its gradient, as a fraction of the median nucleus radius.
    compactness : float
        Weight of the distance from the nucleus (per nucleus radius) in the ``edges`` landscape
        (the compact-watershed parameter x R; 0 = a classic watershed).
    nucleus_lift : float
        In the ``edges`` landscape, the nuclei and the pixels within this fraction of the nucleus
        radius around them are raised to at least their nucleus's perinuclear level: the reference
        channels are dark over a nucleus, and its blurred moat would otherwise be a ridge around the
        seed that a dim cell's flood must climb while its brighter neighbour floods on.
    binucleate_gap, binucleate_step, binucleate_valley : float
        Two touching cells are one binucleate cell when their nuclei are less than
        ``binucleate_gap`` nucleus radii apart and nothing separates them: the brighter side is
        less than ``binucleate_step`` x the dimmer one and their boundary is not a valley (its mean
        above ``binucleate_valley`` x the dimmer side) (:func:`merge_binucleate`; gap 0 = never).
    """

    cell_channels: tuple[str, ...] = ("red", "yellow")
    green_weight: float = 0.0
    cell_threshold: float = 0.15
    clip: float = 3.0
    nucleus_split: float = 0.2
    nucleus_split_big: float = 0.1
    nucleus_big_area: float = 1.5
    min_nucleus_fraction: float = 0.03
    smoothing: float = 0.06
    boundary: str = "edges"
    edge_weight: float = 0.18
    edge_smoothing: float = 0.04
    compactness: float = 0.0
    nucleus_lift: float = 0.12
    binucleate_gap: float = 0.7
    binucleate_step: float = 1.25
    binucleate_valley: float = 0.95
    name: str = "watershed"

    def __post_init__(self) -> None:
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary method {self.boundary!r}; known: {', '.join(BOUNDARIES)}")

    # --- nuclei -----------------------------------------------------------------------
    def nucleus_mask(self, blue: np.ndarray) -> np.ndarray:
        """Foreground of the nuclear channel: ``(h, w)`` uint16 -> bool (:func:`nuclear_foreground`)."""
        return nuclear_foreground(blue)

    def nuclei(self, blue: np.ndarray) -> tuple[np.ndarray, float]:
        """Nucleus labels and the median nucleus radius (px at this level).

        Parameters
        ----------
        blue : numpy.ndarray
            ``(h, w)`` nuclear channel.

        Returns
        -------
        nuclei : numpy.ndarray
            ``(h, w)`` int32, ids ``1..n``.
        radius : float
            Median equal-area nucleus radius (0 when none is found).
        """
        mask = self.nucleus_mask(blue)
        area = median_area(mask)
        if area == 0:
            return np.zeros(blue.shape, np.int32), 0.0
        mask = drop_small(mask, max(int(self.min_nucleus_fraction * area), 4))
        radius = math.sqrt(area / math.pi)
        nuclei = split_touching(
            mask,
            radius,
            max(self.nucleus_split * radius, 0.5),
            big_depth=max(self.nucleus_split_big * radius, 0.5),
            big_area=self.nucleus_big_area,
        )
        nuclei = drop_small(nuclei, max(int(0.5 * self.min_nucleus_fraction * area), 3))
        return relabel_sequential(nuclei)[0].astype(np.int32), radius

    # --- cell bodies ------------------------------------------------------------------
    def cell_signal(self, image: np.ndarray, rings: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
        """Cell-body signal normalised to its typical perinuclear level, and its noise level.

        Returns
        -------
        signal : numpy.ndarray
            ``(h, w)`` float32, ~1 around a typical nucleus, clipped at ``clip``.
        noise : float
            Robust noise sigma of the signal.
        """
        in_ring = rings > 0
        weights = {c: 1.0 for c in self.cell_channels}
        if self.green_weight > 0:
            weights["green"] = self.green_weight
        total = np.zeros(image.shape[1:], F32)
        noise2 = 0.0
        for name, weight in weights.items():
            flat, noise = flatten(image[CHANNELS.index(name)])
            flat = ndi.gaussian_filter(flat, max(self.smoothing * radius, 0.7))
            level = float(np.median(flat[in_ring])) if in_ring.any() else 0.0
            level = max(level, 3 * noise)
            total += F32(weight) * np.clip(flat / F32(level), -1, self.clip)
            noise2 += (weight * noise / level) ** 2
        w = sum(weights.values())
        return total / F32(w), math.sqrt(noise2) / w

    def signal_levels(
        self, image: np.ndarray, nuclei: np.ndarray, radius: float
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Cell-body signal, its noise and each nucleus's perinuclear level, for given nuclei.

        Parameters
        ----------
        image : numpy.ndarray
            ``(4, h, w)`` image at the working level.
        nuclei : numpy.ndarray
            ``(h, w)`` int nucleus labels ``1..n``.
        radius : float
            Median nucleus radius (px).

        Returns
        -------
        signal : numpy.ndarray
            ``(h, w)`` float32 (:meth:`cell_signal`).
        noise : float
            Its noise sigma.
        levels : numpy.ndarray
            ``(n + 1,)`` float32 perinuclear level per nucleus id (:func:`ring_levels`).
        """
        rings = perinuclear_rings(nuclei, max(round(0.5 * radius), 2))
        signal, noise = self.cell_signal(image, rings, radius)
        levels = ring_levels(np.minimum(signal, F32(self.clip)), rings, int(nuclei.max()))
        return signal, noise, levels

    @property
    def image_partitioned(self) -> bool:
        """Whether its cells are the image-driven ``edges`` partition the QC compares other backends with."""
        return self.boundary == "edges"

    def segment(self, image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`hpa_batch.cells.segment.Segmenter` (``scale`` is not needed: sizes come from the image)."""
        nuclei, radius = self.nuclei(image[CHANNELS.index("blue")])
        if nuclei.max() == 0:
            return nuclei, nuclei.copy()
        signal, noise, level = self.signal_levels(image, nuclei, radius)
        fg = (signal > 3 * noise) | (nuclei > 0)
        first = self.partition(signal, nuclei, fg, radius, levels=level)
        keep = (signal >= F32(self.cell_threshold) * level[first]) | (nuclei > 0)
        cells = attached_to_nucleus(np.where(keep, first, 0).astype(np.int32), nuclei)
        cells = fill_cell_holes(cells)
        if self.binucleate_gap > 0:
            cells, nuclei = merge_binucleate(
                cells,
                nuclei,
                signal,
                radius,
                max_gap=self.binucleate_gap,
                max_step=self.binucleate_step,
                min_valley=self.binucleate_valley,
            )
        return consistent_labels(cells, nuclei)

    def partition(
        self, signal: np.ndarray, nuclei: np.ndarray, fg: np.ndarray, radius: float, levels: np.ndarray | None = None
    ) -> np.ndarray:
        """Share the foreground among the nuclei with the ``boundary`` method.

        Parameters
        ----------
        signal : numpy.ndarray
            ``(h, w)`` float32 cell-body signal (:meth:`cell_signal`).
        nuclei : numpy.ndarray
            ``(h, w)`` int32 nucleus labels ``1..n``.
        fg : numpy.ndarray
            ``(h, w)`` bool foreground to share.
        radius : float
            Median nucleus radius (px).
        levels : numpy.ndarray, optional
            ``(n + 1,)`` perinuclear signal level of each nucleus (:func:`ring_levels`); the
            ``edges`` landscape fills each nucleus with it (see :func:`edge_partition`).

        Returns
        -------
        numpy.ndarray
            ``(h, w)`` int32: pixel -> nucleus id (0 outside ``fg``).
        """
        if self.boundary == "distance":
            return distance_partition(nuclei, fg)
        if self.boundary == "flood":
            lifted = np.where(nuclei > 0, np.maximum(signal, F32(self.clip)), signal)
            return watershed(-lifted, nuclei, mask=fg).astype(np.int32)
        return edge_partition(
            signal,
            nuclei,
            fg,
            radius,
            edge_weight=self.edge_weight,
            smoothing=self.edge_smoothing,
            compactness=self.compactness,
            seed_growth=2 * self.smoothing,
            fill=levels,
            lift=self.nucleus_lift,
        )


#: Partition methods of :attr:`WatershedSegmenter.boundary`.
BOUNDARIES: tuple[str, ...] = ("edges", "flood", "distance")


def distance_partition(nuclei: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Each ``fg`` pixel to its nearest nucleus (Euclidean; a Voronoi partition of the foreground).

    ``nuclei`` ``(h, w)`` int labels, ``fg`` ``(h, w)`` bool -> ``(h, w)`` int32 (0 outside ``fg``).
    """
    if not nuclei.any():
        return np.zeros(nuclei.shape, np.int32)
    _, (iy, ix) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
    return np.where(fg, nuclei[iy, ix], 0).astype(np.int32)


def edge_landscape(signal: np.ndarray, radius: float, *, edge_weight: float, smoothing: float) -> np.ndarray:
    """``-log(s) + edge_weight x R |grad log(s)|`` of the smoothed, floored signal.

    ``signal`` is ``(h, w)`` float32 normalised to the typical perinuclear level (~1); it is floored
    at 0.02 of that level before the log (the background is flat, not infinitely deep). Returns
    ``(h, w)`` float32.
    """
    sigma = max(smoothing * radius, 0.7)
    logs = np.log(np.maximum(ndi.gaussian_filter(signal, sigma), F32(0)) + F32(0.02))
    grad = ndi.gaussian_gradient_magnitude(logs, sigma)
    return (F32(edge_weight * radius) * grad - logs).astype(F32)


def edge_partition(
    signal: np.ndarray,
    nuclei: np.ndarray,
    fg: np.ndarray,
    radius: float,
    *,
    edge_weight: float = 0.18,
    smoothing: float = 0.04,
    compactness: float = 0.0,
    seed_growth: float = 0.12,
    fill: np.ndarray | None = None,
    lift: float = 0.12,
) -> np.ndarray:
    """The ``edges`` partition (module docstring): ``(h, w)`` inputs -> ``(h, w)`` int32 nucleus ids.

    The reference channels are dark over a nucleus, and their smoothing leaves a dim moat around
    it: a ridge of the landscape that a dim cell's seed would have to climb while a brighter
    neighbour floods on (issue 35: a 1.5x brighter cell took its neighbour whole). So the seeds are
    the nuclei grown by ``seed_growth x R``, and with ``fill`` (``(n + 1,)`` float, each nucleus's
    perinuclear level, :func:`ring_levels`) every pixel within ``lift x R`` of a nucleus is raised
    to at least that level before the landscape is computed.
    """
    grown = expand_labels(nuclei, seed_growth * radius)
    if fill is not None:
        near = grown if lift == seed_growth else expand_labels(nuclei, lift * radius)
        signal = np.where(near > 0, np.maximum(signal, fill[near]), signal).astype(F32)
    landscape = edge_landscape(signal, radius, edge_weight=edge_weight, smoothing=smoothing)
    seeds = np.where(fg, grown, 0)
    part = watershed(landscape, seeds, mask=fg, compactness=compactness / max(radius, 1.0))
    return part.astype(np.int32)


def attached_to_nucleus(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Keep each cell's pieces that touch its own nucleus (4-connected): ``(h, w)`` int labels -> same."""
    pieces = cc_label(cells, background=0, connectivity=1)
    anchored = np.zeros(int(pieces.max()) + 1, bool)
    anchored[np.unique(pieces[(nuclei > 0) & (cells == nuclei)])] = True
    anchored[0] = False
    return np.where(anchored[pieces], cells, 0).astype(np.int32)


def fill_cell_holes(cells: np.ndarray) -> np.ndarray:
    """Give background holes enclosed by one cell to that cell: ``(h, w)`` int labels -> same."""
    holes = ndi.binary_fill_holes(cells > 0) & (cells == 0)
    if not holes.any():
        return cells
    lab, _ = ndi.label(holes)
    out = cells.copy()
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        region = lab[sl] == k
        ring = ndi.binary_dilation(region, iterations=1, border_value=0) & ~region
        owners = np.unique(cells[sl][ring])
        owners = owners[owners > 0]
        if owners.size == 1:
            out[sl][region] = owners[0]
    return out


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
