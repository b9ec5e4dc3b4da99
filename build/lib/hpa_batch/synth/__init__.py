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

from hpa_batch.synth.dataset import SynthSummary, synthesize_dataset
from hpa_batch.synth.image import SynthImage, synthesize_image
from hpa_batch.synth.patterns import PATTERN_RENDERERS
from hpa_batch.synth.profiles import DEFAULT_CELL_LINES, CellLineProfile, cell_line_profile
from hpa_batch.synth.sheet import contact_sheet
from hpa_batch.synth.styles import ALL_STYLES, STYLES, SynthStyle, draw_style, get_style, parse_styles

__all__ = [
    "ALL_STYLES",
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
