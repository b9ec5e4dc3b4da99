"""results/spatialdata/{shard}.zarr: a SpatialData store over the shard's OME-Zarr pixels (links, no
copy), its cells table annotating the cells labels; read back with zarr, anndata and ome-zarr-py here,
and with spatialdata, scanpy and bioio in their own environment (tests/scverse/check.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import scverse_check

from hpa_batch.core.labels import CATALOGS
from hpa_batch.results.h5ad import Embeddings, write_cells_h5ad
from hpa_batch.results.sdnames import check_unique, element_name, region_name
from hpa_batch.results.spatialdata import store_images, store_problem, write_spatialdata

CATALOG = CATALOGS["hpa2021"]


def test_element_names_are_what_spatialdata_accepts():
    assert element_name("5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0") == "5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0"
    assert element_name("plate 3/A1:f2") == "plate_3_A1_f2"
    assert element_name("__x") == "i__x" and element_name(".x") == "i.x"
    assert region_name("a b") == "a_b_cells" and region_name("a", "nuclei") == "a_nuclei"
    check_unique(["a", "b", "a"])  # the same id twice is one image
    with pytest.raises(ValueError, match="'a b' and 'a_b'"):
        check_unique(["a b", "a_b"])
    with pytest.raises(ValueError, match="same SpatialData element name"):
        check_unique(["Img1", "img1"])  # spatialdata compares names ignoring case


def merged_table(results: Path, shards: list[str], out: Path) -> pd.DataFrame:
    """The segmented fixture's cells as the merge writes them (one row group per shard), with fused
    probabilities and predicted label sets."""
    rng = np.random.default_rng(0)
    parts = []
    for shard in shards:
        t = pd.read_parquet(results / "cells" / f"{shard}.parquet")
        for k in range(CATALOG.n_classes):
            t[f"fused_prob_{k}"] = rng.random(len(t)).astype(np.float32)
        t["predicted"] = ["0|17" if i % 3 else "4" for i in range(len(t))]
        parts.append(t)
    schema = pa.Table.from_pandas(parts[0], preserve_index=False).schema
    with pq.ParquetWriter(out, schema) as w:
        for t in parts:
            w.write_table(pa.Table.from_pandas(t, schema=schema, preserve_index=False))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def stores(segmented, tmp_path_factory):
    """Every shard of the segmented fixture as a SpatialData store, beside a merged table and
    predictions with embeddings."""
    tmp = tmp_path_factory.mktemp("spatialdata")
    results = segmented["results"]
    table = merged_table(results, segmented["shards"], tmp / "cells.parquet")
    rng = np.random.default_rng(1)
    out = {}
    for shard in segmented["shards"]:
        rows = table[table["shard"] == shard]
        pred = pd.DataFrame({"image_id": rows["image_id"], "cell_id": rows["cell_id"]})
        pred["embedding"] = list(rng.normal(size=(len(rows), 16)).astype(np.float32))
        pred.to_parquet(tmp / f"pred-{shard}.parquet")
        out[shard] = tmp / "results" / "spatialdata" / f"{shard}.zarr"
        counts = write_spatialdata(
            store=results / "zarr" / f"{shard}.zarr",
            cells_table=tmp / "cells.parquet",
            shard=shard,
            out=out[shard],
            catalog=CATALOG,
            embeddings=Embeddings({shard: tmp / f"pred-{shard}.parquet"}, "X_tiny"),
        )
        assert counts == {"images": len(set(rows["image_id"])), "cells": len(rows)}
    return {"tmp": tmp, "table": table, "stores": out, "results": results}


def test_a_store_links_the_pixels_and_annotates_the_cells_labels(stores):
    import anndata as ad
    import zarr

    table = stores["table"]
    for shard, path in stores["stores"].items():
        assert store_problem(path, deep=True) is None
        source = stores["results"] / "zarr" / f"{shard}.zarr"
        images = store_images(source)
        for image_id in images:
            for level in ("images", "labels"):
                name = element_name(image_id) + ("_cells" if level == "labels" else "")
                link = path / level / name / "s0"
                assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: the tree moves
            arr = zarr.open_array(path / "images" / element_name(image_id) / "s0", mode="r")
            assert np.array_equal(arr[:, :8, :8], zarr.open_array(source / image_id / "s0", mode="r")[:, :8, :8])
        # no pixel copied: the store is a few metadata files beside its table
        linked = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "tables" not in f.parts)
        assert linked < 200_000, linked
        adata = ad.read_zarr(path / "tables" / "table")
        rows = table[table["shard"] == shard]
        assert list(adata.obs["instance_id"]) == list(rows["cell_id"])
        assert list(adata.obs["region"]) == [f"{i}_cells" for i in rows["image_id"]]
        assert adata.obsm["X_tiny"].shape == (len(rows), 16)
        meta = json.loads((path / "tables" / "table" / "zarr.json").read_text())["attributes"]
        assert meta["spatialdata-encoding-type"] == "ngff:regions_table" and meta["instance_key"] == "instance_id"


def test_label_properties_carry_each_cells_prediction_for_a_viewer(stores):
    """ome-zarr-py (napari's reader) reads the cells labels element with, per label value, the area,
    the predicted classes by name and the confidence."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    table = stores["table"]
    shard, path = next(iter(stores["stores"].items()))
    rows = table[table["shard"] == shard]
    image_id = rows["image_id"].iat[0]
    nodes = list(Reader(parse_url(str(path / "labels" / f"{element_name(image_id)}_cells")))())
    props = nodes[0].metadata["properties"]
    mine = rows[rows["image_id"] == image_id]
    assert sorted(props) == sorted(mine["cell_id"])
    first = mine.iloc[0]
    names = CATALOG.classes
    assert props[int(first["cell_id"])]["predicted"] == (
        f"{names[0]}|{names[17]}" if "|" in first["predicted"] else names[4]
    )
    best = max(first[f"fused_prob_{k}"] for k in range(CATALOG.n_classes))
    assert props[int(first["cell_id"])]["confidence"] == pytest.approx(best, abs=1e-4)
    assert props[int(first["cell_id"])]["area (pixels)"] == first["area"]


def test_the_table_carries_the_runs_map_and_a_nuclei_table_annotates_the_nuclei(stores, tmp_path):
    """The table's ``X_umap`` rows are ``cells.h5ad``'s (the map is fitted over the run, not per shard);
    the nuclei labels have their own table with the same cells, so every labels element is annotated."""
    import anndata as ad

    tmp = stores["tmp"]
    write_cells_h5ad(tmp / "cells.parquet", tmp_path / "map.h5ad", CATALOG)
    shard = next(iter(stores["stores"]))
    out = tmp_path / "results" / "spatialdata" / f"{shard}.zarr"
    write_spatialdata(
        store=stores["results"] / "zarr" / f"{shard}.zarr",
        cells_table=tmp / "cells.parquet",
        shard=shard,
        out=out,
        catalog=CATALOG,
        h5ad=tmp_path / "map.h5ad",
    )
    table, full = ad.read_zarr(out / "tables" / "table"), ad.read_h5ad(tmp_path / "map.h5ad")
    assert 0 < table.n_obs < full.n_obs
    np.testing.assert_array_equal(table.obsm["X_umap"], full[table.obs_names].obsm["X_umap"])
    assert dict(table.uns["umap"]) == dict(full.uns["umap"])
    nuclei = ad.read_zarr(out / "tables" / "nuclei")
    assert list(nuclei.obs["instance_id"]) == list(table.obs["instance_id"])
    assert list(nuclei.obs["region"]) == [r.replace("_cells", "_nuclei") for r in table.obs["region"]]
    assert list(nuclei.obs["predicted"]) == list(table.obs["predicted"])
    meta = json.loads((out / "tables" / "nuclei" / "zarr.json").read_text())["attributes"]
    assert meta["region_key"] == "region" and all(r.endswith("_nuclei") for r in meta["region"])
    assert not (out / ".snakemake_timestamp").exists()


def test_a_broken_link_is_damage_named_by_the_store_check(stores, tmp_path):
    path = next(iter(stores["stores"].values()))
    copy = tmp_path / "moved" / "results" / "spatialdata" / path.name
    shutil.copytree(path, copy, symlinks=True)  # moved without the pixels it links to
    problem = store_problem(copy)
    assert problem is not None and "links to a missing array" in problem


def test_a_copy_with_links_followed_stands_alone(stores, tmp_path):
    """TABLES.md's self-contained copy (``cp -rL``: links followed) holds no link, passes the store
    check and reads in spatialdata once the shard store it was made from is gone."""
    shard = next(iter(stores["stores"]))
    source = tmp_path / "results" / "zarr" / f"{shard}.zarr"
    shutil.copytree(stores["results"] / "zarr" / f"{shard}.zarr", source)  # a shard store this test may remove
    linked = tmp_path / "results" / "spatialdata" / f"{shard}.zarr"
    write_spatialdata(
        store=source, cells_table=stores["tmp"] / "cells.parquet", shard=shard, out=linked, catalog=CATALOG
    )
    copy = tmp_path / "elsewhere" / linked.name
    shutil.copytree(linked, copy, symlinks=False)  # what cp -rL does
    shutil.rmtree(source)
    assert store_problem(linked) is not None and "links to a missing array" in store_problem(linked)
    assert not [p for p in copy.rglob("*") if p.is_symlink()]
    assert store_problem(copy, deep=True) is None
    assert "cells resolved" in scverse_check("spatialdata", copy, stores["tmp"] / "cells.parquet", shard)


def test_an_element_whose_metadata_does_not_read_is_damage(stores, tmp_path):
    """A broken ``zarr.json`` inside one element (its levels' links intact) is named by the store check."""
    path = next(iter(stores["stores"].values()))
    copy = tmp_path / "results" / "spatialdata" / path.name
    shutil.copytree(path, copy, symlinks=True)
    element = min(p for p in (copy / "labels").iterdir() if p.is_dir())
    (element / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    problem = store_problem(copy)
    assert problem is not None and f"labels/{element.name}/zarr.json unreadable" in problem


def test_spatialdata_reads_the_store_and_every_row_resolves_to_its_label(stores):
    for shard, path in stores["stores"].items():
        out = scverse_check("spatialdata", path, stores["tmp"] / "cells.parquet", shard)
        n = len(stores["table"].query("shard == @shard"))
        assert f"{n} cells resolved" in out


def test_scanpy_builds_a_umap_on_the_embeddings_with_class_names_as_legend(stores):
    tmp = stores["tmp"]
    embeddings = {shard: tmp / f"pred-{shard}.parquet" for shard in stores["stores"]}
    write_cells_h5ad(tmp / "cells.parquet", tmp / "cells.h5ad", CATALOG, embeddings=Embeddings(embeddings, "X_tiny"))
    assert "UMAP on X_tiny" in scverse_check("scanpy", tmp / "cells.h5ad", "X_tiny")


def test_bioio_opens_an_image_group_with_the_ome_zarr_reader(stores):
    shard = next(iter(stores["stores"]))
    source = stores["results"] / "zarr" / f"{shard}.zarr"
    assert "C: 4" in scverse_check("bioio", source / store_images(source)[0])


def test_an_element_is_in_micrometres_when_the_pixel_size_is_known():
    """With ``conversion.pixel_size_um`` the element maps its pixels to micrometres (spatialdata then
    gives a 2048 px image at 0.08 um an extent of 163.84 um); without it, the identity in pixels."""
    from hpa_batch.core.ngff import multiscales_attrs
    from hpa_batch.results.spatialdata import element_attrs

    known = element_attrs(multiscales_attrs(3, "img", 0.08), "img", (100, 200))["ome"]["multiscales"][0]
    t, placed = known["coordinateTransformations"]
    assert t["type"] == "scale" and t["scale"] == [1.0, 0.08, 0.08] and t["output"]["name"] == "img"
    assert [a.get("unit") for a in t["output"]["axes"]] == [None, "micrometer", "micrometer"]
    # the same scale into `global`, shifted to the image's place in the grid (in micrometres)
    assert placed["output"]["name"] == "global" and placed["type"] == "affine"
    assert np.allclose(placed["affine"], [[1, 0, 0, 0], [0, 0.08, 0, 8.0], [0, 0, 0.08, 16.0]])
    unknown = element_attrs(multiscales_attrs(3, "img", None), "img")
    t, placed = unknown["ome"]["multiscales"][0]["coordinateTransformations"]
    assert t["type"] == "identity" and [a.get("unit") for a in t["output"]["axes"]] == [None, "pixel", "pixel"]
    assert np.allclose(placed["affine"], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    assert unknown["ome"]["version"] == "0.5-dev-spatialdata" and unknown["spatialdata_attrs"] == {"version": "0.3"}
