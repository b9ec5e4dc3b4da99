"""Reads the pipeline's outputs with the scverse, bioio, duckdb and polars tools, in their own environment
(``make scverse-env``: the ``scverse`` extra; spatialdata needs an older dask and ome-zarr than the
pipeline). Run by the tests with that environment's python; exits non-zero on the first failed check.

    check.py spatialdata STORE CELLS_PARQUET SHARD
    check.py scanpy CELLS_H5AD EMBEDDING_KEY
    check.py bioio IMAGE_GROUP
    check.py tables RESULTS_DIR
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")


def check_spatialdata(store: str, cells: str, shard: str) -> None:
    """spatialdata opens the store; every table row resolves to a cells label of its image with the
    area ``cells.parquet`` records; the table names the labels it annotates."""
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "instance_id", attrs
    rows = pd.read_parquet(cells, filters=[("shard", "==", shard)])
    assert len(table) == len(rows) > 0, (len(table), len(rows))
    expected = rows.set_index(["image_id", "cell_id"])["area"]
    checked = 0
    for region, obs in table.obs.groupby("region", observed=True):
        assert region in sdata.labels, f"row region {region} is not a labels element"
        level = sdata.labels[region]["scale0"]
        labels = np.asarray(next(iter(level.ds.data_vars.values())).values)
        areas = np.bincount(labels.ravel())
        for image_id, cell, instance in zip(obs["image_id"], obs["cell_id"], obs["instance_id"], strict=True):
            assert instance == cell and instance < len(areas), (region, instance)
            assert areas[instance] == expected[(image_id, cell)], (region, instance, areas[instance])
            checked += 1
        image = region.rsplit("_", 1)[0]
        assert image in sdata.images and image in sd.transformations.get_transformation(
            sdata.images[image], get_all=True
        ), image
    assert checked == len(table)
    for name in sdata.labels:  # every labels element has a table (a plot coloured by a column needs one)
        assert sd.get_element_annotators(sdata, name), name
    # one `global` coordinate system lays the images out side by side (as the napari reader does);
    # each element's labels lie exactly on its image there
    boxes = {}
    for name, image in sdata.images.items():
        assert "global" in sd.transformations.get_transformation(image, get_all=True), name
        ext = sd.get_extent(image, coordinate_system="global")
        boxes[name] = (ext["y"], ext["x"])
        cells = sd.get_extent(sdata.labels[f"{name}_cells"], coordinate_system="global")
        assert np.allclose([*ext["y"], *ext["x"]], [*cells["y"], *cells["x"]]), (name, ext, cells)
    for a, (ay, ax) in boxes.items():
        for b, (by, bx) in boxes.items():
            if a < b:
                apart = ay[1] <= by[0] or by[1] <= ay[0] or ax[1] <= bx[0] or bx[1] <= ax[0]
                assert apart, (a, b, boxes[a], boxes[b])
    whole = sd.get_extent(sdata, coordinate_system="global")
    import matplotlib

    matplotlib.use("Agg")
    # the plot a user makes first: every labels element coloured by the predicted classes, laid out
    import tempfile

    import spatialdata_plot  # noqa: F401 (registers sdata.pl)

    with tempfile.TemporaryDirectory() as tmp:
        sdata.pl.render_labels(color="predicted").pl.show(coordinate_systems="global", save=str(Path(tmp) / "p.png"))
        assert (Path(tmp) / "p.png").stat().st_size > 1000
    print(
        f"spatialdata: {len(sdata.images)} images, {len(sdata.labels)} labels, {checked} cells resolved, global {whole}"
    )


def check_scanpy(h5ad: str, key: str) -> None:
    """scanpy reads cells.h5ad, builds neighbours on the embedding within images, runs a UMAP; the
    categories a legend shows are class names."""
    import scanpy as sc

    adata = sc.read_h5ad(h5ad)
    classes = list(adata.uns["classes"])
    sc.pp.neighbors(adata, use_rep=key, n_neighbors=min(10, adata.n_obs - 1))
    sc.tl.umap(adata, random_state=0)
    umap = adata.obsm["X_umap"]
    assert umap.shape == (adata.n_obs, 2) and np.isfinite(umap).all()
    legend = adata.obs["predicted"].astype("category").cat.categories
    names = {name for value in legend for name in value.split("|") if name}
    assert names and names <= set(classes), (names, classes)
    assert list(adata.obsm["fused_prob"].columns) == classes
    assert set(adata.uns["spatialdata_attrs"]["region"]) == set(adata.obs["region"])
    print(f"scanpy: {adata.n_obs} cells, UMAP on {key}, legend {sorted(names)[:3]}...")


def check_bioio(group: str) -> None:
    """bioio opens one image group with the OME-Zarr reader: four named channels, y and x."""
    import bioio_ome_zarr
    from bioio import BioImage

    image = BioImage(group, reader=bioio_ome_zarr.Reader)
    assert image.dims.C == 4 and image.dims.Y > 0 and image.dims.X > 0, image.dims
    assert [c.split(" ")[0] for c in image.channel_names] == ["red", "green", "blue", "yellow"], image.channel_names
    print(f"bioio: {image.dims}")


def check_tables(results: str) -> None:
    """duckdb and polars read the merged tables and metrics as TABLES.md's one-line recipes do: class
    names from the schema metadata in SQL alone, label sets filtered by name, the same counts as the id
    columns give; ``metrics.json`` parses as strict JSON."""
    import json

    import duckdb
    import polars as pl

    res = Path(results)
    cells, images = res / "tables" / "cells.parquet", res / "tables" / "images.parquet"
    classes = [
        row[0]
        for row in duckdb.sql(
            'SELECT unnest(from_json(decode(value), \'{"classes": ["VARCHAR"]}\').classes) '
            f"FROM parquet_kv_metadata('{cells}') WHERE decode(key) = 'hpa_batch.classes'"
        ).fetchall()
    ]
    assert len(classes) in (19, 28), classes
    frame = pd.read_parquet(cells, columns=["predicted", "predicted_names"])
    for k, name in enumerate(classes):
        by_id = sum(str(k) in p.replace(" ", "|").split("|") for p in frame["predicted"])
        by_name = duckdb.sql(
            f"SELECT count(*) FROM '{cells}' WHERE list_contains(predicted_names, '{name}')"
        ).fetchall()[0]
        assert by_name[0] == by_id, (name, by_name, by_id)
    named = pl.read_parquet(images).filter(pl.col("predicted_names").list.len() > 0)
    assert named.height > 0 and {"image_labels", "image_label_names", "cells_predicted_names"} <= set(named.columns)
    assert not set(pl.read_parquet(images)["predicted_names"].explode().drop_nulls()) - set(classes)
    splits = duckdb.sql(
        f"SELECT count(*) FROM parquet_kv_metadata('{res / 'splits.parquet'}') WHERE decode(key) = 'hpa_batch.classes'"
    )
    assert splits.fetchall()[0][0] == 1  # the splits name their classes too

    def refuse(token: str) -> None:
        raise ValueError(f"metrics.json holds the non-standard token {token}")

    metrics = json.loads((res / "metrics.json").read_text(), parse_constant=refuse)
    assert pl.read_json(res / "metrics.json")["images"][0] == metrics["images"]
    print(f"tables: {len(frame)} cells, {len(classes)} classes named in SQL, metrics.json strict")


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    checks = {"spatialdata": check_spatialdata, "scanpy": check_scanpy, "bioio": check_bioio, "tables": check_tables}
    checks[verb](*rest)
