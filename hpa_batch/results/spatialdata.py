"""Per-shard SpatialData stores (``results/spatialdata/{shard}.zarr``) over the OME-Zarr pixels.

A store is what ``spatialdata.read_zarr`` opens (container format 0.2, element formats of
spatialdata 0.7), one per shard (spatialdata slows down past ~10k elements in one object):

* ``images/<element>``: each image of the shard, in its own coordinate system named like the element
  (fields of view do not share coordinates) and in ``global``, where the shard's images lie side by
  side as the napari reader shows them (:func:`hpa_batch.core.ngff.grid_offsets`); spatial axes in
  micrometres when ``conversion.pixel_size_um`` is set, else in ``pixel``;
* ``labels/<element>_cells`` and ``labels/<element>_nuclei``: its segmentation; ``image-label``
  ``properties`` carry each cell's area, predicted classes (names) and confidence, so a viewer shows
  the prediction when the pointer is over a cell;
* ``tables/nuclei``: the same cells annotating the nuclei labels (ids, cell line, predicted, fold);
* ``tables/table``: the shard's rows of ``cells.h5ad`` (:mod:`hpa_batch.results.h5ad`: the same obs,
  obsm and uns, ``X_umap`` read from the run's ``cells.h5ad``), annotating the cells labels: ``obs["region"]`` names the labels element, ``obs["instance_id"]`` is the label value
  (``cell_id``), as SpatialData's ``TableModel`` expects.

No pixel is copied: each element is a small group of metadata whose level arrays (``s0``, ``s1``, ...)
are relative symbolic links into ``results/zarr/{shard}.zarr``, so a store costs kilobytes and stays
valid when the whole results folder is moved (a copy tool must keep links: ``cp -a``, ``rsync -l``).
Nothing here imports spatialdata: it forces older dask and ome-zarr (the ``scverse`` extra is tested
in its own environment).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpa_batch import __version__
from hpa_batch.core.atomic import atomic_path, json_text
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.stamps import SpatialDataStamp
from hpa_batch.results.h5ad import Embeddings
from hpa_batch.results.sdnames import (
    ANNOTATED,
    CONTAINER_FORMAT,
    GLOBAL,
    INSTANCE_KEY,
    LABELS,
    NUCLEI_OBS,
    NUCLEI_TABLE,
    RASTER_FORMAT,
    RASTER_NGFF,
    REGION_KEY,
    TABLE_FORMAT,
    TABLE_NAME,
    check_unique,
    element_name,
    region_name,
    table_attrs,
)


def _system(name: str, axes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A coordinate system: spatial axes without a physical unit are in ``pixel``."""
    return {"name": name, "axes": [{"unit": "pixel", **a} if a.get("type") == "space" else dict(a) for a in axes]}


def element_attrs(ome: Mapping[str, Any], system: str, offset: Sequence[int] = (0, 0)) -> dict[str, Any]:
    """A stored image's or label's ``ome`` block as a SpatialData raster element: its levels and their
    transforms unchanged, plus two transforms from the element's pixels: to its own coordinate system
    ``system`` (the identity, unit ``pixel``, or with a known pixel size the scale to micrometres), and
    to :data:`GLOBAL`, the same placed at ``offset`` (``(y, x)`` full-resolution pixels: the image's
    place in the shard's grid)."""
    ms = dict(ome["multiscales"][0])
    axes = ms["axes"]
    intrinsic = "".join(a["name"] for a in axes)
    ends = {"input": _system(intrinsic, [{k: v for k, v in a.items() if k != "unit"} for a in axes])}
    first = [float(v) for v in ms["datasets"][0]["coordinateTransformations"][0]["scale"]]
    if any(a.get("unit") not in (None, "pixel") for a in axes) and any(v != 1 for v in first):
        # physical units known (conversion.pixel_size_um): full-resolution pixels -> micrometres
        own: dict[str, Any] = {"type": "scale", "scale": first}
    else:
        own, first = {"type": "identity"}, [1.0] * len(axes)
    shift = [0.0] * (len(axes) - 2) + [float(o) * s for o, s in zip(offset, first[-2:], strict=True)]
    placed = [[s if j == i else 0.0 for j in range(len(axes))] + [shift[i]] for i, s in enumerate(first)]
    ms["coordinateTransformations"] = [
        {**own, **ends, "output": _system(system, axes)},
        {"type": "affine", "affine": placed, **ends, "output": _system(GLOBAL, axes)},
    ]
    block = {k: v for k, v in ome.items() if k not in ("multiscales", "version")}
    return {
        "ome": {**block, "version": RASTER_NGFF, "multiscales": [ms]},
        "spatialdata_attrs": {"version": RASTER_FORMAT},
    }


def cell_properties(rows: pd.DataFrame, catalog: LabelCatalog) -> list[dict[str, Any]]:
    """``image-label`` properties of one image's cells (rows of the merged cells table): label value,
    area, predicted classes (names joined by ``|``) and confidence (the highest fused probability)."""
    from hpa_batch.results.h5ad import label_names

    probs = [f"fused_prob_{k}" for k in range(catalog.n_classes)]
    conf = rows[probs].to_numpy(np.float32).max(axis=1) if all(c in rows for c in probs) else None
    props = []
    for i, (cell, area) in enumerate(zip(rows["cell_id"].to_numpy(), rows["area"].to_numpy(), strict=True)):
        entry: dict[str, Any] = {"label-value": int(cell), "area (pixels)": int(area)}
        if "predicted" in rows:
            entry["predicted"] = label_names(rows["predicted"].iat[i], catalog)
        if conf is not None:
            entry["confidence"] = round(float(conf[i]), 4)
        props.append(entry)
    return props


def _write_group(path: Path, attrs: Mapping[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    (path / "zarr.json").write_text(json_text(meta))


def _link_levels(source: Path, element: Path, final_element: Path, ome: Mapping[str, Any]) -> None:
    """Link each level array of ``source`` into ``element`` (relative to where it will be published)."""
    for ds in ome["multiscales"][0]["datasets"]:
        target = os.path.relpath(os.path.abspath(source / ds["path"]), os.path.abspath(final_element))
        (element / ds["path"]).symlink_to(target, target_is_directory=True)


def _read_ome(group: Path) -> dict[str, Any]:
    from hpa_batch.core.ngff import read_group_attrs

    return dict(read_group_attrs(group)["ome"])


def _write_image(
    store: Path, image_id: str, rows: pd.DataFrame, where: tuple[Path, Path, tuple[int, int]], catalog: LabelCatalog
) -> None:
    """One image's elements: ``where`` = (the store being written, its final path, the image's offset)."""
    tmp, out, offset = where
    name = element_name(image_id)
    ome = _read_ome(store / image_id)
    _write_group(tmp / "images" / name, element_attrs(ome, name, offset))
    _link_levels(store / image_id, tmp / "images" / name, out / "images" / name, ome)
    for label in LABELS:
        source = store / image_id / "labels" / label
        lab = _read_ome(source)
        attrs = element_attrs(lab, name, offset)
        if label == ANNOTATED:
            # no "source": ome-zarr-py would then read the image as a second node of the element,
            # which spatialdata refuses
            image_label = {k: v for k, v in lab.get("image-label", {}).items() if k != "source"}
            image_label["properties"] = cell_properties(rows, catalog)
            attrs["ome"]["image-label"] = image_label
        element = f"{name}_{label}"
        _write_group(tmp / "labels" / element, attrs)
        _link_levels(source, tmp / "labels" / element, out / "labels" / element, lab)


def _write_table(adata: Any, path: Path, regions: Sequence[str]) -> None:
    import warnings

    import anndata as ad

    with ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding")  # a future default, not a problem
        adata.write_zarr(path)
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(
        {"spatialdata-encoding-type": "ngff:regions_table", **table_attrs(regions), "version": TABLE_FORMAT}
    )
    meta_path.write_text(json_text(meta))


def nuclei_table(cells: Any, regions: Sequence[str]) -> Any:
    """The table annotating the nuclei labels: one row per cell of ``cells`` (the cells table's
    AnnData), its :data:`NUCLEI_OBS` columns, ``region`` = its image's nuclei element, ``instance_id``
    = its nucleus' label value (the cell id)."""
    import anndata as ad

    obs = cells.obs[[c for c in NUCLEI_OBS if c in cells.obs]].copy()
    obs[REGION_KEY] = pd.Categorical([region_name(i, "nuclei") for i in obs["image_id"]], categories=list(regions))
    obs[INSTANCE_KEY] = cells.obs[INSTANCE_KEY].to_numpy()
    return ad.AnnData(obs=obs, uns={"spatialdata_attrs": table_attrs(regions)})


def store_images(store: Path) -> list[str]:
    """The image ids of a shard store (its groups with multiscales), sorted."""
    from hpa_batch.core.ngff import image_groups

    return [p.name for p in image_groups(Path(store))]


def write_spatialdata(
    *,
    store: Path,
    cells_table: Path,
    shard: str,
    out: Path,
    catalog: LabelCatalog,
    embeddings: Embeddings | None = None,
    h5ad: Path | None = None,
) -> dict[str, int]:
    """Write the SpatialData store of one shard (see the module docstring).

    Parameters
    ----------
    store : Path
        ``results/zarr/{shard}.zarr`` (segmented: every image has ``labels/cells`` and ``labels/nuclei``).
    cells_table : Path
        The merged ``cells.parquet``; the rows of ``shard`` become the table.
    embeddings : Embeddings, optional
        The cell model's predictions and the encoders' stores of this shard (the same obsm and uns
        entries as ``cells.h5ad``).
    h5ad : Path, optional
        The run's ``cells.h5ad``: its ``X_umap`` rows of this shard (the map is fitted over the run).

    Returns
    -------
    dict
        ``{"images": n, "cells": n}``.
    """
    from hpa_batch.core.ngff import full_shape, grid_offsets, series_groups
    from hpa_batch.core.tables import read_parquet
    from hpa_batch.results.h5ad import read_umap, shard_anndata

    store, out = Path(store), Path(out)
    image_ids = [g.name for g in series_groups(store)]  # the order the grid (and napari) places them
    check_unique(image_ids)
    table = read_parquet(cells_table, filters=[("shard", "==", shard)])
    unknown = sorted(set(table["image_id"]) - set(image_ids))
    if unknown:
        raise ValueError(f"{cells_table}: cells of images not in {store}: {', '.join(unknown[:5])}")
    embeddings = embeddings or Embeddings()
    obsm, uns = (embeddings.obsm(table) if len(table) else {}), embeddings.provenance()
    if h5ad is not None:
        xy, uns["umap"] = read_umap(h5ad, shard, list(table["image_id"] + "_" + table["cell_id"].astype(str)))
        if xy is not None:  # no map when the run has too few cells (uns["umap"] says so)
            obsm["X_umap"] = xy
    regions = [region_name(i) for i in image_ids]
    adata = shard_anndata(table, catalog, obsm, regions=regions, uns=uns)
    by_image = dict(tuple(table.groupby("image_id", sort=False)))
    empty = table.iloc[:0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, keep_suffix=True) as tmp:
        tmp.mkdir()
        root = {"spatialdata_attrs": {"version": CONTAINER_FORMAT, "spatialdata_software_version": "0.7.3"}}
        _write_group(tmp, {**root, **SpatialDataStamp(shard=shard, complete=True, version=__version__).to_attrs()})
        _write_group(tmp / "images", {})
        _write_group(
            tmp / "labels", {"ome": {"labels": [f"{element_name(i)}_{lab}" for i in image_ids for lab in LABELS]}}
        )
        _write_group(tmp / "tables", {})
        offsets = grid_offsets([full_shape(store / i) for i in image_ids])
        for image_id, offset in zip(image_ids, offsets, strict=True):
            _write_image(store, image_id, by_image.get(image_id, empty), (tmp, out, offset), catalog)
        _write_table(adata, tmp / "tables" / TABLE_NAME, regions)
        nuclei = [region_name(i, "nuclei") for i in image_ids]
        _write_table(nuclei_table(adata, nuclei), tmp / "tables" / NUCLEI_TABLE, nuclei)
    return {"images": len(image_ids), "cells": len(table)}


def store_problem(path: Path, *, deep: bool = False) -> str | None:
    """Why a SpatialData store written here is damaged, or None: its root and table metadata readable,
    every linked level present (a removed or reconverted shard store breaks links); ``deep`` also reads
    the table."""
    path = Path(path)
    try:
        root = json.loads((path / "zarr.json").read_text())["attributes"]
        if "spatialdata_attrs" not in root:
            return "no spatialdata_attrs in zarr.json: not a SpatialData store"
        table = json.loads((path / "tables" / TABLE_NAME / "zarr.json").read_text())["attributes"]
        if table.get("region_key") != REGION_KEY:
            return f"tables/{TABLE_NAME} does not annotate the labels (no region_key)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable metadata ({type(exc).__name__}: {exc})"
    for kind in ("images", "labels"):
        for element in sorted((path / kind).iterdir()) if (path / kind).is_dir() else []:
            if element.is_dir() and not element.name.startswith("."):
                try:  # every element's own metadata (its levels' links are checked below)
                    json.loads((element / "zarr.json").read_text())["attributes"]["ome"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    return f"{kind}/{element.name}/zarr.json unreadable ({type(exc).__name__}: {exc})"
            for link in sorted(element.iterdir()) if element.is_dir() else []:
                if link.is_symlink() and not (link / "zarr.json").is_file():
                    return f"{kind}/{element.name}/{link.name} links to a missing array ({os.readlink(link)})"
    if deep:
        try:
            import anndata as ad

            ad.read_zarr(path / "tables" / TABLE_NAME)
        except Exception as exc:  # noqa: BLE001 (a table that does not open is the damage)
            return f"tables/{TABLE_NAME} unreadable ({type(exc).__name__}: {exc})"
    return None
