"""A shard store as one layout in napari (the ``hpa-batch`` napari reader, ``hpa_batch/napari.yaml``).

``napari --plugin hpa-batch results/zarr/<shard>.zarr`` opens every image of the shard side by side
(:func:`hpa_batch.core.ngff.grid_offsets`: the layout the SpatialData ``global`` coordinate system uses
too), each as its four channel layers (the stains' colours and display windows) with its ``cells`` and
``nuclei`` labels above them, visible. Hovering a cell shows its id, area and, once the run has merged
its tables (``results/tables/cells.parquet`` beside the store's results folder), its predicted classes
by name and their confidence. ``napari --plugin hpa-batch results/zarr/<shard>.zarr/<image_id>`` opens
one image alone at the origin.

Layers are lazy (dask arrays over every pyramid level): nothing is read until it is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hpa_batch import CHANNELS
from hpa_batch.core.ngff import LABEL_NAMES, full_shape, grid_offsets, image_groups, read_group_attrs, series_groups

#: What napari takes from a reader: (data, layer keyword arguments, layer type).
LayerData = tuple[Any, dict[str, Any], str]


def _levels(group: Path, ome: dict[str, Any]) -> tuple[list[Any], list[float], str | None]:
    """The lazy pyramid of an image or label group (``ome``: its attributes' ``ome`` block), its level-0
    ``(y, x)`` scale and the unit of its spatial axes (None: pixels)."""
    import dask.array as da

    ms = ome["multiscales"][0]
    data = [da.from_zarr(str(group / ds["path"])) for ds in ms["datasets"]]
    scale = next(t["scale"] for t in ms["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
    unit = next((a.get("unit") for a in ms["axes"] if a.get("type") == "space" and a.get("unit")), None)
    return data, [float(v) for v in scale[-2:]], unit


def cell_features(store: Path) -> Callable[[str, dict[str, Any]], pd.DataFrame]:
    """For one shard store: image id and the ``ome`` block of its ``labels/cells`` -> the napari ``features`` of its
    cells (``index`` = label value, ``area (pixels)``; with the run's merged ``cells.parquet``,
    ``predicted`` (class names) and ``confidence``)."""
    from hpa_batch import layout
    from hpa_batch.core.labels import get_catalog
    from hpa_batch.core.tables import read_class_metadata, read_parquet
    from hpa_batch.results.spatialdata import cell_properties

    table = layout.result(store.parent.parent, "cells_table")
    by_image: dict[str, pd.DataFrame] = {}
    catalog = None
    about = read_class_metadata(table) if table.is_file() else None
    if about is not None:
        catalog = get_catalog(about["catalog"])
        cols = ["image_id", "cell_id", "area", "predicted", *(f"fused_prob_{k}" for k in range(catalog.n_classes))]
        rows = read_parquet(table, columns=cols, filters=[("shard", "==", store.name.removesuffix(".zarr"))])
        by_image = dict(tuple(rows.groupby("image_id", sort=False)))

    def features(image_id: str, cells: dict[str, Any]) -> pd.DataFrame:
        if catalog is not None and image_id in by_image:
            props = cell_properties(by_image[image_id], catalog)
        else:  # not merged yet: what the labels record (their areas)
            props = [p for p in cells["image-label"].get("properties", []) if p["label-value"]]
        frame = pd.DataFrame(props).rename(columns={"label-value": "index"})
        return pd.concat([pd.DataFrame({"index": [0]}), frame], ignore_index=True)  # 0: the background

    return features


def shard_layers(path: str | Path) -> list[LayerData]:
    """napari layers of a shard store laid out as a grid, or of one image group (see the module).

    Returns
    -------
    list of (data, kwargs, layer type)
        Per image: one ``image`` entry with ``channel_axis=0`` (four layers) and one ``labels`` entry per
        label image, all translated to the image's place in the grid (in the store's units).
    """
    store = Path(path)
    groups = series_groups(store)
    offsets = grid_offsets([full_shape(g) for g in groups]) if len(groups) > 1 else [(0, 0)] * len(groups)
    features = cell_features(store if len(groups) > 1 else store.parent)
    layers: list[LayerData] = []
    for group, (oy, ox) in zip(groups, offsets, strict=True):
        ome = read_group_attrs(group)["ome"]
        data, scale, unit = _levels(group, ome)
        translate = [oy * scale[0], ox * scale[1]]
        omero = ome.get("omero", {}).get("channels", [])
        windows = [[c["window"]["start"], c["window"]["end"]] for c in omero] or None
        layers.append(
            (
                data,
                {
                    "channel_axis": 0,
                    "name": [f"{group.name} {c}" for c in CHANNELS],
                    "colormap": list(CHANNELS),
                    "blending": "additive",
                    "contrast_limits": windows,
                    "scale": scale,
                    "translate": translate,
                    "units": unit,
                    "multiscale": True,
                },
                "image",
            )
        )
        layers += _label_layers(group, translate, features)
    return layers


def _label_layers(
    group: Path, translate: Sequence[float], features: Callable[[str, dict[str, Any]], pd.DataFrame]
) -> list[LayerData]:
    out: list[LayerData] = []
    for name in LABEL_NAMES:
        labels = group / "labels" / name
        if not (labels / "zarr.json").is_file():
            continue
        ome = read_group_attrs(labels)["ome"]
        data, scale, _ = _levels(labels, ome)
        kwargs: dict[str, Any] = {
            "name": f"{group.name} {name}",
            "scale": scale,
            "translate": list(translate),
            "multiscale": True,
            "visible": True,
            "opacity": 0.5 if name == "cells" else 0.35,
        }
        if name == "cells":
            kwargs["features"] = features(group.name, ome)
        out.append((data, kwargs, "labels"))
    return out


def napari_get_reader(path: str | list[str]) -> Callable[[str | Path], list[LayerData]] | None:
    """napari's reader hook: :func:`shard_layers` for a shard store or one of its image groups written
    by this package (a zarr group holding OME multiscales images); None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not p.is_dir() or not (p / "zarr.json").is_file():
        return None
    try:
        groups = image_groups(p)
    except Exception:  # noqa: BLE001 (not a store this reader knows)
        return None
    return shard_layers if groups else None
