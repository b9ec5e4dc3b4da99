"""Zarr v3 arrays held in ONE shard (``sharding_indexed`` codec), written in one pass, and their shard index.

The pipeline stores every pyramid level as one shard file: the level's chunks (one channel x
``chunk`` x ``chunk``), each Blosc-compressed and followed by its CRC32C (zarr's ``crc32c`` codec: a
flipped byte fails to decode instead of reading back as other pixels), one after another in Morton
order, then the shard index
(``(offset, nbytes)`` little-endian uint64 per chunk, in C order of the chunk grid) and the index's
CRC32C. zarr-python writes that format through its asynchronous codec pipeline: chunk splitting, buffer
copies and an event loop that runs one encode at a time cost ~30 % more CPU than encoding the chunks
themselves, and threads of one job queue behind that loop (``bench/convert.py``). :func:`write_array`
writes the same bytes directly: the array's ``zarr.json`` as zarr-python serialises it (made once per
shape, dtype and codec in a memory store), numcodecs compresses each chunk with the same Blosc settings
(the GIL is released while it does), and the shard file is written sequentially, once. Group metadata
is serialised by zarr-python's ``GroupMetadata`` and written as a plain file (:func:`write_group`,
:func:`update_group_attributes`), which saves the ~4 ms of event-loop round trips each zarr call costs
(five per image). ``tests/core/test_shards.py`` checks every file is byte-identical to zarr-python's for
the level shapes the pipeline makes, and that zarr-python reads them back.

:func:`check_shard_index` is the reading side of the same format: the completeness check of a shard
file from its index alone.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.indexing import morton_order_iter
from zarr.storage import MemoryStore

from hpa_batch.core.atomic import atomic_write_text

EMPTY = np.uint64(2**64 - 1)  # index offset of a chunk absent from a shard
_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


class IncompleteShardError(RuntimeError):
    """A shard file that is missing, truncated, corrupt or lacks chunks."""


@dataclass(frozen=True)
class CodecConfig:
    """Blosc settings for every chunk (zarr.codecs.BloscCodec)."""

    cname: str
    clevel: int
    shuffle: str


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
        compressors=[zarr_blosc(codec), Crc32cCodec()],
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
        encoded = bytes(encoded) + _crc(encoded)  # the crc32c codec after Blosc
        pieces.append(encoded)
        index[coords] = (offset, len(encoded))
        offset += len(encoded)
    index_bytes = index.tobytes()
    pieces += [index_bytes, _crc(index_bytes)]
    return pieces


def _crc(data: bytes) -> bytes:
    """CRC32C of ``data`` as 4 little-endian bytes (what zarr's ``crc32c`` codec appends)."""
    return int(google_crc32c.value(data)).to_bytes(4, "little")


@functools.lru_cache(maxsize=64)
def _array_metadata(
    shape: tuple[int, ...], dtype: str, chunk: int, codec: CodecConfig
) -> tuple[bytes, str, tuple[int, ...]]:
    """``zarr.json`` bytes, the one shard's key and the inner chunk shape of an array made by
    :func:`create_array` (created once in a memory store; zarr-python's own serialisation)."""
    arr = create_array(zarr.open_group(MemoryStore(), mode="w"), "a", shape, chunk=chunk, codec=codec, dtype=dtype)
    meta = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    return meta, arr.metadata.encode_chunk_key((0,) * len(shape)), tuple(arr.chunks)


def write_array(path: Path, data: np.ndarray, *, chunk: int, codec: CodecConfig) -> None:
    """Write ``data`` as the array at ``path`` (a folder in a zarr group): its ``zarr.json`` and its one shard.

    Parameters
    ----------
    data : numpy.ndarray
        ``(c, y, x)`` or ``(y, x)`` integer array (uint16 images, uint32 labels); chunked as
        :func:`create_array` says.
    """
    meta, key, inner = _array_metadata(data.shape, data.dtype.name, chunk, codec)
    target = Path(path) / key
    target.parent.mkdir(parents=True, exist_ok=True)
    (Path(path) / "zarr.json").write_bytes(meta)
    with open(target, "wb") as fh:
        fh.writelines(encode_shard(data, inner, chunk_compressor(codec, data.dtype)))


def group_metadata(attributes: dict[str, Any]) -> bytes:
    """``zarr.json`` of a zarr v3 group with ``attributes``, as zarr-python serialises it."""
    meta = GroupMetadata(attributes=attributes, zarr_format=3)
    return meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def write_group(path: Path, attributes: dict[str, Any], *, replace: bool = False) -> None:
    """Create the zarr v3 group at ``path`` with ``attributes``. With ``replace`` whatever was at ``path``
    goes first (as zarr-python's ``mode="w"``); otherwise existing contents are kept."""
    path = Path(path)
    if replace and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_bytes(group_metadata(attributes))


def update_group_attributes(path: Path, updates: dict[str, Any]) -> None:
    """Set top-level attribute keys of the group at ``path`` (as ``group.attrs.update``), replacing its
    ``zarr.json`` atomically (:func:`hpa_batch.core.atomic.atomic_write_text`): a job killed meanwhile
    leaves the old metadata, never half of it."""
    meta_path = Path(path) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    if meta.get("node_type") != "group":
        raise ValueError(f"{meta_path}: not a zarr group")
    attributes = {**meta.get("attributes", {}), **updates}
    atomic_write_text(meta_path, group_metadata(attributes).decode("utf-8"))


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
