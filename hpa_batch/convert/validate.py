"""Validation of a shard store: every image group and its label images complete, their NGFF metadata
and transforms right, every level decoded with ``deep`` (``hpa-batch validate``, the integrity
checker and ``repair`` use it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from hpa_batch.core.atomic import STAGING, staging_path
from hpa_batch.core.ngff import (
    IncompleteImageError,
    image_groups,
    level_paths,
    multiscale_datasets,
    read_group_attrs,
    verify_image,
)
from hpa_batch.core.stamps import stamp_dict


@dataclass
class Report:
    """Problems found by a validation; ``ok`` when there are none."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no problem was found."""
        return not self.problems


def validate_image(path: Path, deep: bool = False) -> list[str]:
    """Problems of one stored image (:func:`image_problems`) and of its label images."""
    problems = image_problems(path, deep)
    return problems or label_problems(path, deep)


def image_problems(path: Path, deep: bool = False) -> list[str]:
    """Problems of one stored image's own arrays: completeness stamp, chunk completeness, NGFF spec, data.

    Parameters
    ----------
    deep : bool
        Also decode every level and check each is the 2x mean of the one above.
    """
    from ome_zarr_models.v05 import Image  # the outside spec model

    problems = []
    try:
        verify_image(path)
    except IncompleteImageError as exc:
        return [str(exc)]
    if not stamp_dict(read_group_attrs(path)).get("complete"):
        problems.append(f"{path}: not stamped complete")
    group = zarr.open_group(path, mode="r", zarr_format=3)
    try:
        Image.from_zarr(group)
    except Exception as exc:  # noqa: BLE001 (any failure of the spec model is a validation problem to report)
        problems.append(f"{path}: fails OME-NGFF 0.5 validation: {exc}")
    else:
        problems += transform_problems(path, multiscale_datasets(group.attrs))
    if deep and not problems:
        problems += _check_pyramid(path, group)
    return problems


def transform_problems(path: Path, datasets: list[dict], sampled_from: int | None = None) -> list[str]:
    """Each level's scale and translation against the pyramid's (:func:`hpa_batch.core.ngff.level_transforms`,
    pixel size from ``s0``): the spec model accepts any positive scale, a reader would misplace the level."""
    from hpa_batch.core.ngff import level_transforms

    px = float(datasets[0]["coordinateTransformations"][0]["scale"][-1])
    problems = []
    for k, ds in enumerate(datasets):
        scale, shift = level_transforms(k, px, sampled_from)
        found = {t["type"]: t.get(t["type"]) for t in ds["coordinateTransformations"]}
        if not np.allclose(found.get("scale", [])[-2:], [scale, scale]):
            problems.append(f"{path}/{ds['path']}: scale {found.get('scale')} but level {k} is {scale:g} (2^{k} px)")
        if not np.allclose(found.get("translation", [0, 0])[-2:], [shift, shift]):
            problems.append(
                f"{path}/{ds['path']}: translation {found.get('translation')} but level {k} is at {shift:g}"
            )
    return problems


def _label_metadata_problems(label: Path, sampled_from: int | None) -> list[str]:
    from ome_zarr_models.v05 import ImageLabel  # the outside spec model

    group = zarr.open_group(label, mode="r", zarr_format=3)
    if "image-label" not in group.attrs.get("ome", {}):  # the model takes a plain multiscale without it
        return [f"{label}: no image-label block: readers do not know it is a label image of ../../"]
    try:
        ImageLabel.from_zarr(group)
    except Exception as exc:  # noqa: BLE001 (any failure of the spec model is a validation problem to report)
        return [f"{label}: fails OME-NGFF 0.5 image-label validation: {exc}"]
    return transform_problems(label, multiscale_datasets(group.attrs), sampled_from)


def label_problems(path: Path, deep: bool) -> list[str]:
    """Problems of an image's label images (``labels/{cells,nuclei}``): every level's shards and chunks
    complete (like the image's), and with ``deep`` every level decoded (a damaged shard fails its
    checksum)."""
    labels = path / "labels"
    if not (labels / "zarr.json").is_file():
        return []
    problems = []
    attrs = read_group_attrs(labels)
    sampled_from = stamp_dict(attrs).get("level")
    for name in attrs.get("ome", {}).get("labels", []):
        try:
            verify_image(labels / name)
        except IncompleteImageError as exc:
            problems.append(str(exc))
            continue
        problems += _label_metadata_problems(labels / name, sampled_from)
        if deep:
            group = zarr.open_group(labels / name, mode="r", zarr_format=3)
            for level in level_paths(group):
                try:
                    group[level][...]
                except Exception as exc:  # noqa: BLE001 (any decode failure is damage to report)
                    problems.append(f"{labels / name / level}: cannot be read: {exc}")
    return problems


def _check_pyramid(path: Path, group: zarr.Group) -> list[str]:
    from hpa_batch.core.ngff import downsample2x

    names = level_paths(group)
    prev = None
    for name in names:
        try:
            data = group[name][...]
        except Exception as exc:  # noqa: BLE001 (a chunk that fails its checksum or codec is the problem)
            return [f"{path}/{name}: does not decode: {' '.join(str(exc).split())[:200]}"]
        if prev is not None and not np.array_equal(downsample2x(prev), data):
            return [f"{path}/{name}: not the 2x mean of the level above"]
        prev = data
    return []


def validate_store(path: Path, deep: bool = False) -> Report:
    """Validate every image of a shard store (or one image group), labels included, and that every
    image the store's record lists (written by conversion) is there."""
    report = Report()
    path = Path(path)
    if not (path / "zarr.json").is_file():
        report.problems.append(f"{path}: not a zarr v3 store (no zarr.json)")
        return report
    groups = image_groups(path)
    record = stamp_dict(read_group_attrs(path)).get("images")  # what conversion wrote
    if not groups and record is None:
        report.problems.append(
            f"{path}: not an image store: a zarr group with no OME-NGFF image group and no conversion record "
            "(a shard store is results/zarr/<shard>.zarr)"
        )
        return report
    for image in groups:
        report.checked += 1
        report.problems += validate_image(image, deep)
    if record is not None:
        gone = sorted(set(record) - {p.name for p in groups})
        report.problems += [f"{path / i}: in the store's record of its images but missing" for i in gone]
    for stage in STAGING:
        staging = staging_path(path, stage)
        if staging.exists():
            report.problems.append(f"{staging}: staging directory left by an interrupted {stage} run")
    return report
