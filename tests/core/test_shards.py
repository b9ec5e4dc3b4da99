"""The one-pass shard writer writes exactly what zarr-python writes, and zarr-python reads it back."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from hpa_batch.core.shards import (
    CodecConfig,
    IncompleteShardError,
    check_shard_index,
    chunk_compressor,
    create_array,
    encode_shard,
    update_group_attributes,
    write_array,
    write_group,
)

CODECS = [CodecConfig("zstd", 5, "bitshuffle"), CodecConfig("lz4", 1, "shuffle"), CodecConfig("zstd", 3, "noshuffle")]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Smooth structure + noise + a zero block, so chunks compress differently (and one is all zeros)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    base = (np.sin(yy / 17.0) * np.cos(xx / 11.0) + 1) * 3000
    data = np.broadcast_to(base, shape) + rng.integers(0, 400, shape)
    data = data.astype(dtype)
    data[..., :64, :64] = 0
    return data


def write_both(tmp_path: Path, data: np.ndarray, chunk: int, codec: CodecConfig) -> tuple[Path, Path]:
    ours, theirs = tmp_path / "ours", tmp_path / "zarr"
    write_group(ours, {"note": "a group"})
    write_array(ours / "a", data, chunk=chunk, codec=codec)
    arr = create_array(
        zarr.open_group(theirs, mode="w", zarr_format=3, attributes={"note": "a group"}),
        "a",
        data.shape,
        chunk=chunk,
        codec=codec,
        dtype=data.dtype.name,
    )
    arr[...] = data
    return ours, theirs


@pytest.mark.parametrize(
    ("shape", "dtype", "chunk"),
    [
        ((4, 256, 256), "uint16", 64),  # whole chunks
        ((4, 300, 257), "uint16", 64),  # partial edge chunks in both axes
        ((1, 64, 64), "uint16", 64),  # a single chunk
        ((300, 257), "uint32", 64),  # a label level
        ((3, 100, 200), "uint8", 32),
    ],
)
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: f"{c.cname}-{c.shuffle}")
def test_files_are_byte_identical_to_zarr_python(tmp_path, shape, dtype, chunk, codec):
    data = sample(shape, dtype)
    ours, theirs = write_both(tmp_path, data, chunk, codec)
    assert files(ours) == files(theirs)
    back = zarr.open_array(ours / "a", mode="r")
    assert back.dtype == data.dtype and np.array_equal(back[...], data)


def test_hpa_sized_level_is_byte_identical(tmp_path):
    """A 1728 px level (chunks 512 padded at the edge), the size HPA images come in."""
    data = sample((4, 1728, 1728), "uint16", seed=3)
    ours, theirs = write_both(tmp_path, data, 512, CODECS[0])
    assert files(ours) == files(theirs)


def test_index_lists_every_chunk_and_verifies(tmp_path):
    data = sample((4, 300, 257), "uint16")
    pieces = encode_shard(data, (1, 64, 64), chunk_compressor(CODECS[0], data.dtype))
    n_chunks = 4 * 5 * 5
    assert len(pieces) == n_chunks + 2 and len(pieces[-2]) == n_chunks * 16 and len(pieces[-1]) == 4
    shard = tmp_path / "shard"
    shard.write_bytes(b"".join(pieces))
    check_shard_index(shard, n_chunks)
    shard.write_bytes(b"".join(pieces)[:-1])
    with pytest.raises(IncompleteShardError, match="shard"):
        check_shard_index(shard, n_chunks)


def test_group_attributes_update_like_zarr_python(tmp_path):
    ome = {"version": "0.5", "multiscales": [{"name": "x", "scale": [1.0, 0.5]}]}
    write_group(tmp_path / "ours", {"ome": ome, "hpa_batch": {"complete": False}})
    update_group_attributes(tmp_path / "ours", {"hpa_batch": {"complete": True, "n": 3}})
    theirs = zarr.open_group(tmp_path / "zarr", mode="w", zarr_format=3, attributes={"ome": ome})
    theirs.attrs.update({"hpa_batch": {"complete": True, "n": 3}})
    assert (tmp_path / "ours" / "zarr.json").read_bytes() == (tmp_path / "zarr" / "zarr.json").read_bytes()
    assert zarr.open_group(tmp_path / "ours", mode="r").attrs["hpa_batch"] == {"complete": True, "n": 3}
    assert not list((tmp_path / "ours").glob(".*tmp"))


def test_attributes_of_an_array_are_not_updated_as_a_group(tmp_path):
    write_array(tmp_path / "a", np.zeros((64, 64), np.uint16), chunk=64, codec=CODECS[0])
    with pytest.raises(ValueError, match="not a zarr group"):
        update_group_attributes(tmp_path / "a", {"x": 1})
