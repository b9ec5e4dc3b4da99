"""Reading HPA channel files: locating them, probing headers, and decoding.

Headers are probed without decoding pixels (Pillow for PNG/JPEG, tifffile for TIFF) so the manifest
step can check 82,500 x 4 files cheaply; pixels are decoded with imagecodecs / tifffile only once,
during conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

#: Pillow modes accepted as single-channel grey images, and the dtype they decode to.
_PIL_MODES: dict[str, str] = {
    "L": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I;16L": "uint16",
    "I": "uint16",  # 16-bit PNG on some Pillow versions; range is checked at decode time
}
SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16")


class ImageReadError(ValueError):
    """A channel file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageHeader:
    """What a channel file's header says.

    Attributes
    ----------
    shape : tuple of int
        ``(height, width)``.
    dtype : str
        ``"uint8"`` or ``"uint16"``.
    """

    shape: tuple[int, int]
    dtype: str


def find_channel_file(
    image_dirs: Sequence[Path], image_id: str, channel: str, extensions: Sequence[str]
) -> Path | None:
    """First existing ``{dir}/{image_id}_{channel}.{ext}`` over dirs, then extensions."""
    for directory in image_dirs:
        for ext in extensions:
            candidate = Path(directory) / f"{image_id}_{channel}.{ext}"
            if candidate.is_file():
                return candidate
    return None


def _suffix(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def probe(path: Path) -> ImageHeader:
    """Read a channel file's header (no pixel decoding).

    Raises
    ------
    ImageReadError
        Empty file, unreadable header, more than one sample per pixel, or an unsupported dtype.
    """
    _refuse_empty(path)
    try:
        if _suffix(path) in ("tif", "tiff"):
            return _probe_tiff(path)
        return _probe_pil(path)
    except ImageReadError:
        raise
    except Exception as exc:  # any decoder error is a bad file, named with its reason
        raise ImageReadError(f"{path}: unreadable header ({type(exc).__name__}: {exc})") from exc


def _refuse_empty(path: Path) -> None:
    """A zero-byte file is named as such (decoders would only say they cannot identify it)."""
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if empty:
        raise ImageReadError(f"{path}: empty file (0 bytes)")


def _probe_tiff(path: Path) -> ImageHeader:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape if s != 1)
        dtype = np.dtype(series.dtype).name
    if len(shape) != 2:
        raise ImageReadError(f"{path}: not a 2-D grayscale image (shape {tuple(series.shape)})")
    if dtype not in SUPPORTED_DTYPES:
        raise ImageReadError(f"{path}: unsupported dtype {dtype} (need uint8 or uint16)")
    return ImageHeader((shape[0], shape[1]), dtype)


def _probe_pil(path: Path) -> ImageHeader:
    with Image.open(path) as im:
        mode, (width, height) = im.mode, im.size
    if mode not in _PIL_MODES:
        raise ImageReadError(f"{path}: not a 2-D grayscale 8/16-bit image (mode {mode}, {len(mode)} band(s))")
    return ImageHeader((int(height), int(width)), _PIL_MODES[mode])


def read_channel(path: Path) -> np.ndarray:
    """Decode one channel file.

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` uint8 or uint16.

    Raises
    ------
    ImageReadError
        Empty file, truncated or corrupt data, or a decoded array that is not 2-D uint8/uint16.
    """
    _refuse_empty(path)
    try:
        data = path.read_bytes()
        ext = _suffix(path)
        if ext in ("tif", "tiff"):
            arr = tifffile.imread(path)
        elif ext == "png":
            arr = imagecodecs.png_decode(data)
        else:
            arr = imagecodecs.imread(data)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: decoded to shape {arr.shape}, not a 2-D grayscale image")
    if arr.dtype.name not in SUPPORTED_DTYPES:
        raise ImageReadError(f"{path}: decoded dtype {arr.dtype} is not uint8/uint16")
    return arr


def to_uint16(arr: np.ndarray) -> np.ndarray:
    """Bring a channel to the store's dtype.

    8-bit inputs are scaled by 257 so 0..255 maps exactly onto 0..65535 (every store is uint16,
    whatever the source); 16-bit inputs pass through unchanged.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(h, w)`` uint8 or uint16.

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` uint16.
    """
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16) * np.uint16(257)
    raise ImageReadError(f"unsupported dtype {arr.dtype}")
