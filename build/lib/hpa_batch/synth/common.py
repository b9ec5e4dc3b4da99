"""Constants and shared imports of the synthetic generator."""

from __future__ import annotations

import numpy as np

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
