"""OME-NGFF 0.5 multiscale images in zarr-python 3 stores.

Each image is a group ``{image_id}/`` with arrays ``s0 .. sN`` of shape ``(4, y, x)`` uint16 in the
canonical channel order. Chunks are one channel x ``chunk`` x ``chunk``; each level is ONE zarr shard
(sharding codec), so an image is ``levels x 2 + 1`` files whatever its size. Every chunk is written, even
an empty one (``write_empty_chunks``), which makes completeness checkable from the shard index alone.
The shard files are written in one pass by :mod:`hpa_batch.core.shards` (the bytes zarr-python writes).

An image is written into a staging directory, verified (every level's shard file present with every
chunk in its index and a valid index checksum), stamped ``complete`` in its attributes and only then
renamed into the store; a killed job leaves at most a staging directory, never a half image in the store.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpa_batch import CHANNEL_COLORS, CHANNEL_STAINS, CHANNELS, __version__
from hpa_batch.core.shards import (
    CodecConfig,
    IncompleteShardError,
    check_shard_index,
    update_group_attributes,
    write_array,
    write_group,
)
from hpa_batch.core.stamps import ImageStamp, LabelsStamp, stamp_dict

NGFF_VERSION = "0.5"
#: The label images of every segmented image (``<image>/labels/<name>``).
LABEL_NAMES = ("cells", "nuclei")


def level_name(k: int) -> str:
    """The array path of pyramid level ``k`` (``s0`` = full resolution), as written here."""
    return f"s{k}"


def label_level(name: str, k: int = 0) -> str:
    """The path of level ``k`` of label image ``name`` inside an image group (``labels/cells/s0``)."""
    return f"labels/{name}/{level_name(k)}"


def multiscale_datasets(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``datasets`` of the first multiscale of a group's attributes (NGFF 0.5: under ``ome``)."""
    return list(attrs["ome"]["multiscales"][0]["datasets"])


def level_paths(group: Any) -> list[str]:
    """Array paths of an open image (or label) group's levels, finest first, as its metadata lists them."""
    return [d["path"] for d in multiscale_datasets(group.attrs)]


class IncompleteImageError(RuntimeError):
    """A stored image with missing or damaged data."""


def level_shapes(height: int, width: int, min_level_size: int, max_levels: int | None = None) -> list[tuple[int, int]]:
    """Shapes of the pyramid levels: halve (rounding up) until the longer side <= ``min_level_size``.

    >>> level_shapes(2048, 2048, 512)
    [(2048, 2048), (1024, 1024), (512, 512)]
    """
    shapes = [(height, width)]
    while max(shapes[-1]) > min_level_size and (max_levels is None or len(shapes) < max_levels):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def downsample2x(arr: np.ndarray) -> np.ndarray:
    """2x2 mean of the last two axes, rounded half up; an odd last row/column is edge-replicated.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(..., h, w)`` unsigned integer.

    Returns
    -------
    numpy.ndarray
        ``(..., ceil(h/2), ceil(w/2))``, same dtype.
    """
    h, w = arr.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (arr.ndim - 2) + [(0, h % 2), (0, w % 2)]
        arr = np.pad(arr, pad, mode="edge")
    wide = np.uint64 if arr.dtype.itemsize >= 4 else np.uint32  # a sum of four never overflows
    s: np.ndarray[Any, np.dtype[np.unsignedinteger[Any]]] = arr[..., 0::2, 0::2].astype(
        wide
    )  # in-place sums of the other three: half the passes of a + b + c + d
    s += arr[..., 1::2, 0::2]
    s += arr[..., 0::2, 1::2]
    s += arr[..., 1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(arr.dtype)


def level_transforms(k: int, pixel_size_um: float | None, sampled_from: int | None = None) -> tuple[float, float]:
    """Scale and translation (per spatial axis, in units of ``pixel_size_um`` or full-resolution pixels)
    of pyramid level ``k``.

    Image levels are 2x means: a level-``k`` pixel covers ``2**k`` full-resolution pixels and its
    centre is ``(2**k - 1) / 2`` from theirs. A label image made at level ``sampled_from`` and
    subsampled (every ``2**(k - L)``-th pixel) to a coarser level ``k`` keeps the centres of level ``L``:
    translation ``(2**L - 1) / 2``.
    """
    px = float(pixel_size_um or 1.0)
    shift_level = k if sampled_from is None else min(k, sampled_from)
    return px * 2**k, px * (2**shift_level - 1) / 2


def _multiscale(
    n_levels: int, name: str, pixel_size_um: float | None, channel_axis: bool, sampled_from: int | None = None
) -> dict[str, Any]:
    unit = {"unit": "micrometer"} if pixel_size_um else {}
    lead_scale, lead_shift = ([1.0], [0.0]) if channel_axis else ([], [])
    datasets = []
    for k in range(n_levels):
        scale, shift = level_transforms(k, pixel_size_um, sampled_from)
        datasets.append(
            {
                "path": level_name(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [*lead_scale, scale, scale]},
                    {"type": "translation", "translation": [*lead_shift, shift, shift]},
                ],
            }
        )
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    if channel_axis:
        axes.insert(0, {"name": "c", "type": "channel"})
    return {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "mean" if channel_axis else "nearest",
        "metadata": {"version": __version__},
    }


#: Percentiles of a channel's pixels that bound its display window (:func:`channel_windows`).
WINDOW_PERCENTILES = (0.5, 99.9)


def channel_windows(image: np.ndarray) -> list[tuple[int, int]]:
    """Display window ``(start, end)`` per channel of a ``(c, h, w)`` image (its coarsest level is
    enough): the :data:`WINDOW_PERCENTILES` of its pixels, ``end > start``, so a viewer shows every
    channel's own range instead of one fixed window that saturates bright stains and hides dim ones."""
    flat = image.reshape(image.shape[0], -1)
    lo, hi = np.percentile(flat, WINDOW_PERCENTILES, axis=1)
    return [(int(a), max(int(np.ceil(b)), int(a) + 1)) for a, b in zip(lo, hi)]


def multiscales_attrs(
    n_levels: int,
    name: str,
    pixel_size_um: float | None,
    dtype_max: int = 65535,
    windows: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The ``ome`` attribute block (NGFF 0.5) of an image group with ``n_levels`` 2x levels; ``windows``
    (one ``(start, end)`` per channel, :func:`channel_windows`) sets the ``omero`` display windows
    (default 0-8000)."""
    shown = list(windows) if windows is not None else [(0, min(dtype_max, 8000))] * len(CHANNELS)
    return {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(n_levels, name, pixel_size_um, channel_axis=True)],
        "omero": {
            "channels": [
                {
                    "label": f"{c} ({CHANNEL_STAINS[c]})",
                    "color": CHANNEL_COLORS[c],
                    "active": True,
                    "window": {"min": 0, "max": dtype_max, "start": start, "end": end},
                }
                for c, (start, end) in zip(CHANNELS, shown, strict=True)
            ],
            "rdefs": {"model": "color"},
        },
    }


def label_attrs(
    n_levels: int,
    name: str,
    pixel_size_um: float | None,
    *,
    sampled_from: int | None = None,
    full: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``ome`` attribute block of one label image (``labels/{name}``), axes ``(y, x)``.

    Parameters
    ----------
    sampled_from : int, optional
        The level the labels were made at (coarser levels are subsampled from it:
        :func:`level_transforms`).
    full : numpy.ndarray, optional
        ``(y, x)`` uint32 labels at full resolution: every label value present gets a colour
        (``colors``; 0, the background, transparent) and its area in full-resolution pixels
        (``properties``; the same values, as the spec asks).
    """
    image_label: dict[str, Any] = {"source": {"image": "../../"}}
    if full is not None:
        areas = np.bincount(full.ravel())
        values = [int(v) for v in np.flatnonzero(areas) if v]
        image_label["colors"] = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
            {"label-value": v, "rgba": label_color(v)} for v in values
        ]
        image_label["properties"] = [{"label-value": v, "area (pixels)": int(areas[v])} for v in [0, *values]]
    return {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(n_levels, name, pixel_size_um, channel_axis=False, sampled_from=sampled_from)],
        "image-label": image_label,
    }


def label_color(value: int) -> list[int]:
    """A distinct, opaque RGBA colour for label ``value`` (golden-ratio hues; the same value, the same colour)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 0.95)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def label_levels(mask: np.ndarray, work_level: int, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """A label image computed at pyramid level ``work_level``, brought to every level exactly.

    Finer levels repeat each pixel ``2**(work_level - k)`` times (nearest, exact inverse of the
    image pyramid's grid); coarser levels take every ``2**(k - work_level)``-th pixel.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(y_L, x_L)`` integer labels at level ``work_level``.
    shapes : sequence of (int, int)
        ``(y_k, x_k)`` of every image level.

    Returns
    -------
    list of numpy.ndarray
        ``(y_k, x_k)`` uint32 per level.
    """
    out = []
    for k, (h, w) in enumerate(shapes):
        if k <= work_level:
            f = 2 ** (work_level - k)
            level = np.repeat(np.repeat(mask, f, axis=0), f, axis=1)[:h, :w]
        else:
            f = 2 ** (k - work_level)
            level = mask[::f, ::f][:h, :w]
        if level.shape != (h, w):
            raise ValueError(f"label level {k}: shape {level.shape} != image level {(h, w)}")
        out.append(np.ascontiguousarray(level, dtype=np.uint32))
    return out


def write_pyramid(
    path: Path,
    levels: Sequence[np.ndarray],
    *,
    chunk: int,
    codec: CodecConfig,
    ome: dict[str, Any],
) -> None:
    """Write pre-computed levels as arrays ``s0..`` of a new group at ``path`` (no completion stamp).

    Parameters
    ----------
    levels : sequence of numpy.ndarray
        ``(c, y_k, x_k)`` (image) or ``(y_k, x_k)`` (labels) arrays, one per level, same dtype.
    """
    write_group(path, {"ome": ome}, replace=True)
    for k, data in enumerate(levels):
        write_array(Path(path) / level_name(k), data, chunk=chunk, codec=codec)


def write_labels(
    path: Path,
    masks: Mapping[str, Sequence[np.ndarray]],
    *,
    chunk: int,
    codec: CodecConfig,
    pixel_size_um: float | None,
    info: dict[str, Any],
    sampled_from: int | None = None,
) -> None:
    """Write a ``labels`` group (NGFF 0.5) holding one multiscale label image per mask, verify every
    label image, and stamp the labels group complete with ``info``.

    Parameters
    ----------
    path : Path
        Where the ``labels`` group goes (a staging directory; see :func:`publish`).
    masks : dict of str to sequence of numpy.ndarray
        Name -> ``(y_k, x_k)`` uint32 per level (:func:`label_levels`).
    sampled_from : int, optional
        The level the masks were made at (:func:`label_attrs`).
    """
    write_group(path, {"ome": {"version": NGFF_VERSION, "labels": list(masks)}}, replace=True)
    for name, levels in masks.items():
        ome = label_attrs(len(levels), name, pixel_size_um, sampled_from=sampled_from, full=levels[0])
        write_pyramid(path / name, levels, chunk=chunk, codec=codec, ome=ome)
        verify_image(path / name)
    update_group_attributes(path, LabelsStamp.from_dict({**info, "complete": True, "version": __version__}).to_attrs())


def labels_complete(image_path: Path, names: Sequence[str]) -> bool:
    """True if ``image_path/labels`` is stamped complete and every named label image verifies."""
    labels = Path(image_path) / "labels"
    try:
        if not stamp_dict(read_group_attrs(labels)).get("complete"):
            return False
        for name in names:
            verify_image(labels / name)
    except IncompleteImageError:
        return False
    return True


def _level_meta(array_path: Path) -> dict[str, Any]:
    meta_path = array_path / "zarr.json"
    try:
        return json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise IncompleteImageError(f"{meta_path}: unreadable array metadata ({exc})") from None


def full_shape(group: Path) -> tuple[int, int]:
    """``(height, width)`` of an image or label group's full-resolution level, from the metadata alone."""
    level = multiscale_datasets(read_group_attrs(group))[0]["path"]
    shape = _level_meta(Path(group) / level)["shape"]
    return int(shape[-2]), int(shape[-1])


def verify_level(array_path: Path) -> int:
    """Check every shard of one level array; return its total bytes on disk."""
    meta = _level_meta(array_path)
    shape = meta["shape"]
    sharding = meta["codecs"][0]
    if sharding.get("name") != "sharding_indexed":
        raise IncompleteImageError(f"{array_path}: not a sharded array")
    shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    inner = sharding["configuration"]["chunk_shape"]
    n_inner = math.prod(s // i for s, i in zip(shard_shape, inner))
    grid = [math.ceil(n / s) for n, s in zip(shape, shard_shape)]
    total = 0
    for idx in np.ndindex(*grid):
        shard_path = array_path.joinpath("c", *(str(i) for i in idx))
        try:
            check_shard_index(shard_path, n_inner)
        except IncompleteShardError as exc:
            raise IncompleteImageError(str(exc)) from None
        total += shard_path.stat().st_size
    return total


def read_group_attrs(path: Path) -> dict[str, Any]:
    """Attributes of a zarr v3 group directory (raises IncompleteImageError if unreadable)."""
    meta_path = Path(path) / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise IncompleteImageError(f"{meta_path}: unreadable group metadata ({exc})") from None
    return meta.get("attributes", {})


def verify_image(path: Path) -> dict[str, Any]:
    """Verify a stored image: multiscales metadata, every level's shards and chunks.

    Returns
    -------
    dict
        ``{"levels": n, "bytes": total, "shapes": [...]}``.

    Raises
    ------
    IncompleteImageError
        Naming the file and what is wrong.
    """
    attrs = read_group_attrs(path)
    try:
        datasets = attrs["ome"]["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError):
        raise IncompleteImageError(f"{path}: no OME multiscales metadata") from None
    total, shapes = 0, []
    for ds in datasets:
        total += verify_level(Path(path) / ds["path"])
        shapes.append(_level_meta(Path(path) / ds["path"])["shape"])
    return {"levels": len(datasets), "bytes": total, "shapes": shapes}


def stamp_complete(path: Path, info: dict[str, Any]) -> None:
    """Record in the group's attributes that the image was verified complete (:class:`ImageStamp`)."""
    update_group_attributes(path, ImageStamp.from_dict({**info, "complete": True, "version": __version__}).to_attrs())


def is_complete(path: Path) -> bool:
    """True if the image group is stamped complete AND verifies."""
    try:
        if not stamp_dict(read_group_attrs(path)).get("complete"):
            return False
        verify_image(path)
    except IncompleteImageError:
        return False
    return True


def publish(staging: Path, final: Path) -> None:
    """Move a verified image from its staging directory into the store (atomic rename)."""
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def count_files(path: Path) -> int:
    """Number of files under ``path``."""
    return sum(1 for p in Path(path).rglob("*") if p.is_file())


#: The group of a shard store that describes it as a collection (the bioformats2raw layout's ``OME``).
COLLECTION_GROUP = "OME"
_OME_XMLNS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def collection_xml(image_ids: Sequence[str]) -> str:
    """``OME/METADATA.ome.xml`` of a shard store: one ``Image`` per image group, ``ID="Image:<group>"``
    (the path napari-ome-zarr's reader opens) and ``Name`` = the image id."""
    import xml.etree.ElementTree as ET

    root = ET.Element("OME", {"xmlns": _OME_XMLNS, "Creator": f"hpa_batch {__version__}"})
    for image_id in image_ids:
        ET.SubElement(root, "Image", {"ID": f"Image:{image_id}", "Name": image_id})
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def write_collection(store: Path, image_ids: Sequence[str]) -> None:
    """Describe a shard store as a collection of its images (OME-NGFF's bioformats2raw layout, with the
    image groups named by the OME group's ``series`` instead of 0..n): the root's
    ``bioformats2raw.layout`` and ``OME/`` with ``series`` and ``METADATA.ome.xml``. napari-ome-zarr then
    opens the whole shard, each image with its labels; an image group alone stays a plain image."""
    from hpa_batch.core.atomic import atomic_write_json, atomic_write_text

    ome = Path(store) / COLLECTION_GROUP
    ome.mkdir(exist_ok=True)
    meta = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"ome": {"version": NGFF_VERSION, "series": list(image_ids)}},
    }
    atomic_write_json(ome / "zarr.json", meta, indent=2)
    atomic_write_text(ome / "METADATA.ome.xml", collection_xml(image_ids))
    update_group_attributes(Path(store), {"ome": {"version": NGFF_VERSION, "bioformats2raw.layout": 3}})


def is_image_group(path: Path) -> bool:
    """True if ``path`` is a zarr group with OME multiscales metadata."""
    try:
        return "multiscales" in read_group_attrs(path).get("ome", {})
    except IncompleteImageError:
        return False


def image_groups(path: Path) -> list[Path]:
    """The image groups of a shard store, or ``[path]`` if ``path`` is itself an image."""
    path = Path(path)
    if is_image_group(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and is_image_group(p))


#: Empty full-resolution pixels between neighbouring images of a shard laid out as a grid.
GRID_GAP = 128


def grid_offsets(shapes: Sequence[tuple[int, int]], gap: int = GRID_GAP) -> list[tuple[int, int]]:
    """Where each image of a shard goes when the shard is shown as one layout: ``(y, x)`` of its top-left
    corner in full-resolution pixels, row by row in the order given, ``ceil(sqrt(n))`` images per row,
    each in a cell as large as the largest image plus ``gap`` (so no two images overlap whatever their
    sizes). The napari reader and the SpatialData ``global`` coordinate system use the same layout.

    Parameters
    ----------
    shapes : sequence of (int, int)
        ``(height, width)`` of each image at full resolution.
    """
    if not shapes:
        return []
    columns = math.ceil(math.sqrt(len(shapes)))
    cell_h = max(h for h, _ in shapes) + gap
    cell_w = max(w for _, w in shapes) + gap
    return [((i // columns) * cell_h, (i % columns) * cell_w) for i in range(len(shapes))]


def series_groups(store: Path) -> list[Path]:
    """The image groups of a shard store in its collection's ``series`` order (the order a layout
    places them; the store's own order without a collection description); an image group: itself."""
    store = Path(store)
    groups = image_groups(store)
    if len(groups) == 1 and groups[0] == store:
        return groups
    try:
        series = read_group_attrs(store / COLLECTION_GROUP)["ome"]["series"]
    except Exception:  # noqa: BLE001 (no collection description: the store's own order)
        return groups
    found = {g.name: g for g in groups}
    return [found[s] for s in series if s in found]
