"""Reads the pipeline's outputs with the scverse and bioio tools, in their own environment
(``make scverse-env``: the ``scverse`` extra; spatialdata needs an older dask and ome-zarr than the
pipeline). Run by the tests with that environment's python; exits non-zero on the first failed check.

    check.py spatialdata STORE CELLS_PARQUET SHARD
    check.py scanpy CELLS_H5AD EMBEDDING_KEY
    check.py bioio IMAGE_GROUP
"""

from __future__ import annotations

import sys
import warnings

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
    print(f"spatialdata: {len(sdata.images)} images, {len(sdata.labels)} labels, {checked} cells resolved")


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


if __name__ == "__main__":
    verb, *rest = sys.argv[1:]
    {"spatialdata": check_spatialdata, "scanpy": check_scanpy, "bioio": check_bioio}[verb](*rest)
