"""Adapters for network segmenters: HPA-Cell-Segmentation (``hpacellseg``) and Cellpose.

Both are optional: they are used when their package is installed AND their weights are given as LOCAL
files in the config (``segmentation.options``). Nothing is ever downloaded: a missing file or package
raises :class:`~hpa_batch.cells.segment.BackendUnavailable` naming what is missing.

Each adapter separates three steps so the contract can be tested without the real weights:
loading the network (package + files), running it (``network`` may also be passed in directly, e.g. a
stand-in with the same methods), and turning its output into consistent ``cells`` / ``nuclei`` labels
(done here, with scikit-image, the same way for every backend).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.segmentation import watershed

from hpa_batch import CHANNELS
from hpa_batch.cells.segment.backends import BackendUnavailable, register_backend
from hpa_batch.cells.segment.watershed import consistent_labels, drop_small


def require_files(backend: str, **paths: str | None) -> dict[str, Path]:
    """Check that every weight file exists locally.

    Raises
    ------
    BackendUnavailable
        Naming the option and the path; weights are never downloaded.
    """
    out = {}
    for option, value in paths.items():
        if not value:
            raise BackendUnavailable(
                f"{backend}: segmentation.options.{option} is required (a LOCAL weights file; "
                "hpa_batch never downloads weights)"
            )
        path = Path(value).expanduser()
        if not path.is_file():
            raise BackendUnavailable(
                f"{backend}: weights file {path} (segmentation.options.{option}) "
                "does not exist; give a local file, nothing is downloaded"
            )
        out[option] = path
    return out


def require_package(backend: str, module: str, hint: str) -> None:
    """Raise :class:`BackendUnavailable` if ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"{backend}: the {module!r} package is not installed ({hint})")


def _unit(channel: np.ndarray) -> np.ndarray:
    """uint16 channel -> float32 in [0, 1] by its 99.9th percentile (networks expect that range)."""
    ch = channel.astype(np.float32)
    return np.clip(ch / max(float(np.percentile(ch, 99.9)), 1.0), 0.0, 1.0)


def labels_from_probabilities(
    nuc_prob: np.ndarray, cell_prob: np.ndarray, min_nucleus: int, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Cells and nuclei from per-pixel probabilities (nucleus body, cell body), as HPA-Cell-
    Segmentation's post-processing does: nuclei = connected components of the nucleus body, cells =
    watershed of the cell-body probability seeded by the nuclei.

    Parameters
    ----------
    nuc_prob, cell_prob : numpy.ndarray
        ``(h, w)`` float in [0, 1].

    Returns
    -------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int32, consistent ids.
    """
    nuclei = drop_small(cc_label(ndi.binary_fill_holes(nuc_prob > threshold)), min_nucleus)
    foreground = ndi.binary_fill_holes((cell_prob > threshold) | (nuclei > 0))
    cells = watershed(-cell_prob, nuclei, mask=foreground)
    return consistent_labels(cells.astype(np.int32), nuclei.astype(np.int32))


@register_backend("hpacellseg")
class HPACellSegSegmenter:
    """HPA-Cell-Segmentation (U-Nets trained on HPA images; package ``hpacellseg``).

    Parameters
    ----------
    nuclei_model, cell_model : str
        LOCAL paths of the nuclei and cell model weights (``dpn_unet_nuclei_v1.pth``,
        ``dpn_unet_cell_3ch_v1.pth``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    scale_factor : float
        Network input scale relative to the level handed in (the package's own parameter).
    min_nucleus_area : float
        Smaller nuclei are dropped (full-resolution px^2).
    network : object, optional
        Anything with ``pred_nuclei(list[(h, w) float]) -> list[(h, w, 3)]`` and
        ``pred_cells(list[list[(h, w) float]]) -> list[(h, w, 3)]``; skips loading (tests).
    """

    name = "hpacellseg"
    image_partitioned = False

    def __init__(
        self,
        nuclei_model: str | None = None,
        cell_model: str | None = None,
        device: str = "cpu",
        scale_factor: float = 0.25,
        min_nucleus_area: float = 1500.0,
        network: Any = None,
    ):
        self.min_nucleus_area = min_nucleus_area
        if network is None:
            files = require_files(self.name, nuclei_model=nuclei_model, cell_model=cell_model)
            require_package(
                self.name, "hpacellseg", "install HPA-Cell-Segmentation from its repository into the environment"
            )
            from hpacellseg.cellsegmentator import CellSegmentator

            network = CellSegmentator(
                str(files["nuclei_model"]),
                str(files["cell_model"]),
                scale_factor=scale_factor,
                device=device,
                padding=True,
                multi_channel_model=True,
            )
        self.network = network

    def segment(self, image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`hpa_batch.cells.segment.Segmenter`."""
        red, blue, yellow = (_unit(image[CHANNELS.index(c)]) for c in ("red", "blue", "yellow"))
        nuc = np.asarray(self.network.pred_nuclei([blue])[0], np.float32)
        cell = np.asarray(self.network.pred_cells([[red], [yellow], [blue]])[0], np.float32)
        if nuc.max() > 1.0:  # the package returns uint8 maps
            nuc, cell = nuc / 255.0, cell / 255.0
        # channel 2 = body, channel 1 = border (subtracting borders separates touching objects)
        nuc_body = np.clip(nuc[..., 2] - nuc[..., 1], 0, 1)
        min_area = max(int(self.min_nucleus_area / scale**2), 4)
        return labels_from_probabilities(nuc_body, cell[..., 2], min_area)


@register_backend("cellpose")
class CellposeSegmenter:
    """Cellpose (package ``cellpose``): a cell model on (ER + microtubules, nucleus) and a nucleus
    model on the nucleus channel; nuclei are matched to the cell they overlap most.

    Parameters
    ----------
    cell_model, nuclei_model : str
        LOCAL paths of Cellpose model files.
    gpu : bool
        Run on the GPU.
    diameter : float or None
        Expected cell diameter in full-resolution px (None = the model's own estimate).
    network, nuclei_network : object, optional
        Anything with ``eval(image (h, w, c) float, **kwargs) -> (masks, ...)``; skips loading (tests).
    """

    name = "cellpose"
    image_partitioned = False

    def __init__(
        self,
        cell_model: str | None = None,
        nuclei_model: str | None = None,
        gpu: bool = False,
        diameter: float | None = None,
        network: Any = None,
        nuclei_network: Any = None,
    ):
        self.diameter = diameter
        if network is None or nuclei_network is None:
            files = require_files(self.name, cell_model=cell_model, nuclei_model=nuclei_model)
            require_package(self.name, "cellpose", "pip install cellpose (needs torch)")
            from cellpose import models

            network = models.CellposeModel(gpu=gpu, pretrained_model=str(files["cell_model"]))
            nuclei_network = models.CellposeModel(gpu=gpu, pretrained_model=str(files["nuclei_model"]))
        self.network, self.nuclei_network = network, nuclei_network

    def segment(self, image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`hpa_batch.cells.segment.Segmenter`."""
        ref = (_unit(image[CHANNELS.index("red")]) + _unit(image[CHANNELS.index("yellow")])) / 2
        blue = _unit(image[CHANNELS.index("blue")])
        diameter = None if self.diameter is None else self.diameter / scale
        cells = np.asarray(self.network.eval(np.stack([ref, blue], -1), diameter=diameter)[0])
        nuclei = np.asarray(self.nuclei_network.eval(blue[..., None], diameter=None)[0])
        return match_nuclei(cells.astype(np.int32), nuclei.astype(np.int32))


def match_nuclei(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give each cell the nucleus that overlaps it most (renumbered to the cell's id), clip nuclei to
    their cell, drop cells without a nucleus.

    Parameters
    ----------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int label images from independent models.

    Returns
    -------
    cells, nuclei : numpy.ndarray
        ``(h, w)`` int32, consistent ids ``1..n``.
    """
    both = (cells > 0) & (nuclei > 0)
    pairs, counts = np.unique(np.stack([cells[both], nuclei[both]]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (cell, nuc), n in zip(pairs.T, counts):
        if n > best.get(int(cell), (0, 0))[1]:
            best[int(cell)] = (int(nuc), int(n))
    lut = np.zeros(int(nuclei.max()) + 1, np.int32)
    for cell, (nuc, _) in best.items():
        lut[nuc] = cell
    renamed = lut[nuclei]
    return consistent_labels(cells, np.where(renamed == cells, renamed, 0))
