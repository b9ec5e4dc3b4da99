"""The napari reader (``hpa_batch/napari.yaml``, :mod:`hpa_batch.results.viewer`): a whole shard opens as
one layout in napari's own viewer model (no window): images side by side, labels visible, each cell's
prediction shown on hover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpa_batch.core.labels import CATALOGS
from hpa_batch.core.tables import with_classes
from hpa_batch.results.viewer import napari_get_reader

CATALOG = CATALOGS["hpa2021"]


@pytest.fixture(scope="module")
def tree(segmented, tmp_path_factory):
    """A results tree whose shard store is the segmented fixture's (linked) beside a merged cells table."""
    shard = segmented["shards"][0]
    results = tmp_path_factory.mktemp("viewer") / "results with space"
    (results / "zarr").mkdir(parents=True)
    (results / "zarr" / f"{shard}.zarr").symlink_to(segmented["results"] / "zarr" / f"{shard}.zarr")
    cells = pd.read_parquet(segmented["results"] / "cells" / f"{shard}.parquet")
    for k in range(CATALOG.n_classes):
        cells[f"fused_prob_{k}"] = np.float32(0.9 if k == 4 else 0.1)
    cells["predicted"] = "4"
    (results / "tables").mkdir()
    table = pa.Table.from_pandas(cells, preserve_index=False)
    pq.write_table(table.cast(with_classes(table.schema, CATALOG)), results / "tables" / "cells.parquet")
    return {"store": results / "zarr" / f"{shard}.zarr", "cells": cells}


def open_in_napari(path):
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    viewer = ViewerModel()
    viewer.open(str(path), plugin="hpa-batch")  # what `napari --plugin hpa-batch <path>` does
    return viewer


def test_a_shard_opens_as_a_grid_with_visible_labels_and_predictions_on_hover(tree):
    viewer = open_in_napari(tree["store"])
    images = [layer for layer in viewer.layers if type(layer).__name__ == "Image"]
    labels = [layer for layer in viewer.layers if type(layer).__name__ == "Labels"]
    n = tree["cells"]["image_id"].nunique()
    assert len(images) == 4 * n and len(labels) == 2 * n and all(layer.visible for layer in labels)
    assert [layer.colormap.name for layer in images[:4]] == ["red", "green", "blue", "yellow"]
    boxes = {}  # each image's world extent: no two overlap (they used to all sit at the origin)
    for layer in images[::4]:
        lo = np.asarray(layer.translate)
        boxes[layer.name.split()[0]] = (lo, lo + np.asarray(layer.data[0].shape[-2:]) * np.asarray(layer.scale))
    for a, (a0, a1) in boxes.items():
        for b, (b0, b1) in boxes.items():
            if a < b:
                assert (a1 <= b0).any() or (b1 <= a0).any(), (a, b)
    cells = next(layer for layer in labels if layer.name.endswith("cells"))
    image_id = cells.name.split()[0]
    row = tree["cells"][tree["cells"]["image_id"] == image_id].iloc[0]
    where = (np.asarray(cells.translate) + [row["centroid_y"], row["centroid_x"]]).tolist()
    value = cells.get_value(where, world=True)
    value = value[1] if isinstance(value, tuple) else value  # multiscale: (level, value)
    status = cells.get_status(where, world=True)["coordinates"]
    assert f"predicted: {CATALOG.classes[4]}" in status and "confidence: 0.9" in status, status
    assert int(value) > 0 and "area (pixels)" in status


def test_one_image_opens_alone_at_the_origin_and_other_folders_are_not_claimed(tree, tmp_path):
    image = next(p for p in sorted(tree["store"].iterdir()) if (p / "labels").is_dir())
    viewer = open_in_napari(image)
    assert len(viewer.layers) == 6 and all((np.asarray(layer.translate) == 0).all() for layer in viewer.layers)
    assert (
        napari_get_reader(str(tmp_path)) is None
        and napari_get_reader(str(tree["store"].parent.parent / "tables")) is None
    )
