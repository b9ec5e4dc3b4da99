"""The per-cell table: fixed schema (empty case too), values against direct computation and truth."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr

from hpa_batch.cells.measure import CELLS_SCHEMA, blob_moments, measure_image
from hpa_batch.config import config_from_dict
from hpa_batch.core.labels import CATALOGS
from hpa_batch.synth import synthesize_image


def test_shard_table_schema_and_truth(segmented):
    shard = segmented["shards"][0]
    path = segmented["results"] / "cells" / f"{shard}.parquet"
    assert pq.read_schema(path).equals(CELLS_SCHEMA, check_metadata=False)
    cells = pd.read_parquet(path)
    assert len(cells) > 10 and cells["shard"].eq(shard).all()
    assert cells.groupby("image_id")["cell_id"].apply(lambda s: sorted(s) == list(range(1, len(s) + 1))).all()
    store = segmented["results"] / "zarr" / f"{shard}.zarr"
    image_id = cells["image_id"].iloc[0]
    g = zarr.open_group(store / image_id, mode="r")
    labels, img = g["labels/cells/s0"][...], g["s0"][...]
    row = cells[(cells.image_id == image_id) & (cells.cell_id == 1)].iloc[0]
    inside = labels == 1
    assert row.area == inside.sum()
    assert np.isclose(row.green_cell_mean, img[1][inside].mean(), rtol=1e-5)
    assert np.isclose(row.blue_cell_median, np.median(img[2][inside]))
    assert np.isclose(row.red_cell_integrated, img[0][inside].sum(dtype=np.float64), rtol=1e-6)
    ys, xs = np.nonzero(inside)
    assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    truth = pd.read_csv(segmented["data"] / "truth" / "cells.csv")
    per_image = cells.groupby("image_id").size()
    truth_counts = truth.groupby("ID").size()
    assert (per_image - truth_counts.reindex(per_image.index)).abs().max() <= 1


def test_features_separate_nuclear_from_cytosolic_protein():
    cat = CATALOGS["hpa2021"]
    rng = np.random.default_rng(4)
    nuc = synthesize_image(rng, 384, "HeLa", cat, patterns=("Nucleoplasm",))
    cyt = synthesize_image(rng, 384, "HeLa", cat, patterns=("Cytosol",))
    params = config_from_dict({}).measure

    def table(img):
        border = set()
        return measure_image(img.channels, img.cells.astype(np.uint32), img.nuclei.astype(np.uint32), border, params)

    a, b = table(nuc), table(cyt)
    # labelled cells (not the negative ones) of each image
    a = a[a.cell_id.isin([k for k, v in nuc.cell_labels.items() if 0 in v])]
    b = b[b.cell_id.isin([k for k, v in cyt.cell_labels.items() if 16 in v])]
    assert len(a) and len(b)
    assert a.green_nucleus_ratio.median() > 1.5
    assert b.green_nucleus_ratio.median() < 1.0
    assert set(CELLS_SCHEMA.names) - {"image_id", "cell_line", "shard"} == set(a.columns)


def test_empty_shard_gives_zero_rows_with_types(dataset, tmp_path):
    from conftest import SMALL_SEGMENTATION, write_channel

    from hpa_batch.cli import main

    dataset.add("flat", shape=(256, 256))
    for c in ("red", "green", "blue", "yellow"):
        write_channel(dataset.path("flat", c), np.full((256, 256), 50, np.uint16))
    cfg = str(dataset.config_file(segmentation=SMALL_SEGMENTATION))
    for verb in ("convert", "segment", "measure", "tiles"):
        assert main([verb, "--config", cfg, "--shard", "hela-0000"]) == 0
    out = dataset.root / "results" / "cells" / "hela-0000.parquet"
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(CELLS_SCHEMA, check_metadata=False)
    tiles = zarr.open_group(dataset.root / "results" / "tiles" / "hela-0000.zarr", mode="r")
    assert tiles["cells"].shape == (0, 4, 256, 256) and tiles["images"].shape[0] == 1


def test_blob_moments_match_regionprops():
    from skimage.measure import label, regionprops_table

    blobs = label(np.random.default_rng(0).random((120, 120)) > 0.6)
    mine = blob_moments(blobs)
    ref = regionprops_table(blobs, properties=("area", "centroid", "axis_major_length", "axis_minor_length"))
    assert np.allclose(mine["area"], ref["area"]) and np.allclose(mine["cx"], ref["centroid-1"])
    assert np.allclose(mine["eccentricity"], ref["axis_major_length"] / np.maximum(ref["axis_minor_length"], 1))
