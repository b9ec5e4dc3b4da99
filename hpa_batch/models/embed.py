"""The embed stage: one frozen encoder's embedding of every cell of one shard.

``results/embeddings/{encoder}/{shard}.zarr`` (zarr v3 group, built under a temporary name, renamed when
complete):

``embedding``   ``(n_cells, d)`` float32, chunks ``(chunk, d)`` where ``chunk`` is the tile store's
                cell chunk: row ``i`` is the cell of tile row ``i`` (same order, same chunk boundaries)
``cell_image``  ``(n_cells,)`` string image id;  ``cell_id`` ``(n_cells,)`` int32
attributes      ``hpa_batch``: the encoder entry, the weight file and its SHA-256 (or ``random_init``),
                the crop, the device and precision used, ``complete``

Crops come from the tile store (``crop.source: tiles``; each chunk read once) or from the shard's
OME-Zarr store around each cell (``crop.source: image``; one image's full-resolution planes and masks in
memory at a time), made by a background thread a few batches ahead of the encoder (:func:`prefetch`).
Memory holds one image and a few batches, whatever the shard's size; rows are written in whole chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import zarr

from hpa_batch import __version__
from hpa_batch.cells.tiles import (
    ChunkedAppender,
    TileReader,
    checked_codecs,
    crop_box,
    input_level,
    intensity_window,
    padded_crop,
)
from hpa_batch.config import TilesConfig
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.errors import reading
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.stamps import EmbeddingStamp
from hpa_batch.core.tables import read_parquet
from hpa_batch.models.encoders import create_encoder
from hpa_batch.models.transforms import ChannelMap, channel_map, mix_channels
from hpa_batch.spec import CropSpec, EncoderSpec


def _per_channel(values: tuple[float, ...], k: int, what: str) -> torch.Tensor:
    if len(values) not in (1, k):
        raise ValueError(f"crop.{what}: give one value or one per input channel ({k}), got {list(values)}")
    return torch.tensor(values * k if len(values) == 1 else values, dtype=torch.float32).view(1, k, 1, 1)


def finish_inputs(planes: torch.Tensor, chans: ChannelMap, crop: CropSpec) -> torch.Tensor:
    """Gathered canonical planes in [0, 1] -> the encoder's normalised inputs.

    Parameters
    ----------
    planes : torch.Tensor
        ``(b, len(chans.gather), s, s)`` float32 in [0, 1].

    Returns
    -------
    torch.Tensor
        ``(b, k, crop.size, crop.size)`` float32: channels mixed, resized (antialiased), per-crop
        min-max scaled with ``normalize: crop_minmax``, then ``(x - mean) / std``.
    """
    x = mix_channels(planes, chans.mix)
    if x.shape[-1] != crop.size:
        x = F.interpolate(x, size=(crop.size, crop.size), mode="bilinear", antialias=True, align_corners=False)
    if crop.normalize == "crop_minmax":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    k = x.shape[1]
    return (x - _per_channel(crop.mean, k, "mean").to(x)) / _per_channel(crop.std, k, "std").to(x)


def tile_batches(reader: TileReader, spec: EncoderSpec) -> Iterator[torch.Tensor]:
    """The encoder inputs of every row of a tile store's cells (``reader``), at most ``spec.batch_size``
    rows at a time, in row order; each chunk is read (and decoded) once, whatever the batch size."""
    chans = channel_map(spec.channels)
    for chunk in range(0, reader.n, reader.chunk):
        raw = reader.read_rows(chunk, min(chunk + reader.chunk, reader.n))[:, chans.gather]
        for start in range(0, len(raw), spec.batch_size):
            block = torch.from_numpy(raw[start : start + spec.batch_size]).float() / 255.0
            yield finish_inputs(block, chans, spec.crop)


def prefetch(batches: Iterator[torch.Tensor], depth: int = 2) -> Iterator[torch.Tensor]:
    """``batches`` made by a background thread, ``depth`` ahead, in order: the crops of the next batches
    (zarr reads, decoding, resizing) overlap the encoder's work on the current one. An error in the
    thread is raised here."""
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fill() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(("batch", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which raises it)
            q.put(("error", exc))

    thread = threading.Thread(target=fill, name="embed-crops", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def cell_window(
    image: np.ndarray,
    cells: np.ndarray,
    cell_id: int,
    box: tuple[int, int, int, int],
    *,
    window: np.ndarray,
    mask: bool,
) -> np.ndarray:
    """One cell's square crop of a full-resolution image, scaled to [0, 1] by the image's window.

    Parameters
    ----------
    image : numpy.ndarray
        ``(4, h, w)`` uint16.
    cells : numpy.ndarray
        ``(h, w)`` cell labels.
    box : tuple of int
        ``(top, left, bottom, right)`` square, may reach outside the image (zero padding).
    window : numpy.ndarray
        ``(4, 2)`` float32 per-channel ``(low, high)`` raw values mapped to 0 and 1.

    Returns
    -------
    numpy.ndarray
        ``(4, side, side)`` float32 in [0, 1].
    """
    lo, hi = window[:, :1, None], window[:, 1:, None]

    def scale(px: np.ndarray) -> np.ndarray:
        return np.clip((px.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)

    return padded_crop(image, cells, cell_id, box, scale=scale, mask=mask)


def window_box(bbox: tuple[int, int, int, int], crop: CropSpec, margin: float) -> tuple[int, int, int, int]:
    """The square a cell is cropped to: ``crop.window`` px centred on its box, or (``window: null``) the
    box grown by the tiles' ``margin`` as the tiles are cut."""
    if crop.window is None:
        return crop_box(bbox, margin)
    y0, x0, y1, x1 = bbox
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = int(np.floor(cy - crop.window / 2)), int(np.floor(cx - crop.window / 2))
    return top, left, top + crop.window, left + crop.window


def image_batches(
    reader: TileReader, store: Path, cells_path: Path, spec: EncoderSpec, tiles_cfg: TilesConfig
) -> Iterator[torch.Tensor]:
    """The encoder inputs of every row of a tile store's cells (``reader``) cut from the full-resolution
    image, in row order.

    Rows of one image are contiguous in a tile store; each image's planes and masks are read once.
    """
    chans = channel_map(spec.channels)
    with reading(reader.path):
        image_of = np.asarray(reader.group["cell_image"][:], dtype=object)
        cell_ids = reader.group["cell_id"][:]
    boxes = _boxes(cells_path, image_of, cell_ids)
    pending: list[torch.Tensor] = []
    start = 0
    while start < len(image_of):
        stop = start + 1
        while stop < len(image_of) and image_of[stop] == image_of[start]:
            stop += 1
        for crop in _image_crops(
            store / str(image_of[start]), cell_ids[start:stop], boxes[start:stop], spec, tiles_cfg
        ):
            pending.append(crop)
            if len(pending) == spec.batch_size:
                yield _finish_crops(pending, chans, spec.crop)
                pending = []
        start = stop
    if pending:
        yield _finish_crops(pending, chans, spec.crop)


def _finish_crops(crops: list[torch.Tensor], chans: ChannelMap, crop: CropSpec) -> torch.Tensor:
    """``(4, side, side)`` crops -> one batch of encoder inputs: crops of one size (a fixed ``window``)
    are resized in one call, crops of different sizes (``window: null``) one by one."""
    if len({tuple(c.shape) for c in crops}) == 1:
        return finish_inputs(torch.stack(crops)[:, chans.gather], chans, crop)
    return torch.cat([finish_inputs(c[None, chans.gather], chans, crop) for c in crops])


def _boxes(cells_path: Path, image_of: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """``(n, 4)`` int bounding boxes of the tile rows, from the shard's per-cell table.

    Raises
    ------
    ValueError
        A tile row whose cell is not in the table (tiles and cells of different runs), naming it.
    """
    cols = ["image_id", "cell_id", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]
    table = read_parquet(cells_path, columns=cols).set_index(["image_id", "cell_id"])
    keys = pd.MultiIndex.from_arrays([image_of, cell_ids.astype(np.int64)])
    pos = table.index.get_indexer(keys)
    if (pos < 0).any():
        bad = int(np.flatnonzero(pos < 0)[0])
        raise ValueError(
            f"{cells_path} has no row for tile row {bad} (image {image_of[bad]}, cell {cell_ids[bad]}): "
            "the tiles and the cells table come from different runs; rebuild the tiles"
        )
    return table[cols[2:]].to_numpy(np.int64)[pos]


def _image_crops(
    path: Path, cell_ids: np.ndarray, boxes: np.ndarray, spec: EncoderSpec, tiles_cfg: TilesConfig
) -> Iterator[torch.Tensor]:
    """``(4, side, side)`` float crops in [0, 1] of one image's cells, in the given order."""
    with reading(path.parent):  # a damaged chunk names the shard store
        group = zarr.open_group(path, mode="r", zarr_format=3)
        image = group["s0"][...]
        cells = group["labels"]["cells"]["s0"][...]
        small = group[input_level(group, tiles_cfg.image_size)][...]
    window = intensity_window(small, tiles_cfg.intensity)  # the tiles' window: same scaling as the tiles
    for cid, bbox in zip(cell_ids, boxes, strict=True):
        box = window_box(tuple(int(v) for v in bbox), spec.crop, tiles_cfg.margin)  # type: ignore[arg-type]
        yield torch.from_numpy(cell_window(image, cells, int(cid), box, window=window, mask=spec.crop.mask))


def autocast_for(device: torch.device, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (``auto``: fp16 on CUDA, none on CPU)."""
    import contextlib

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if precision == "auto":
        dtype = torch.float16 if device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def weights_digest(path: str | None) -> str | None:
    """SHA-256 of a weight file (None for a random-init encoder)."""
    from hpa_batch.core.receipts import file_sha256

    return None if path is None else file_sha256(Path(path).expanduser())


def embed_shard(
    spec: EncoderSpec,
    *,
    tiles: Path,
    out: Path,
    tiles_cfg: TilesConfig,
    store: Path | None = None,
    cells: Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Write ``out`` (``results/embeddings/{encoder}/{shard}.zarr``) for the cells of a tile store.

    Parameters
    ----------
    tiles : Path
        The shard's tile store (row order, chunking and, for ``crop.source: tiles``, the crops).
    store, cells : Path, optional
        The shard's OME-Zarr store and per-cell table: required for ``crop.source: image``.
    tiles_cfg : TilesConfig
        The tiles' settings: intensity window and margin of image crops.

    Returns
    -------
    dict
        The store's ``hpa_batch`` attributes.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = create_encoder(spec).to(dev)
    if spec.crop.source == "image" and (store is None or cells is None):
        raise ValueError(
            f"encoder {spec.name!r} crops from the image (crop.source: image): give the store and cells table"
        )
    reader = TileReader(tiles, "cells")
    batches = (
        image_batches(reader, store, cells, spec, tiles_cfg)  # type: ignore[arg-type]
        if spec.crop.source == "image"
        else tile_batches(reader, spec)
    )
    dim = int(cast(Any, encoder).dim)
    attrs = {
        "shard": tiles.name.removesuffix(".zarr"),
        "encoder": spec.to_entry(),
        "weights_sha256": weights_digest(spec.weights),
        "random_init": spec.weights is None,
        "dim": dim,
        "n_cells": reader.n,
        "device": dev.type,
        "precision": spec.precision,
        "version": __version__,
    }
    if spec.weights is None:
        get_logger().warning("encoder %s has no weights file: random initialisation (seed %d)", spec.name, spec.seed)
    with atomic_path(out) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        array = root.create_array(
            "embedding",
            shape=(reader.n, dim),
            dtype="float32",
            chunks=(reader.chunk, dim),
            compressors=checked_codecs(),
            dimension_names=("cell", "feature"),
        )
        appender = ChunkedAppender(array, reader.chunk)
        _encode(encoder, prefetch(batches), appender, dev, spec, Progress(reader.n, f"embed {spec.name}"))
        n = max(reader.n, 1)
        with reading(tiles):
            ids, cids = reader.group["cell_image"][:], reader.group["cell_id"][:]
        checked = checked_codecs()
        ids_array = root.create_array("cell_image", shape=(reader.n,), dtype=str, chunks=(n,), compressors=checked)
        ids_array[:] = np.asarray(ids, dtype=object)
        root.create_array("cell_id", shape=(reader.n,), dtype="int32", chunks=(n,), compressors=checked)[:] = cids
        attrs["content_sha256"] = hashlib.sha256(
            f"{appender.digest}\n{reader.group.attrs.get('hpa_batch', {}).get('content_sha256', '')}".encode()
        ).hexdigest()  # the embedding rows and the tile store they index
        root.attrs.update(EmbeddingStamp.from_dict({**attrs, "complete": True}).to_attrs())
    get_logger().info("embed %s: %d cells x %d -> %s", spec.name, reader.n, dim, out)
    return {**attrs, "complete": True}


@torch.no_grad()
def _encode(
    encoder: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    appender: ChunkedAppender,
    dev: torch.device,
    spec: EncoderSpec,
    progress: Progress,
) -> None:
    """Run the encoder over ``batches`` and append the float32 embeddings in whole chunks."""
    for x in batches:
        with autocast_for(dev, spec.precision):
            z = encoder(x.to(dev, non_blocking=True))
        z = z.float().cpu().numpy()
        if not np.isfinite(z).all():
            raise FloatingPointError(
                f"encoder {spec.name!r} produced non-finite embeddings (precision {spec.precision}: try fp32 or bf16)"
            )
        appender.add(z)
        progress.update(len(z))
    appender.close()
