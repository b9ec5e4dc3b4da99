"""The per-cell table as AnnData (``results/tables/cells.h5ad``), for scanpy, squidpy and cellxgene.

Layout (one row per cell, ``obs_names`` = ``<image_id>_<cell_id>``):

* ``X``: the cell's measurements, float32 ``(n_cells, n_features)``: geometry, per-channel
  intensities in cell and nucleus, and the protein pattern features; ``var_names`` name them
  (:data:`hpa_batch.cells.measure.FEATURE_COLUMNS`).
* ``obs``: image id, cell line and shard (categorical: ``image_id`` is the ``library_key`` squidpy
  needs so neighbours stay within an image), cell id, fold, border flag, the predicted and the image's
  labels as class names (``Nucleoplasm|Cytosol``; "" = none), and, with truth, the matched true cell
  and its labels (names).
* ``obsm``: ``spatial`` (centroid x, y in full-resolution pixels, squidpy's convention), ``bbox``
  (y0, x0, y1, x1), ``fused_prob`` / ``cell_prob`` / ``image_prob``: ``(n_cells, n_classes)`` data
  frames whose columns are the class names.
* ``obsm["X_<model>"]`` (with ``embeddings: true`` on the cell model feeding the tables): the cell
  model's pooled features per cell, float32 ``(n_cells, d)``, read from its predictions shard by shard
  (what ``sc.pp.neighbors(adata, use_rep="X_<model>")`` and a UMAP take).
* ``obsm["X_umap"]``: 2-D UMAP of the cell model's embedding (else the first encoder with weights,
  else the measurements as ``log1p``; never a random-init encoder's), columns standardised, fitted on a seeded
  sample of at most ``h5ad.umap_cells`` cells and applied to every cell shard by shard (what cellxgene
  shows first); absent when that is 0 or there are under 10 cells (``uns["umap"]["skipped"]`` says why).
* ``var``: what each measurement is (``channel``, ``compartment``, ``statistic``, ``unit``).
* ``uns``: the label catalog's name and class names; ``embeddings`` (each ``X_*`` key -> what made
  it, ", random init" when the encoder ran without a weights file), ``encoders`` (each encoder's arch,
  weights SHA-256 and ``random_init``), ``umap`` (the key it was computed from, cells fitted).

Memory does not grow with the cell count: each shard (one row group of ``cells.parquet``) becomes its
own small AnnData file, and :func:`anndata.experimental.concat_on_disk` joins them on disk.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hpa_batch.cells.measure import FEATURE_COLUMNS, describe_feature
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.errors import reason_of
from hpa_batch.core.labels import LabelCatalog, emitted_ids
from hpa_batch.core.tables import parquet_file
from hpa_batch.results.sdnames import INSTANCE_KEY, REGION_KEY, check_unique, region_name, table_attrs

if TYPE_CHECKING:
    import anndata

#: Categorical columns of ``obs`` (missing values become "").
OBS_CATEGORIES = ("image_id", "cell_line", "shard")
#: Label-set columns of ``obs`` (categorical): class names joined by ``|`` ("" = no class).
OBS_LABELS = ("predicted", "image_labels", "truth_labels")
#: Numeric and flag columns of ``obs`` (``fold`` is categorical: a fold is a group, not a quantity).
OBS_VALUES = ("cell_id", "border", "truth_cell_id")
PROBABILITIES = ("fused_prob", "cell_prob", "image_prob")


def _text(value: object) -> str:
    """A missing value as ``""``; anything else as its str."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def label_names(value: object, catalog: LabelCatalog) -> str:
    """A label set as class names joined by ``|``: a list of class ids (``[0, 17]``) or a predicted
    label string (``0|17``, any separator); a missing or empty set as ``""``."""
    if isinstance(value, (list, tuple, np.ndarray)):
        ids = [int(v) for v in value]
    elif isinstance(value, str):
        ids = emitted_ids(value)
    else:
        ids = []
    return "|".join(catalog.classes[k] for k in ids)


def shard_embeddings(table: pd.DataFrame, predictions: Path) -> np.ndarray:
    """``(n, d)`` float32 embeddings of ``table``'s cells (image_id, cell_id) from one shard's predictions.

    Raises
    ------
    ValueError
        The predictions hold no embeddings, or miss a cell of the table (naming the file).
    """
    from hpa_batch.core.tables import read_parquet, read_schema

    if "embedding" not in read_schema(predictions).names:
        raise ValueError(f"{predictions}: no embeddings (the model predicted without embeddings: true)")
    pred = read_parquet(predictions, columns=["image_id", "cell_id", "embedding"])
    key = pd.MultiIndex.from_frame(pred[["image_id", "cell_id"]])
    rows = key.get_indexer(pd.MultiIndex.from_frame(table[["image_id", "cell_id"]]))
    if (rows < 0).any():
        raise ValueError(f"{predictions}: no embedding for {int((rows < 0).sum())} cells of the merged table")
    if not len(rows):
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, np.float32) for v in pred["embedding"].to_numpy()[rows]])


def store_embeddings(table: pd.DataFrame, store: Path) -> np.ndarray:
    """``(n, d)`` float32 embeddings of ``table``'s cells (image_id, cell_id) from one shard's embedding
    store (``results/embeddings/{encoder}/{shard}.zarr``, the embed stage's).

    Raises
    ------
    ValueError
        The store misses a cell of the table (naming it).
    """
    import zarr

    from hpa_batch.core.errors import reading

    with reading(store):
        group = zarr.open_group(store, mode="r", zarr_format=3)
        key = pd.MultiIndex.from_arrays([np.asarray(group["cell_image"][:], dtype=object), group["cell_id"][:]])
        rows = key.get_indexer(pd.MultiIndex.from_frame(table[["image_id", "cell_id"]].astype({"cell_id": np.int32})))
        if (rows < 0).any():
            raise ValueError(f"{store}: no embedding for {int((rows < 0).sum())} cells of the merged table")
        return np.asarray(group["embedding"][:], np.float32)[rows]


def shard_anndata(
    table: pd.DataFrame,
    catalog: LabelCatalog,
    embeddings: Mapping[str, np.ndarray] | None = None,
    *,
    regions: Sequence[str] | None = None,
    uns: Mapping[str, object] | None = None,
) -> anndata.AnnData:
    """One shard's cells (rows of the merged cells table) as an :class:`anndata.AnnData`;
    ``embeddings`` = obsm key -> ``(n, d)`` array; ``regions``: the labels
    elements the table annotates (default: those of its rows' images); ``uns``: entries beside the
    catalog's (:meth:`Embeddings.provenance`)."""
    import anndata as ad

    n = catalog.n_classes
    obs = pd.DataFrame(index=pd.Index(table["image_id"] + "_" + table["cell_id"].astype(str), name="cell"))
    for col in OBS_CATEGORIES:
        if col in table:
            obs[col] = pd.Categorical([_text(v) for v in table[col]])
    for col in OBS_LABELS:  # categorical: a plot gives each label set one colour in every image
        if col in table:
            obs[col] = pd.Categorical([label_names(v, catalog) for v in table[col]])
    for col in OBS_VALUES:
        if col in table:
            obs[col] = table[col].to_numpy()
    if "fold" in table:
        obs["fold"] = pd.Categorical([str(int(v)) for v in table["fold"]])
    region = [region_name(i) for i in table["image_id"]]
    regions = list(regions) if regions is not None else sorted(set(region))
    obs[REGION_KEY] = pd.Categorical(region, categories=regions)
    obs[INSTANCE_KEY] = table["cell_id"].to_numpy(np.int64)
    obsm = {
        "spatial": table[["centroid_x", "centroid_y"]].to_numpy(np.float32),
        "bbox": table[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(np.int32),
    }
    for kind in PROBABILITIES:
        cols = [f"{kind}_{k}" for k in range(n)]
        if all(c in table for c in cols):
            obsm[kind] = pd.DataFrame(table[cols].to_numpy(np.float32), index=obs.index, columns=list(catalog.classes))
    obsm.update(embeddings or {})
    return ad.AnnData(
        X=table[list(FEATURE_COLUMNS)].to_numpy(np.float32),
        obs=obs,
        var=feature_var(),
        obsm=obsm,
        uns=_uns(catalog, regions, uns),
    )


def feature_var() -> pd.DataFrame:
    """``var``: one row per measurement of ``X`` (:data:`FEATURE_COLUMNS`) with its ``channel``,
    ``compartment``, ``statistic`` and ``unit``."""
    return pd.DataFrame([describe_feature(f) for f in FEATURE_COLUMNS], index=pd.Index(FEATURE_COLUMNS, name="feature"))


@dataclass(frozen=True)
class Embeddings:
    """Where a cells table's embeddings come from: the cell model's ``predictions`` (shard -> its
    predictions with embeddings, obsm ``key``) and each encoder's stores (name -> shard -> store, obsm
    ``X_<name>``). ``cells.h5ad`` and the SpatialData tables take the same."""

    predictions: Mapping[str, Path] | None = None
    key: str = "X_cell_model"
    encoders: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)

    @cached_property
    def about(self) -> dict[str, dict[str, object]]:
        """:func:`encoder_about` of each encoder, by name (each store stamp read once)."""
        return {name: encoder_about(stores) for name, stores in sorted(self.encoders.items())}

    def provenance(self) -> dict[str, object]:
        """``uns`` entries: ``embeddings`` (obsm key -> what made it, ", random init" for an encoder run
        without weights) and ``encoders`` (:attr:`about`)."""
        about = self.about
        made = {self.key: "cell model"} if self.predictions is not None else {}
        made |= {f"X_{n}": f"encoder {n}" + (", random init" if a["random_init"] else "") for n, a in about.items()}
        return {"embeddings": made, "encoders": about} if made else {"encoders": about}

    def umap_key(self) -> str | None:
        """The embedding ``X_umap`` maps: the cell model's, else the first encoder with weights, else
        None (the measurements); never a random init."""
        if self.predictions is not None:
            return self.key
        trained = [n for n, about in self.about.items() if not about["random_init"]]
        return f"X_{trained[0]}" if trained else None

    def obsm(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """The embeddings of one shard's rows of the cells table, by obsm key.

        Raises
        ------
        ValueError
            A source without a file for the shard, naming both.
        """
        shard = str(table["shard"].iat[0])
        out = {}
        if self.predictions is not None:
            if shard not in self.predictions:
                raise ValueError(f"no predictions with embeddings given for shard {shard}")
            out[self.key] = shard_embeddings(table, self.predictions[shard])
        for name, stores in self.encoders.items():
            if shard not in stores:
                raise ValueError(f"no embedding store of encoder {name!r} given for shard {shard}")
            out[f"X_{name}"] = store_embeddings(table, stores[shard])
        return out


def _uns(catalog: LabelCatalog, regions: Sequence[str], extra: Mapping[str, object] | None = None) -> dict[str, object]:
    uns: dict[str, object] = {
        "catalog": catalog.name,
        "classes": list(catalog.classes),
        "spatialdata_attrs": table_attrs(regions),
    }
    uns.update(extra or {})
    return uns


def _write_uns(path: Path, uns: Mapping[str, object]) -> None:
    import h5py
    from anndata.io import write_elem

    with h5py.File(path, "a") as f:
        if "uns" in f:
            del f["uns"]
        write_elem(f, "uns", dict(uns))


def encoder_about(stores: Mapping[str, Path]) -> dict[str, object]:
    """What made an encoder's embeddings, from the stamp of one of its stores: ``arch``,
    ``weights_sha256`` ("" for none) and ``random_init`` (it ran without a weights file)."""
    from hpa_batch.core.stamps import read_stamp

    raw = next((r for r in (read_stamp(p) for p in stores.values()) if r), {}) if stores else {}
    encoder = raw.get("encoder") or {}
    return {
        "arch": str(encoder.get("arch", "")),
        "weights_sha256": str(raw.get("weights_sha256") or ""),
        "random_init": bool(raw.get("random_init", False)),
    }


def _umap_rows(path: Path, key: str | None, rows: np.ndarray | slice) -> np.ndarray:
    """Rows of a part's ``obsm[key]`` (``X`` as ``log1p`` when ``key`` is None), float64."""
    import h5py

    with h5py.File(path, "r") as f:
        x = np.asarray(f["obsm"][key][rows] if key else f["X"][rows], np.float64)
    return x if key else np.log1p(np.maximum(x, 0))


def add_umap(parts: Sequence[Path], key: str | None, *, fit_cells: int, seed: int = 0) -> dict[str, object]:
    """Write ``obsm["X_umap"]`` ``(n, 2)`` float32 into every part: a UMAP of ``obsm[key]`` (``X`` when
    None; columns standardised with the fit sample's statistics, constant ones dropped) fitted on a
    seeded sample of at most ``fit_cells`` cells (0: no map) and applied to each part in turn, so memory
    holds the sample and one part. Returns what ``uns["umap"]`` records."""
    import h5py
    from anndata.io import write_elem

    sizes = []
    for part in parts:
        with h5py.File(part, "r") as f:
            sizes.append(int(f["X"].shape[0]))
    total = sum(sizes)
    if fit_cells == 0:
        return {"skipped": "h5ad.umap_cells is 0 in the config"}
    if total < 10:
        return {"skipped": f"{total} cells: too few for a map"}
    import umap

    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(total, size=min(total, fit_cells), replace=False))
    starts = np.cumsum([0, *sizes])
    sample = np.concatenate(
        [_umap_rows(p, key, picked[(picked >= a) & (picked < b)] - a) for p, a, b in zip(parts, starts, starts[1:])]
    )
    mu, sd = sample.mean(0), sample.std(0)
    keep = sd > 0
    reducer = umap.UMAP(n_neighbors=min(15, len(sample) - 1), random_state=seed, n_jobs=1)
    fitted = reducer.fit_transform((sample[:, keep] - mu[keep]) / sd[keep]).astype(np.float32)
    for part, a, b in zip(parts, starts, starts[1:]):
        if len(picked) == total:  # every cell was fitted: its place is the fit's
            xy = fitted[a:b]
        else:
            xy = reducer.transform((_umap_rows(part, key, slice(None))[:, keep] - mu[keep]) / sd[keep])
        with h5py.File(part, "a") as f:
            write_elem(f, "obsm/X_umap", np.asarray(xy, np.float32))
    return {"key": key or "X (log1p)", "fitted_cells": len(picked), "cells": total}


def write_cells_h5ad(
    cells_table: Path,
    out: Path,
    catalog: LabelCatalog,
    *,
    embeddings: Embeddings | None = None,
    umap_cells: int = 20_000,
) -> int:
    """Write ``cells_table`` (the merged ``cells.parquet``) as AnnData to ``out``, shard by shard, with
    ``embeddings``' obsm entries and ``X_umap`` fitted on at most ``umap_cells`` cells (:func:`add_umap`;
    ``h5ad.umap_cells`` of the config).

    Returns
    -------
    int
        Cells written.
    """
    from anndata.experimental import concat_on_disk

    embeddings = embeddings or Embeddings()
    provenance = embeddings.provenance()
    source = parquet_file(cells_table)
    check_unique(source.read(columns=["image_id"]).column(0).unique().to_pylist())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.parts-") as tmp:
        parts, regions = [], []
        for group in range(source.num_row_groups):
            table = source.read_row_group(group).to_pandas()
            if len(table):
                regions += sorted({region_name(i) for i in table["image_id"]})
                parts.append(Path(tmp) / f"{group:05d}.h5ad")
                shard_anndata(table, catalog, embeddings.obsm(table), uns=provenance).write_h5ad(parts[-1])
        if not parts:  # no cell at all: an empty AnnData with the same layout
            parts.append(Path(tmp) / "empty.h5ad")
            shard_anndata(source.schema_arrow.empty_table().to_pandas(), catalog).write_h5ad(parts[-1])
        extra = {**provenance, "umap": add_umap(parts, embeddings.umap_key(), fit_cells=umap_cells)}
        with atomic_path(out, keep_suffix=True) as dest:
            if len(parts) == 1:
                Path(parts[0]).replace(dest)
            else:
                concat_on_disk(parts, dest, merge="same")  # var columns are the same in every part
            _write_uns(dest, _uns(catalog, regions, extra))  # concat_on_disk leaves uns out
    return source.metadata.num_rows


def read_umap(h5ad: Path, shard: str, obs_names: Sequence[str]) -> tuple[np.ndarray | None, dict[str, object]]:
    """``shard``'s rows of ``h5ad``'s ``obsm["X_umap"]`` in the order of ``obs_names``: ``(n, 2)``
    float32, and its ``uns["umap"]``; None for the rows when the run has no map (too few cells: its
    ``uns["umap"]`` says so). Only the shard's rows are read (h5py: the ``shard`` codes, then those
    rows' names and map positions), so memory follows the shard, not the run.

    Raises
    ------
    ValueError
        ``h5ad`` lacks one of the cells, naming it.
    """
    import h5py
    from anndata.io import read_elem

    with h5py.File(h5ad, "r") as f:
        about = dict(read_elem(f["uns"]["umap"])) if "umap" in f.get("uns", {}) else {}
        if "X_umap" not in f.get("obsm", {}):
            return None, about or {"skipped": f"{h5ad} has no X_umap"}
        obs = f["obs"]
        categories = [c.decode() if isinstance(c, bytes) else str(c) for c in obs["shard"]["categories"][()]]
        code = categories.index(shard) if shard in categories else -1
        rows = np.flatnonzero(obs["shard"]["codes"][()] == code)
        names = pd.Index([n.decode() if isinstance(n, bytes) else str(n) for n in obs[obs.attrs["_index"]][rows]])
        where = names.get_indexer(pd.Index(obs_names))
        if (where < 0).any():
            raise ValueError(f"{h5ad}: {int((where < 0).sum())} cells of shard {shard} are not in it")
        xy = np.asarray(f["obsm"]["X_umap"][rows] if len(rows) else np.zeros((0, 2)), np.float32)[where]
    return xy, about


def h5ad_problem(path: Path, *, deep: bool = False) -> str | None:
    """Why ``cells.h5ad`` is damaged, or None: its HDF5 root opens (``deep``: anndata reads it whole)."""
    try:
        if deep:
            import anndata

            anndata.read_h5ad(path)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                list(f.keys())
    except Exception as exc:  # noqa: BLE001 (a file that does not open is the damage)
        return f"not a readable h5ad file: {reason_of(exc)}"
    return None
