"""results/tables/cells.h5ad: the cells table as AnnData, read back with anndata."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hpa_batch.cells.measure import FEATURE_COLUMNS
from hpa_batch.core.labels import CATALOGS
from hpa_batch.results.h5ad import Embeddings, write_cells_h5ad

CATALOG = CATALOGS["hpa2021"]


def cells_table(rng, shard, n):
    t = pd.DataFrame(rng.random((n, len(FEATURE_COLUMNS))).astype(np.float32), columns=list(FEATURE_COLUMNS))
    t.insert(0, "image_id", [f"{shard}-img{i % 3}" for i in range(n)])
    t.insert(1, "cell_id", np.arange(1, n + 1, dtype=np.int32))
    t["cell_line"], t["shard"], t["fold"] = "U-2 OS", shard, np.int8(1)
    t["border"] = rng.random(n) < 0.2
    for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"):
        t[c] = rng.integers(0, 500, n).astype(np.int32)
    t["centroid_y"], t["centroid_x"] = rng.random(n) * 500, rng.random(n) * 500
    for kind in ("fused_prob", "cell_prob", "image_prob"):
        for k in range(CATALOG.n_classes):
            t[f"{kind}_{k}"] = rng.random(n).astype(np.float32)
    t["predicted"] = ["0|17" if i % 2 else "" for i in range(n)]
    t["image_labels"] = [np.array([0, 17]) for _ in range(n)]
    t["truth_labels"] = [np.array([i % 19]) for i in range(n)]
    t["truth_cell_id"] = np.arange(n, dtype=np.int32)
    return t


def test_cells_h5ad_round_trips_against_the_parquet_shard_by_shard(tmp_path):
    rng = np.random.default_rng(0)
    shards = [cells_table(rng, "a-0000", 40), cells_table(rng, "b-0000", 25), cells_table(rng, "c-0000", 0)]
    src = tmp_path / "cells.parquet"
    schema = pa.Table.from_pandas(shards[0], preserve_index=False).schema
    with pq.ParquetWriter(src, schema) as w:
        for t in shards:  # one row group per shard, as the merge writes it
            w.write_table(
                pa.Table.from_pandas(t, schema=schema, preserve_index=False) if len(t) else schema.empty_table()
            )
    out = tmp_path / "cells.h5ad"
    assert write_cells_h5ad(src, out, CATALOG) == 65
    a = ad.read_h5ad(out)
    table = pd.read_parquet(src)
    assert a.shape == (65, len(FEATURE_COLUMNS)) and list(a.var_names) == list(FEATURE_COLUMNS)
    assert np.array_equal(a.X, table[list(FEATURE_COLUMNS)].to_numpy(np.float32))
    assert list(a.obs_names) == [f"{i}_{c}" for i, c in zip(table["image_id"], table["cell_id"])]
    assert list(a.obs["shard"]) == list(table["shard"]) and list(a.obs["cell_id"]) == list(table["cell_id"])
    names = CATALOG.classes
    assert a.obs["image_labels"].iloc[0] == f"{names[0]}|{names[17]}" and a.obs["predicted"].iloc[0] == ""
    assert a.obs["predicted"].iloc[1] == f"{names[0]}|{names[17]}"  # the table's "0|17", as names
    assert a.obs["truth_labels"].iloc[2] == names[2]
    assert a.obs["image_id"].dtype == "category" and a.obs["cell_line"].dtype == "category"
    assert list(a.obsm["fused_prob"].columns) == list(names)  # probability columns named by class
    for kind in ("fused_prob", "cell_prob", "image_prob"):
        cols = [f"{kind}_{k}" for k in range(19)]
        assert np.array_equal(a.obsm[kind], table[cols].to_numpy(np.float32))
    assert np.allclose(a.obsm["spatial"], table[["centroid_x", "centroid_y"]].to_numpy())
    assert list(a.uns["classes"]) == list(CATALOG.classes) and a.uns["catalog"] == "hpa2021"
    # SpatialData's table linkage: each row names its image's cells labels element and its label value
    assert list(a.obs["region"]) == [f"{i}_cells" for i in table["image_id"]] and a.obs["region"].dtype == "category"
    assert list(a.obs["instance_id"]) == list(table["cell_id"])
    attrs = a.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "instance_id"
    assert sorted(attrs["region"]) == sorted(set(a.obs["region"]))
    assert not list(tmp_path.glob(".cells.h5ad*"))  # the per-shard parts and the temporary are gone
    # what cellxgene and scanpy show first: a 2-D map of every cell, categorical folds, described features
    assert a.obsm["X_umap"].shape == (65, 2) and np.isfinite(a.obsm["X_umap"]).all()
    assert a.obsm["X_umap"].std(0).min() > 0  # not collapsed onto a point
    assert a.uns["umap"]["key"] == "X (log1p)" and a.uns["umap"]["fitted_cells"] == 65
    assert a.obs["fold"].dtype == "category" and set(a.obs["fold"]) == {"1"}
    assert list(a.var.columns) == ["channel", "compartment", "statistic", "unit"]
    assert a.var.loc["green_nucleus_mean"].tolist() == ["green", "nucleus", "mean", "intensity (16-bit)"]
    assert a.var.loc["area", "unit"].startswith("pixels^2")


def test_the_umap_of_a_sample_places_every_cell(tmp_path):
    """More cells than the fit sample: the map is fitted on the sample and every other cell is placed
    by it (its rows are the sample's where they were fitted, finite elsewhere)."""
    rng = np.random.default_rng(3)
    src = tmp_path / "cells.parquet"
    shards = [cells_table(rng, "a-0000", 40), cells_table(rng, "b-0000", 35)]
    schema = pa.Table.from_pandas(shards[0], preserve_index=False).schema
    with pq.ParquetWriter(src, schema) as w:
        for t in shards:
            w.write_table(pa.Table.from_pandas(t, schema=schema, preserve_index=False))
    write_cells_h5ad(src, tmp_path / "cells.h5ad", CATALOG, umap_cells=30)
    a = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert a.uns["umap"]["fitted_cells"] == 30 and a.uns["umap"]["cells"] == 75
    assert a.obsm["X_umap"].shape == (75, 2) and np.isfinite(a.obsm["X_umap"]).all()


def test_too_few_cells_get_no_map_and_say_so(tmp_path):
    """Under 10 cells UMAP has no neighbours to work with: no ``X_umap``, ``uns["umap"]`` says why, and
    a SpatialData table built from the file goes without (``read_umap`` returns None)."""
    from hpa_batch.results.h5ad import read_umap

    src = tmp_path / "cells.parquet"
    table = cells_table(np.random.default_rng(2), "a-0000", 5)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), src)
    write_cells_h5ad(src, tmp_path / "cells.h5ad", CATALOG)
    a = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert "X_umap" not in a.obsm and "too few" in a.uns["umap"]["skipped"]
    xy, about = read_umap(tmp_path / "cells.h5ad", "a-0000", list(a.obs_names))
    assert xy is None and "too few" in about["skipped"]


def test_a_map_switched_off_is_absent_and_says_why(tmp_path):
    """``h5ad.umap_cells: 0``: enough cells, yet no ``X_umap``; ``uns["umap"]`` names the setting."""
    from hpa_batch.results.h5ad import read_umap

    src = tmp_path / "cells.parquet"
    table = cells_table(np.random.default_rng(2), "a-0000", 40)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), src)
    write_cells_h5ad(src, tmp_path / "cells.h5ad", CATALOG, umap_cells=0)
    a = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert "X_umap" not in a.obsm and "umap_cells is 0" in a.uns["umap"]["skipped"]
    assert read_umap(tmp_path / "cells.h5ad", "a-0000", list(a.obs_names))[0] is None


def test_the_map_is_of_the_cell_model_else_a_trained_encoder_never_a_random_init():
    def embeddings(predictions, **random_init):
        e = Embeddings(predictions, "X_m", encoders={n: {} for n in random_init})
        e.__dict__["about"] = {n: {"random_init": r} for n, r in random_init.items()}  # the stamps' word
        return e

    assert embeddings({"a-0000": Path("p")}, vit=False).umap_key() == "X_m"
    assert embeddings(None, rand=True, vit=False).umap_key() == "X_vit"
    assert embeddings(None, rand=True).umap_key() is None  # the measurements, log1p


def test_a_run_without_cells_writes_an_empty_anndata(tmp_path):
    src = tmp_path / "cells.parquet"
    one = cells_table(np.random.default_rng(1), "a-0000", 1)
    pq.write_table(pa.Table.from_pandas(one, preserve_index=False).schema.empty_table(), src)
    assert write_cells_h5ad(src, tmp_path / "cells.h5ad", CATALOG) == 0
    a = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert a.shape == (0, len(FEATURE_COLUMNS))


def test_the_cell_models_embeddings_become_an_obsm_representation(tmp_path):
    """With the cell model's embeddings, every cell gets its own row of them in ``obsm["X_<model>"]``
    (joined by image and cell id, shard by shard), which scanpy takes as ``use_rep``."""
    rng = np.random.default_rng(4)
    shards = [cells_table(rng, "a-0000", 9), cells_table(rng, "b-0000", 5)]
    schema = pa.Table.from_pandas(shards[0], preserve_index=False).schema
    src = tmp_path / "cells.parquet"
    with pq.ParquetWriter(src, schema) as w:
        for t in shards:
            w.write_table(pa.Table.from_pandas(t, schema=schema, preserve_index=False))
    preds, expected = {}, []
    for t in shards:
        emb = rng.random((len(t), 8)).astype(np.float32)
        expected.append(emb)
        shuffled = rng.permutation(len(t))  # predictions need not be in the table's order
        p = pd.DataFrame({"image_id": t["image_id"], "cell_id": t["cell_id"], "embedding": list(emb)}).iloc[shuffled]
        preds[t["shard"].iat[0]] = tmp_path / f"{t['shard'].iat[0]}.parquet"
        p.to_parquet(preds[t["shard"].iat[0]])
    out = tmp_path / "cells.h5ad"
    assert write_cells_h5ad(src, out, CATALOG, embeddings=Embeddings(preds, "X_m")) == 14
    a = ad.read_h5ad(out)
    assert a.obsm["X_m"].shape == (14, 8) and np.array_equal(a.obsm["X_m"], np.concatenate(expected))
    assert a.uns["umap"]["key"] == "X_m" and dict(a.uns["embeddings"]) == {"X_m": "cell model"}  # the map is of it
    short = pd.read_parquet(preds["b-0000"]).iloc[1:]
    short.to_parquet(preds["b-0000"])
    import pytest

    with pytest.raises(ValueError, match=r"b-0000.parquet: no embedding for 1 cells"):
        write_cells_h5ad(src, tmp_path / "again.h5ad", CATALOG, embeddings=Embeddings(preds, "X_m"))
