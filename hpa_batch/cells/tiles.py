"""Packed cell tiles and whole-image inputs for the models: ``results/tiles/{shard}.zarr``.

Store layout (zarr v3 group, attributes record every setting, the intensity mapping included):

``cells``        ``(n_cells, 4, S, S)`` uint8, chunks ``(chunk_tiles, 4, S, S)``: one chunk holds many
                 tiles, so a training loader reads a chunk per ``chunk_tiles`` tiles, never a file each
``cell_image``   ``(n_cells,)`` string image id;  ``cell_id`` ``(n_cells,)`` int32 (row -> cell)
``features``     ``(n_cells, f)`` float32, chunks ``(chunk_tiles, f)``: the cell's hand-crafted design row
                 (:func:`hpa_batch.cells.measure.feature_matrix`; columns in the ``feature_columns`` attribute),
                 read chunk by chunk beside the tiles by hybrid models
``images``       ``(n_images, 4, S_img, S_img)`` uint8, chunks ``(1, 4, S_img, S_img)``
``image_id``     ``(n_images,)`` string
``image_features`` ``(n_images, 10)`` float32, one chunk: study 002's image features
                 (:func:`hpa_batch.cells.measure.image_feature_row`, measured on the pyramid level the image
                 input is made from; columns in ``image_feature_columns``), read by hybrid image models

Per cell: crop the full-resolution bounding box grown by ``margin`` (x the box's longer side),
optionally zero outside the cell mask, pad to a centred square with zeros, resize to ``S`` (area
averaging, Pillow), map 16-bit to uint8 with the image's per-channel intensity window. Rows follow the
per-cell table's order. The store is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from PIL import Image
from zarr.codecs import BloscCodec, Crc32cCodec

from hpa_batch import CHANNELS, __version__
from hpa_batch.cells.measure import (
    FEATURE_COLUMNS,
    IMAGE_FEATURE_COLUMNS,
    feature_matrix,
    image_feature_row,
)
from hpa_batch.config import Config, IntensityConfig, MeasureConfig, TilesConfig
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.errors import reading
from hpa_batch.core.ngff import level_paths
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.stamps import TileStamp
from hpa_batch.core.tables import read_parquet


def features_array(group: zarr.Group, where: Path | str, array: str = "cells") -> zarr.Array:
    """The feature rows of the ``array`` rows (``"cells"``: ``features``, ``"images"``:
    ``image_features``) of an open tile store (``where`` names it in the error).

    Raises
    ------
    ValueError
        The store predates feature rows: its tiles must be rebuilt for a hybrid model.
    """
    name = "features" if array == "cells" else "image_features"
    if name not in group:
        raise ValueError(
            f"{where} has no {name!r} array: rebuild the tiles of that shard (stores written "
            "before hybrid models lack it)"
        )
    return group[name]


def intensity_window(image: np.ndarray, spec: IntensityConfig) -> np.ndarray:
    """Per-channel ``(low, high)`` raw values mapped to 0 and 255.

    Parameters
    ----------
    image : numpy.ndarray
        ``(4, h, w)`` uint16 (any pyramid level: percentiles are computed on what is given).

    Returns
    -------
    numpy.ndarray
        ``(4, 2)`` float32.
    """
    if spec.mode == "fixed":
        return np.tile(np.array([spec.low, spec.high], np.float32), (image.shape[0], 1))
    flat = image.reshape(image.shape[0], -1)
    lo, hi = np.percentile(flat, [spec.low, spec.high], axis=1).astype(np.float32)
    return np.stack([lo, np.maximum(hi, lo + 1)], axis=1)


def to_uint8(pixels: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Map ``(4, ...)`` intensities through a ``(4, 2)`` window to uint8 (clipped)."""
    shape = (-1,) + (1,) * (pixels.ndim - 1)
    lo, hi = window[:, 0].reshape(shape), window[:, 1].reshape(shape)
    scaled = (pixels.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize(planes: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(c, h, w)`` float32 planes to ``(c, size, size)`` (Pillow, area averaging down)."""
    out = np.empty((planes.shape[0], size, size), np.float32)
    for i, plane in enumerate(planes):
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        method = Image.Resampling.BOX if plane.shape[0] >= size else Image.Resampling.BILINEAR
        out[i] = np.asarray(img.resize((size, size), method))
    return out


def crop_box(bbox: tuple[int, int, int, int], margin: float) -> tuple[int, int, int, int]:
    """Square box centred on ``bbox`` (y0, x0, y1, x1), side = longer side x (1 + 2 margin)."""
    y0, x0, y1, x1 = bbox
    side = int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = int(np.floor(cy - side / 2)), int(np.floor(cx - side / 2))
    return top, left, top + side, left + side


def padded_crop(
    image: np.ndarray,
    cells: np.ndarray,
    cell_id: int,
    box: tuple[int, int, int, int],
    *,
    scale: Callable[[np.ndarray], np.ndarray],
    mask: bool,
) -> np.ndarray:
    """The ``box`` (top, left, bottom, right; may reach outside the image) of ``image`` ``(c, h, w)``:
    the pixels inside the image passed through ``scale`` (raw -> float32), optionally zero outside the
    cell ``cell_id`` of ``cells`` ``(h, w)``, zero padding elsewhere. Returns ``(c, bottom - top,
    right - left)`` float32 (the one crop geometry of the tiles and the encoders' windows)."""
    top, left, bottom, right = box
    h, w = cells.shape
    sy0, sx0, sy1, sx1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    out = np.zeros((image.shape[0], bottom - top, right - left), np.float32)
    if sy1 <= sy0 or sx1 <= sx0:
        return out
    crop = scale(image[:, sy0:sy1, sx0:sx1])
    if mask:
        crop = crop * (cells[sy0:sy1, sx0:sx1] == cell_id)
    out[:, sy0 - top : sy1 - top, sx0 - left : sx1 - left] = crop
    return out


def cell_tile(
    image: np.ndarray,
    cells: np.ndarray,
    cell_id: int,
    bbox: tuple[int, int, int, int],
    *,
    window: np.ndarray,
    spec: TilesConfig,
) -> np.ndarray:
    """One cell's tile.

    Parameters
    ----------
    image : numpy.ndarray
        ``(4, h, w)`` uint16 full resolution.
    cells : numpy.ndarray
        ``(h, w)`` labels.
    bbox : tuple of int
        ``(y0, x0, y1, x1)`` of the cell, full resolution.

    Returns
    -------
    numpy.ndarray
        ``(4, S, S)`` uint8.
    """
    box = crop_box(bbox, spec.margin)
    # map to uint8 first so padding and masked pixels are 0 in the model's range
    canvas = padded_crop(
        image, cells, cell_id, box, scale=lambda px: to_uint8(px, window).astype(np.float32), mask=spec.mask_outside
    )
    return np.clip(np.rint(resize(canvas, spec.size)), 0, 255).astype(np.uint8)


def image_input(level: np.ndarray, window: np.ndarray, size: int) -> np.ndarray:
    """Whole-image input: ``(4, h, w)`` uint16 -> ``(4, size, size)`` uint8 (padded to square)."""
    h, w = level.shape[1:]
    side = max(h, w)
    canvas = np.zeros((level.shape[0], side, side), np.float32)
    canvas[:, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = to_uint8(level, window)
    return np.clip(np.rint(resize(canvas, size)), 0, 255).astype(np.uint8)


class ChunkedAppender:
    """Appends rows to a zarr array in whole chunks (one writer; no chunk is written twice), hashing
    the rows as they go (:attr:`digest`: SHA-256 of the rows' bytes in order, the store's content
    identity that a training's data digest records)."""

    def __init__(self, array: zarr.Array, chunk: int):
        self.array, self.chunk = array, chunk
        self.buffer: list[np.ndarray] = []
        self.written = 0
        self._sha = hashlib.sha256()

    @property
    def digest(self) -> str:
        """Hex SHA-256 of every row flushed so far."""
        return self._sha.hexdigest()

    def add(self, rows: np.ndarray) -> None:
        """Queue ``rows`` (``(k, ...)``); flush every full chunk."""
        self.buffer.extend(rows)
        while len(self.buffer) >= self.chunk:
            self._flush(self.chunk)

    def _flush(self, n: int) -> None:
        block = np.ascontiguousarray(np.stack(self.buffer[:n]))
        self._sha.update(block.data)
        self.array[self.written : self.written + n] = block
        self.written += n
        del self.buffer[:n]

    def close(self) -> None:
        """Write what remains (the last, partial chunk)."""
        if self.buffer:
            self._flush(len(self.buffer))


def input_level(group: zarr.Group, size: int) -> str:
    """Coarsest level whose longer side is still >= ``size`` (downscale only)."""
    names = level_paths(group)
    fitting = [n for n in names if max(group[n].shape[-2:]) >= size]
    return fitting[-1] if fitting else names[0]


def image_tiles(
    path: Path, cells_table: pd.DataFrame, spec: TilesConfig, measure: MeasureConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tiles of one image's cells (rows of ``cells_table`` for that image), its whole-image input and
    its image feature row.

    Returns
    -------
    tiles : numpy.ndarray
        ``(k, 4, S, S)`` uint8 in the table's row order.
    cell_ids : numpy.ndarray
        ``(k,)`` int32.
    whole : numpy.ndarray
        ``(4, S_img, S_img)`` uint8.
    image_row : numpy.ndarray
        ``(len(IMAGE_FEATURE_COLUMNS),)`` float32, measured on the input's pyramid level.
    """
    rows = cells_table if spec.include_border else cells_table[~cells_table["border"]]
    with reading(path.parent):  # a damaged chunk names the shard store (repair removes the image)
        group = zarr.open_group(path, mode="r", zarr_format=3)
        image = group["s0"][...]
        level = input_level(group, spec.image_size)
        small = group[level][...]
        labels = group["labels"]
        cells = labels["cells"]["s0"][...] if len(rows) else None  # full-resolution masks only when tiled
        level_cells, level_nuclei = labels["cells"][level][...], labels["nuclei"][level][...]
    window = intensity_window(small, spec.intensity)
    tiles = np.zeros((len(rows), 4, spec.size, spec.size), np.uint8)
    if cells is not None:
        for i, r in enumerate(rows.itertuples()):
            bbox = (r.bbox_y0, r.bbox_x0, r.bbox_y1, r.bbox_x1)
            tiles[i] = cell_tile(image, cells, int(r.cell_id), bbox, window=window, spec=spec)
    whole = image_input(small, window, spec.image_size)
    image_row = image_feature_row(small, level_cells, level_nuclei, measure)
    return tiles, rows["cell_id"].to_numpy(np.int32), whole, image_row


def checked_codecs() -> list[BloscCodec | Crc32cCodec]:
    """The bytes codecs of every row store (tiles, embeddings): Blosc zstd, then a CRC32C per chunk so a
    flipped byte fails to decode instead of reading back as other values."""
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]


def _create(root: zarr.Group, n_cells: int, n_images: int, spec: TilesConfig) -> dict[str, zarr.Array]:
    codec = checked_codecs()
    s, si = spec.size, spec.image_size
    return {
        "cells": root.create_array(
            "cells",
            shape=(n_cells, 4, s, s),
            dtype="uint8",
            chunks=(spec.chunk_tiles, 4, s, s),
            compressors=codec,
            dimension_names=("cell", "c", "y", "x"),
        ),
        "cell_image": root.create_array(
            "cell_image", shape=(n_cells,), dtype=str, chunks=(max(n_cells, 1),), compressors=codec
        ),
        "cell_id": root.create_array(
            "cell_id", shape=(n_cells,), dtype="int32", chunks=(max(n_cells, 1),), compressors=codec
        ),
        "features": root.create_array(
            "features",
            shape=(n_cells, len(FEATURE_COLUMNS)),
            dtype="float32",
            chunks=(spec.chunk_tiles, len(FEATURE_COLUMNS)),
            compressors=codec,
            dimension_names=("cell", "feature"),
        ),
        "images": root.create_array(
            "images",
            shape=(n_images, 4, si, si),
            dtype="uint8",
            chunks=(1, 4, si, si),
            compressors=codec,
            dimension_names=("image", "c", "y", "x"),
        ),
        "image_id": root.create_array(
            "image_id", shape=(n_images,), dtype=str, chunks=(max(n_images, 1),), compressors=codec
        ),
        "image_features": root.create_array(
            "image_features",
            shape=(n_images, len(IMAGE_FEATURE_COLUMNS)),
            dtype="float32",
            chunks=(max(n_images, 1), len(IMAGE_FEATURE_COLUMNS)),
            compressors=codec,
            dimension_names=("image", "feature"),
        ),
    }


def _iter_images(
    store: Path, table: pd.DataFrame, image_ids: list[str], spec: TilesConfig, measure: MeasureConfig
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: id, tiles, cell ids, whole-image input, its image feature row and the cells'
    feature rows (same order as the tiles)."""
    groups = {k: g for k, g in table.groupby("image_id", sort=False)}
    empty = table.iloc[:0]
    for image_id in image_ids:
        rows = groups.get(image_id, empty)
        try:
            yield image_id, *image_tiles(store / image_id, rows, spec, measure), feature_matrix(rows)
        except Exception as exc:
            raise RuntimeError(f"tiles of image {image_id} ({store / image_id}) failed: {exc}") from exc


def tiles_shard(cfg: Config, store: Path, cells_path: Path, out: Path) -> dict[str, Any]:
    """Build ``results/tiles/{shard}.zarr`` from a segmented store and its per-cell table."""
    from hpa_batch.core.ngff import image_groups

    spec = cfg.tiles
    table = read_parquet(
        cells_path,
        columns=["image_id", "cell_id", "border", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", *FEATURE_COLUMNS],
    )
    if not spec.include_border:
        table = table[~table["border"]]
    image_ids = [p.name for p in image_groups(store)]
    with atomic_path(out) as tmp:
        attrs = _write_store(cfg, store, table, image_ids, tmp)
    get_logger().info("tiles %s: %d cell tiles, %d image inputs", out, len(table), len(image_ids))
    return attrs


def _write_store(cfg: Config, store: Path, table: pd.DataFrame, image_ids: list[str], tmp: Path) -> dict[str, Any]:
    """Every array of a tile store into ``tmp``; returns its ``hpa_batch`` attributes."""
    spec = cfg.tiles
    root = zarr.open_group(tmp, mode="w", zarr_format=3)
    arrays = _create(root, len(table), len(image_ids), spec)
    appender = ChunkedAppender(arrays["cells"], spec.chunk_tiles)
    feature_rows = ChunkedAppender(arrays["features"], spec.chunk_tiles)
    progress = Progress(len(image_ids), f"tiles {store.name}")
    cell_image, cell_ids = [], []
    image_rows = np.zeros((len(image_ids), len(IMAGE_FEATURE_COLUMNS)), np.float32)  # 40 B per image
    images = _iter_images(store, table, image_ids, spec, cfg.measure)
    image_sha = hashlib.sha256()  # the whole-image inputs, as the appenders hash the tile rows
    for k, (image_id, tiles, ids, whole, image_row, feats) in enumerate(images):
        appender.add(tiles)
        feature_rows.add(feats)
        cell_image += [image_id] * len(ids)
        cell_ids.append(ids)
        arrays["images"][k] = whole
        image_sha.update(np.ascontiguousarray(whole).data)
        image_rows[k] = image_row
        progress.update(1)
    appender.close()
    feature_rows.close()
    if len(table):
        arrays["cell_image"][:] = np.array(cell_image, dtype=object)
        arrays["cell_id"][:] = np.concatenate(cell_ids)
    if image_ids:
        arrays["image_id"][:] = np.array(image_ids, dtype=object)
        arrays["image_features"][:] = image_rows
    attrs = {
        "shard": store.name.removesuffix(".zarr"),
        "channels": list(CHANNELS),
        "n_cells": len(table),
        "n_images": len(image_ids),
        "settings": asdict(cfg.tiles),
        "feature_columns": list(FEATURE_COLUMNS),
        "image_feature_columns": list(IMAGE_FEATURE_COLUMNS),
        "intensity": {
            "mode": spec.intensity.mode,
            "low": spec.intensity.low,
            "high": spec.intensity.high,
            "to": "uint8 0..255",
            "computed_on": "per image and channel, on the pyramid level used for the image input",
        },
        "content_sha256": _content_digest(
            [appender.digest, feature_rows.digest, image_sha.hexdigest()], cell_image, cell_ids, image_ids, image_rows
        ),
        "complete": True,
        "version": __version__,
    }
    root.attrs.update(TileStamp.from_dict(attrs).to_attrs())
    return attrs


def _content_digest(
    rows: list[str],
    cell_image: list[str],
    cell_ids: list[np.ndarray],
    image_ids: list[str],
    image_rows: np.ndarray,
) -> str:
    """SHA-256 over a tile store's content: the digests of its row arrays (tiles, feature rows, whole-image
    inputs), the row ids and the image feature rows."""
    sha = hashlib.sha256("\n".join(rows).encode())
    sha.update("\0".join(cell_image).encode())
    for ids in cell_ids:
        sha.update(np.ascontiguousarray(ids, np.int64).data)
    sha.update("\0".join(image_ids).encode())
    sha.update(np.ascontiguousarray(image_rows).data)
    return sha.hexdigest()


class TileReader:
    """Reads a tile store's rows in order, as inference does (training reads through
    :mod:`hpa_batch.models.loader`: epoch plans of whole chunks in shuffle buffers).

    Parameters
    ----------
    path : str or Path
        ``results/tiles/{shard}.zarr``.
    array : str
        ``"cells"`` or ``"images"``.
    """

    def __init__(self, path: str | Path, array: str = "cells"):
        self.path = Path(path)
        with reading(path):
            self.group = zarr.open_group(path, mode="r", zarr_format=3)
            self.array = self.group[array]
        self.kind = array
        self.n = int(self.array.shape[0])
        self.chunk = int(self.array.chunks[0])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``: ``(k, 4, S, S)`` uint8."""
        with reading(self.path):
            return self.array[start:stop]

    def read_features(self, start: int, stop: int) -> np.ndarray:
        """Feature rows ``start:stop`` of the cells (or images): ``(k, f)`` float32."""
        rows = features_array(self.group, self.path, self.kind)  # refuses a store without them, by name
        with reading(self.path):
            return np.asarray(rows[start:stop], np.float32)
