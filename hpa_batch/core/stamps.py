"""The ``hpa_batch`` stamp of every zarr group a stage writes, in one place.

A stage records what it wrote in the group attribute ``hpa_batch`` (:data:`STAMP_KEY`). Each kind of
group has one typed record here; writers build the record and call :meth:`to_attrs`, readers call
``from_attrs`` / :func:`read_stamp` and get typed fields (never string lookups elsewhere):

=====================  ===========================================  ===============================
record                 group                                        written by
=====================  ===========================================  ===============================
:class:`ShardStamp`    a shard store's root (``zarr/{shard}.zarr``)   convert
:class:`ImageStamp`    one image of a shard store                    convert (``stamp_complete``)
:class:`LabelsStamp`   an image's ``labels`` group                   segment (``write_labels``)
:class:`TileStamp`     a tile store (``tiles/{shard}.zarr``)          tiles
:class:`EmbeddingStamp` an encoder's store (``embeddings/...``)       embed
:class:`SpatialDataStamp` a SpatialData store's root                 spatialdata
=====================  ===========================================  ===============================

Stores written before a record had a ``kind`` field are told by the fields they hold
(:func:`store_kind`). A stamped chunk store (tiles, embeddings) is checked here too
(:func:`chunk_store_problem`): this module imports zarr only inside that check, never torch, so the
Snakefile's pre-scheduling check stays fast. Nothing of the package above ``core`` is imported.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from hpa_batch.core.errors import reason_of

STAMP_KEY = "hpa_batch"
"""The group attribute every stage's stamp lives under."""

S = TypeVar("S", bound="Stamp")
C = TypeVar("C", "TileStamp", "EmbeddingStamp")


@dataclass(frozen=True, kw_only=True)
class Stamp:
    """Fields every stamp has; ``extra`` keeps what a record does not name (a newer writer's fields)."""

    kind: ClassVar[str] = ""
    complete: bool = False
    version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Self:
        """The record of a stamp's ``raw`` mapping (unknown keys go to ``extra``).

        Raises
        ------
        TypeError
            A field the record needs is missing.
        """
        types = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name != "extra"}
        known: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) and types[k].startswith("tuple") else v
            for k, v in raw.items()
            if k in types
        }
        extra = {k: v for k, v in raw.items() if k not in types and k != "kind"}
        return cls(**known, extra=extra)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Self:
        """The record stamped in a group's attributes (``TypeError`` when it lacks a needed field)."""
        return cls.from_dict(stamp_dict(attrs))

    def to_dict(self) -> dict[str, Any]:
        """The stamp as written: ``kind``, the named fields and ``extra``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return {"kind": self.kind, **out, **dict(self.extra)}

    def to_attrs(self) -> dict[str, Any]:
        """Group attributes holding this stamp: ``{"hpa_batch": {...}}``."""
        return {STAMP_KEY: self.to_dict()}


@dataclass(frozen=True, kw_only=True)
class ShardStamp(Stamp):
    """A shard store's root: its shard and the images conversion finished (sorted ids)."""

    kind: ClassVar[str] = "shard_store"
    shard: str = ""
    images: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class ImageStamp(Stamp):
    """One converted image: its id, the source files' signature and dtype, its levels and bytes, and
    each channel's share of saturated pixels."""

    kind: ClassVar[str] = "image"
    image_id: str = ""
    source: Any = None
    source_dtype: str | None = None
    levels: int = 0
    bytes: int = 0
    shapes: Any = None
    saturated: Mapping[str, float] | None = None  # per channel, share of pixels at the maximum


@dataclass(frozen=True, kw_only=True)
class LabelsStamp(Stamp):
    """An image's labels: the backend, the level it ran at, its cells, border cells, the settings
    digest they were made with and the per-image QC measures."""

    kind: ClassVar[str] = "labels"
    backend: str = ""
    level: str = ""
    n_cells: int
    border_cells: tuple[int, ...]
    settings: str = ""
    qc: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TileStamp(Stamp):
    """A tile store: its rows (``n_cells`` cell tiles, ``n_images`` image rows), the tile settings, the
    feature columns, the intensity scaling and a digest of its content."""

    kind: ClassVar[str] = "tiles"
    shard: str = ""
    n_cells: int
    n_images: int
    channels: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    feature_columns: tuple[str, ...] = ()
    image_feature_columns: tuple[str, ...] = ()
    intensity: Mapping[str, Any] = field(default_factory=dict)
    content_sha256: str = ""


@dataclass(frozen=True, kw_only=True)
class EmbeddingStamp(Stamp):
    """An encoder's embedding store: one row per cell of its tile store."""

    kind: ClassVar[str] = "embeddings"
    shard: str = ""
    encoder: Mapping[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None
    random_init: bool = False
    dim: int = 0
    n_cells: int
    device: str = ""
    precision: str = ""
    content_sha256: str = ""


@dataclass(frozen=True, kw_only=True)
class SpatialDataStamp(Stamp):
    """A SpatialData store's root: the shard it shows."""

    kind: ClassVar[str] = "spatialdata"
    shard: str = ""


RECORDS: dict[str, type[Stamp]] = {
    r.kind: r for r in (ShardStamp, ImageStamp, LabelsStamp, TileStamp, EmbeddingStamp, SpatialDataStamp)
}
"""Every stamp record by its ``kind``."""


def stamp_dict(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The raw stamp in a group's attributes (``{}`` when it has none)."""
    raw = attrs.get(STAMP_KEY)
    return dict(raw) if isinstance(raw, Mapping) else {}


def read_stamp(store: Path) -> dict[str, Any] | None:
    """The raw stamp of the zarr v3 group ``store`` read from its ``zarr.json`` (no zarr import), None
    when the file is missing, unreadable or has no stamp."""
    try:
        attrs = json.loads((Path(store) / "zarr.json").read_text())["attributes"]
    except Exception:  # noqa: BLE001 (no readable metadata: no stamp)
        return None
    raw = stamp_dict(attrs) if isinstance(attrs, Mapping) else {}
    return raw or None


def kind_of(raw: Mapping[str, Any]) -> str | None:
    """The record kind of a raw stamp: its ``kind``, or for a store stamped before records had one,
    the fields it holds (an encoder: embeddings; cell and image counts: tiles)."""
    if isinstance(raw.get("kind"), str):
        return str(raw["kind"])
    if "encoder" in raw:
        return EmbeddingStamp.kind
    if "n_images" in raw and "n_cells" in raw:
        return TileStamp.kind
    return None


def store_kind(store: Path) -> str | None:
    """The kind of a stage's zarr store told by its stamp (a copy outside a results tree), or None."""
    raw = read_stamp(store)
    return kind_of(raw) if raw is not None else None


def read_record(store: Path, record: type[S]) -> S | None:
    """The typed stamp of ``store`` when it is a ``record`` stamp, None when unreadable or another kind."""
    raw = read_stamp(store)
    if raw is None or kind_of(raw) not in (record.kind, None):
        return None
    try:
        return record.from_dict(raw)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------- checks
def _rows_problem(arrays: list[tuple[str, Any]], n: Mapping[str, int], deep: bool) -> str | None:
    """Each array's rows against the stamp's count of its axis (``image*`` arrays: images, the rest:
    cells), its missing chunks and, ``deep``, every chunk decoded."""
    for name, arr in arrays:
        axis = "image" if name.startswith("image") else "cell"  # images, image_id, image_features
        if arr.shape[0] != n[axis]:
            return f"array {name} has {arr.shape[0]} rows, the store's stamp says {n[axis]} {axis}s"
        if n[axis] and arr.nchunks_initialized < arr.nchunks:
            return f"array {name}: {arr.nchunks - arr.nchunks_initialized} of its {arr.nchunks} chunks are missing"
        if deep:
            step = arr.chunks[0]
            for start in range(0, arr.shape[0], step):
                try:
                    arr[start : start + step]
                except Exception as exc:  # noqa: BLE001 (a chunk that does not decode is the damage)
                    return f"array {name}, rows {start}-{min(start + step, arr.shape[0]) - 1}: {reason_of(exc)}"
    return None


def chunk_store_problem(path: Path, record: type[C], *, deep: bool = False) -> tuple[str | None, C | None]:
    """Why a tile or embedding store is damaged on its own (None: sound), and its stamp when it could be
    read: it opens, is stamped complete, and every array has one row per cell (image arrays one per
    image) with every chunk present (``deep``: decoded). Counts against other files (the cells table,
    the tile store) are the caller's, with the stamp returned here (the store is opened once)."""
    import zarr

    what = "tile" if record is TileStamp else "embedding"
    try:
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp in a directory output
            warnings.simplefilter("ignore")
            group = zarr.open_group(path, mode="r", zarr_format=3)
            arrays = list(group.arrays())
        stamp = record.from_attrs(dict(group.attrs))
        if not stamp.complete:
            return "not stamped complete (an interrupted write)", stamp
        n_images = stamp.n_images if isinstance(stamp, TileStamp) else 0
        return _rows_problem(arrays, {"cell": int(stamp.n_cells), "image": int(n_images)}, deep), stamp
    except Exception as exc:  # noqa: BLE001 (a store that does not open is the damage)
        return f"not a readable {what} store: {reason_of(exc)}", None
