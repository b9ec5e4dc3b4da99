"""Zarr v3 arrays held in ONE shard (``sharding_indexed`` codec), written in one pass, and their shard index.

The pipeline stores every pyramid level as one shard file: the level's chunks (one channel x
``chunk`` x ``chunk``), each Blosc-compressed, one after another in Morton order, then the shard index
(``(offset, nbytes)`` little-endian uint64 per chunk, in C order of the chunk grid) and the index's
CRC32C. zarr-python writes that format through its asynchronous codec pipeline: chunk splitting, buffer
copies and an event loop that runs one encode at a time cost ~30 % more CPU than encoding the chunks
themselves, and threads of one job queue behind that loop (``bench/convert.py``). :func:`write_array`
writes the same bytes directly: zarr-python creates the array's metadata (``zarr.json``), numcodecs
compresses each chunk with the same Blosc settings (the GIL is released while it does), and the shard
file is written sequentially, once. ``tests/core/test_shards.py`` checks the files are byte-identical
to zarr-python's for every level shape the pipeline makes, and that zarr-python reads them back.

:func:`check_shard_index` is the reading side of the same format: the completeness check of a shard
file from its index alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec
from zarr.core.indexing import morton_order_iter

from hpa_batch.config import CodecConfig

EMPTY = np.uint64(2**64 - 1)  # index offset of a chunk absent from a shard
_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


class IncompleteShardError(RuntimeError):
    """A shard file that is missing, truncated, corrupt or lacks chunks."""


def zarr_blosc(codec: CodecConfig) -> BloscCodec:
    """The zarr.codecs Blosc codec of a :class:`CodecConfig` (recorded in the array metadata)."""
    return BloscCodec(cname=codec.cname, clevel=codec.clevel, shuffle=codec.shuffle)


def chunk_compressor(codec: CodecConfig, dtype: np.dtype) -> Blosc:
    """The numcodecs Blosc that produces the bytes zarr's Blosc codec writes for chunks of ``dtype``
    (typesize = item size, automatic block size)."""
    return Blosc(
        cname=codec.cname, clevel=codec.clevel, shuffle=_SHUFFLE[codec.shuffle], blocksize=0, typesize=dtype.itemsize
    )


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], *, chunk: int, codec: CodecConfig, dtype: str
) -> zarr.Array:
    """Create (metadata only) a ``(c, y, x)`` array chunked ``(1, chunk, chunk)`` or a ``(y, x)`` one chunked
    ``(chunk, chunk)``, whose single shard covers the whole array; fill value 0, every chunk stored."""
    h, w = shape[-2:]
    spatial = (math.ceil(h / chunk) * chunk, math.ceil(w / chunk) * chunk)
    lead = shape[:-2]
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(*(1 for _ in lead), chunk, chunk),
        shards=(*lead, *spatial),
        compressors=[zarr_blosc(codec)],
        fill_value=0,
        dimension_names=("c", "y", "x")[-len(shape) :],
        config={"write_empty_chunks": True},
    )


def encode_shard(data: np.ndarray, chunks: Sequence[int], compressor: Blosc) -> list[bytes]:
    """The byte pieces of one shard holding all of ``data``: the chunks in Morton order, the index, its CRC32C.

    Parameters
    ----------
    data : numpy.ndarray
        ``(..., y, x)`` array of any integer dtype; edge chunks are padded with the fill value 0.
    chunks : sequence of int
        Chunk shape, one entry per axis of ``data``.
    compressor : numcodecs.Blosc
        From :func:`chunk_compressor`.

    Returns
    -------
    list of bytes
        Pieces to write in order; their concatenation is the shard file.
    """
    grid = tuple(math.ceil(n / c) for n, c in zip(data.shape, chunks, strict=True))
    index = np.full((*grid, 2), EMPTY, dtype="<u8")
    little = data.dtype.newbyteorder("<")
    pieces: list[bytes] = []
    offset = 0
    for coords in morton_order_iter(grid):
        region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks, strict=True))
        tile = data[region]
        if tile.shape != tuple(chunks):
            block = np.zeros(tuple(chunks), little)
            block[tuple(slice(0, n) for n in tile.shape)] = tile
            tile = block
        encoded = compressor.encode(np.ascontiguousarray(tile, dtype=little))
        pieces.append(encoded)
        index[coords] = (offset, len(encoded))
        offset += len(encoded)
    index_bytes = index.tobytes()
    pieces += [index_bytes, np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()]
    return pieces


def write_array(
    group: zarr.Group, name: str, data: np.ndarray, *, chunk: int, codec: CodecConfig, group_path: Path
) -> None:
    """Create array ``name`` in ``group`` (stored at ``group_path``) and write all of ``data`` as its one shard.

    Parameters
    ----------
    data : numpy.ndarray
        ``(c, y, x)`` or ``(y, x)`` integer array (uint16 images, uint32 labels).
    """
    arr = create_array(group, name, data.shape, chunk=chunk, codec=codec, dtype=data.dtype.name)
    inner = arr.chunks
    key = arr.metadata.encode_chunk_key((0,) * data.ndim)
    target = Path(group_path) / name / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fh:
        fh.writelines(encode_shard(data, inner, chunk_compressor(codec, data.dtype)))


def check_shard_index(shard_path: Path, n_chunks: int) -> None:
    """Verify one shard file: size, index checksum, and every chunk present within the file.

    Raises
    ------
    IncompleteShardError
        Missing file, truncated file, bad checksum, or a chunk absent from the index.
    """
    index_len = n_chunks * 16 + 4
    try:
        size = shard_path.stat().st_size
    except FileNotFoundError:
        raise IncompleteShardError(f"{shard_path}: shard file missing") from None
    if size < index_len:
        raise IncompleteShardError(f"{shard_path}: {size} bytes, shorter than its index")
    with open(shard_path, "rb") as fh:
        fh.seek(size - index_len)
        tail = fh.read(index_len)
    body, crc = tail[:-4], tail[-4:]
    if np.uint32(google_crc32c.value(body)).astype("<u4").tobytes() != crc:
        raise IncompleteShardError(f"{shard_path}: shard index checksum mismatch (truncated or corrupt)")
    index = np.frombuffer(body, dtype="<u8").reshape(n_chunks, 2)
    if np.any(index[:, 0] == EMPTY):
        missing = int(np.sum(index[:, 0] == EMPTY))
        raise IncompleteShardError(f"{shard_path}: {missing} of {n_chunks} chunks missing")
    if np.any(index[:, 0] + index[:, 1] > size - index_len):
        raise IncompleteShardError(f"{shard_path}: chunk extends past the data section")
