"""Packed cell tiles: layout, chunking, index, intensity mapping, and crops of hand-built cells."""

import numpy as np
import pandas as pd
import pytest
import zarr

from hpa_batch.cells.tiles import (
    ChunkedAppender,
    cell_tile,
    crop_box,
    intensity_window,
    to_uint8,
)
from hpa_batch.config import config_from_dict


def test_tile_store_layout_and_index(segmented):
    shard = segmented["shards"][0]
    store = zarr.open_group(segmented["results"] / "tiles" / f"{shard}.zarr", mode="r")
    cells = pd.read_parquet(segmented["results"] / "cells" / f"{shard}.parquet")
    tiles = store["cells"]
    assert tiles.shape == (len(cells), 4, 64, 64) and tiles.dtype == np.uint8
    assert tiles.chunks == (16, 4, 64, 64)  # many tiles per chunk, not a file per tile
    assert list(store["cell_image"][:]) == cells["image_id"].tolist()
    assert list(store["cell_id"][:]) == cells["cell_id"].tolist()
    attrs = store.attrs["hpa_batch"]
    assert attrs["intensity"]["mode"] == "percentile" and attrs["complete"]
    # the cells' hand-crafted feature rows travel with the tiles, row for row, in chunks of the same size
    from hpa_batch.cells.measure import FEATURE_COLUMNS, feature_matrix

    assert attrs["feature_columns"] == list(FEATURE_COLUMNS)
    assert store["features"].chunks == (16, len(FEATURE_COLUMNS))
    np.testing.assert_array_equal(store["features"][:], feature_matrix(cells))
    assert store["images"].shape == (len(set(cells.image_id)), 4, 128, 128)
    t = tiles[:]
    assert t.reshape(len(t), 4, -1).max(axis=2).min() > 0  # every tile has signal in every channel
    centre = t[:, 2, 28:36, 28:36].mean()  # nucleus (blue) sits in the middle of the tile
    rim = np.concatenate([t[:, 2, :4].ravel(), t[:, 2, -4:].ravel()]).mean()
    assert centre > 2 * rim


def test_cell_tile_geometry_and_mask():
    image = np.zeros((4, 100, 120), np.uint16)
    cells = np.zeros((100, 120), np.int32)
    cells[20:40, 30:70] = 1  # a 20 x 40 box
    image[:, 20:40, 30:70] = 1000
    image[:, 0:10, 0:10] = 1000  # outside the cell, inside no crop
    image[:, 18:20, 30:70] = 1000  # just outside the cell, inside the crop margin
    window = np.tile(np.array([[0.0, 1000.0]], np.float32), (4, 1))
    spec = config_from_dict({"tiles": {"size": 40, "margin": 0.0}}).tiles
    tile = cell_tile(image, cells, 1, (20, 30, 40, 70), window=window, spec=spec)
    assert tile.shape == (4, 40, 40) and tile.dtype == np.uint8
    # the 40-px side maps 1:1; the 20-px tall cell sits centred: rows 10..30 bright
    assert tile[0, 10:30, :].min() == 255 and tile[0, 8:10, :].min() == 255  # rows 18..20 visible
    assert tile[0, :8, :].max() == 0 and tile[0, 30:, :].max() == 0
    masked = cell_tile(
        image,
        cells,
        1,
        (20, 30, 40, 70),
        window=window,
        spec=config_from_dict({"tiles": {"size": 40, "margin": 0.0, "mask_outside": True}}).tiles,
    )
    assert masked[0, :10, :].max() == 0 and masked[0, 10:30, :].min() == 255


def test_crop_box_is_square_and_centred():
    top, left, bottom, right = crop_box((10, 20, 30, 60), 0.25)
    assert bottom - top == right - left == 60 and (top + bottom) / 2 == 20 and (left + right) / 2 == 40


def test_intensity_modes():
    img = np.arange(4 * 100, dtype=np.uint16).reshape(4, 10, 10) * 10
    spec = config_from_dict({"tiles": {"intensity": {"mode": "fixed", "low": 0, "high": 3990}}}).tiles
    w = intensity_window(img, spec.intensity)
    assert w.shape == (4, 2) and (w[:, 1] == 3990).all()
    assert to_uint8(img, w)[3].max() == 255 and to_uint8(img, w)[0, 0, 0] == 0
    pct = intensity_window(img, config_from_dict({}).tiles.intensity)
    assert (pct[:, 0] < pct[:, 1]).all() and pct[1, 0] >= 1000


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_appender_equals_direct_write(tmp_path, chunk):
    rows = np.random.default_rng(0).integers(0, 255, (17, 2, 3), dtype=np.uint8)
    arr = zarr.create_array(tmp_path / f"a{chunk}", shape=rows.shape, chunks=(chunk, 2, 3), dtype="uint8")
    app = ChunkedAppender(arr, chunk)
    for start in range(0, 17, 5):
        app.add(rows[start : start + 5])
    app.close()
    assert np.array_equal(arr[:], rows)
