"""OME-NGFF writer: pyramid arithmetic, spec validity (outside models), completeness checks."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from hpa_batch.core.ngff import (
    IncompleteImageError,
    count_files,
    downsample2x,
    is_complete,
    level_shapes,
    multiscales_attrs,
    stamp_complete,
    verify_image,
    write_pyramid,
)
from hpa_batch.core.shards import CodecConfig

CODEC = CodecConfig("zstd", 5, "bitshuffle")


def pyramid(shape=(4, 300, 257), chunk=64, min_level=64, seed=0):
    rng = np.random.default_rng(seed)
    levels = [rng.integers(0, 65535, shape, dtype=np.uint16)]
    for _ in level_shapes(shape[1], shape[2], min_level)[1:]:
        levels.append(downsample2x(levels[-1]))
    return levels


def write(tmp_path, levels, chunk=64):
    path = tmp_path / "img"
    write_pyramid(path, levels, chunk=chunk, codec=CODEC, ome=multiscales_attrs(len(levels), "img", None))
    stamp_complete(path, verify_image(path))
    return path


def test_level_shapes():
    assert level_shapes(2048, 2048, 512) == [(2048, 2048), (1024, 1024), (512, 512)]
    assert level_shapes(1728, 1728, 512)[-1] == (432, 432) and len(level_shapes(3072, 3072, 512)) == 4
    assert level_shapes(301, 100, 80) == [(301, 100), (151, 50), (76, 25)]
    assert level_shapes(4096, 4096, 512, max_levels=2) == [(4096, 4096), (2048, 2048)]


def test_downsample_is_rounded_mean_with_edge_replication():
    a = np.array([[[0, 1, 9], [2, 5, 9], [7, 7, 3]]], np.uint16)
    out = downsample2x(a)
    assert out.dtype == np.uint16 and out.shape == (1, 2, 2)
    assert out.tolist() == [[[2, 9], [7, 3]]]  # (0+1+2+5)/4=2; (9+9+9+9)/4; (7+7+7+7)/4; 3
    big = np.full((1, 4, 4), 65535, np.uint16)
    assert downsample2x(big).max() == 65535  # no overflow
    labels = np.full((3, 3), 2**32 - 1, np.uint32)
    assert downsample2x(labels).tolist() == [[2**32 - 1] * 2] * 2  # nor for 32-bit values


def test_chunked_downsample_equals_whole_array():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65535, (4, 256, 192), dtype=np.uint16)
    tiles = [[downsample2x(a[:, y : y + 64, x : x + 64]) for x in range(0, 192, 64)] for y in range(0, 256, 64)]
    assert np.array_equal(np.block(tiles), downsample2x(a))


def test_written_image_reads_back_and_is_valid_ngff(tmp_path):
    levels = pyramid()
    path = write(tmp_path, levels)
    group = zarr.open_group(path, mode="r")
    for k, data in enumerate(levels):
        arr = group[f"s{k}"]
        assert arr.dtype == np.uint16 and arr.chunks == (1, 64, 64)
        assert np.array_equal(arr[...], data)
    from ome_zarr_models.v05 import Image

    model = Image.from_zarr(group)
    assert len(model.datasets[0]) == len(levels)
    assert count_files(path) == 2 * len(levels) + 1  # one shard file + zarr.json per level, + group
    assert is_complete(path)


def test_ome_zarr_py_reader_opens_it(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    levels = pyramid()
    path = write(tmp_path, levels)
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [tuple(d.shape) for d in node.data] == [lv.shape for lv in levels]
    assert node.metadata["channel_names"][1] == "green (protein)"
    assert np.array_equal(np.asarray(node.data[1]), levels[1])


@pytest.mark.parametrize("damage", ["truncate", "drop", "zero_tail", "no_stamp"])
def test_damaged_images_are_not_complete(tmp_path, damage):
    path = write(tmp_path, pyramid())
    shard = min(p for p in (path / "s0" / "c").rglob("*") if p.is_file())
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "drop":
        shard.unlink()
    elif damage == "zero_tail":
        data = bytearray(shard.read_bytes())
        data[-20:] = b"\0" * 20
        shard.write_bytes(bytes(data))
    else:
        group = zarr.open_group(path, mode="r+")
        group.attrs["hpa_batch"] = {"complete": False}
    assert not is_complete(path)
    if damage != "no_stamp":
        with pytest.raises(IncompleteImageError, match=str(Path("s0"))):
            verify_image(path)


def test_missing_chunk_in_index_is_detected(tmp_path):
    """A shard written without one of its chunks (empty chunks skipped) must not pass."""
    path = tmp_path / "img"
    group = zarr.open_group(path, mode="w", zarr_format=3, attributes={"ome": multiscales_attrs(1, "img", None)})
    arr = group.create_array(
        "s0",
        shape=(4, 128, 128),
        dtype="uint16",
        chunks=(1, 64, 64),
        shards=(4, 128, 128),
        fill_value=0,
        config={"write_empty_chunks": False},
    )
    data = np.zeros((4, 128, 128), np.uint16)
    data[0, :64, :64] = 7
    arr[...] = data
    with pytest.raises(IncompleteImageError, match="chunks missing"):
        verify_image(path)


def test_display_windows_follow_each_channels_data_and_stay_valid_ngff(tmp_path):
    """A bright stain and a dim one get their own omero windows (not one fixed 0-8000), and the image
    group still validates as OME-NGFF 0.5 (ome-zarr-models) and opens in ome-zarr-py."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    from hpa_batch.core.ngff import channel_windows

    rng = np.random.default_rng(1)
    scale = np.array([20000, 2300, 600, 0])[:, None, None]  # bright, dim, dimmer, empty
    levels = [(rng.random((4, 128, 128)) * scale).astype(np.uint16)]
    levels.append(downsample2x(levels[0]))
    windows = channel_windows(levels[-1])
    assert windows[0][1] > 15000 and 1500 < windows[1][1] < 2400 and windows[3] == (0, 1)
    assert all(end > start for start, end in windows)
    path = tmp_path / "img"
    ome = multiscales_attrs(len(levels), "img", None, windows=windows)
    write_pyramid(path, levels, chunk=64, codec=CODEC, ome=ome)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    Image.from_zarr(group)
    shown = [c["window"] for c in group.attrs["ome"]["omero"]["channels"]]
    assert [(w["start"], w["end"]) for w in shown] == windows
    nodes = list(Reader(parse_url(str(path)))())
    assert nodes and nodes[0].data[0].shape == (4, 128, 128)
