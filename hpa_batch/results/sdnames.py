"""SpatialData names shared by the per-cell h5ad and the SpatialData stores: element and region names,
the table's keys and format versions (one home, so :mod:`hpa_batch.results.h5ad` and
:mod:`hpa_batch.results.spatialdata` import neither each other for them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: SpatialData's container format version (root ``spatialdata_attrs``).
CONTAINER_FORMAT = "0.2"
#: The raster element format spatialdata 0.7 writes and reads.
RASTER_FORMAT = "0.3"
RASTER_NGFF = "0.5-dev-spatialdata"
#: The table element format, its encoding type and its keys.
TABLE_FORMAT = "0.2"
TABLE_NAME = "table"
#: The table annotating the nuclei labels: the same cells' ids and predictions, so a plot coloured by a
#: column (``pl.render_labels(color="predicted")``) finds a table for every labels element.
NUCLEI_TABLE = "nuclei"
#: The columns of ``obs`` the nuclei table repeats.
NUCLEI_OBS = ("image_id", "cell_id", "cell_line", "predicted", "fold")
REGION_KEY = "region"
INSTANCE_KEY = "instance_id"
#: Label images of a stored image (``labels/{name}``) and the one the table annotates.
LABELS = ("cells", "nuclei")
ANNOTATED = "cells"
#: The coordinate system every element of a store shares: the shard's images side by side
#: (:func:`hpa_batch.core.ngff.grid_offsets`, the napari reader's layout).
GLOBAL = "global"
_NAME_CHARS = frozenset("_-.")


def element_name(image_id: str) -> str:
    """The SpatialData element name of an image: ``image_id`` with every character spatialdata refuses
    (anything but letters, digits, ``_``, ``-``, ``.``) as ``_``; a leading ``__`` or ``.`` gets an
    ``i`` in front. HPA ids (``5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0``) pass unchanged."""
    name = "".join(c if c.isalnum() or c in _NAME_CHARS else "_" for c in str(image_id))
    return f"i{name}" if not name or name.startswith(("__", ".")) else name


def region_name(image_id: str, label: str = ANNOTATED) -> str:
    """The labels element of ``image_id``'s ``label`` image (the table's ``region`` value)."""
    return f"{element_name(image_id)}_{label}"


def check_unique(image_ids: Iterable[str]) -> None:
    """Refuse ids whose element names coincide (spatialdata compares names ignoring case).

    Raises
    ------
    ValueError
        Naming both ids.
    """
    seen: dict[str, str] = {}
    for image_id in image_ids:
        key = element_name(image_id).lower()
        if key in seen and seen[key] != image_id:
            raise ValueError(
                f"images {seen[key]!r} and {image_id!r} get the same SpatialData element name "
                f"{element_name(image_id)!r}: rename one in the metadata table"
            )
        seen[key] = image_id


def table_attrs(regions: Sequence[str]) -> dict[str, Any]:
    """``uns["spatialdata_attrs"]`` of a table annotating the labels elements ``regions``."""
    return {"region": list(regions), "region_key": REGION_KEY, "instance_key": INSTANCE_KEY}
