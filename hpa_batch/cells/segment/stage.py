"""The segmentation stage: every image of a shard store gets ``labels/cells`` and ``labels/nuclei``.

Per image: pick the working level (finest level whose longer side <= ``segmentation.max_size``), run
the configured backend on it, drop cells below ``min_cell_area`` (and border cells if configured),
bring both masks to every pyramid level exactly (:func:`hpa_batch.core.ngff.label_levels`), write them
through the shard's staging directory, verify, stamp, and rename into ``{image}/labels``. Images whose
labels are complete and were made with the same segmentation settings are kept on a rerun.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import zarr

from hpa_batch import __version__
from hpa_batch.cells.segment import Segmenter, create_segmenter
from hpa_batch.cells.segment.qc import QC_MEASURES, SEGMENT_QC_COLUMNS, flag_images, image_qc
from hpa_batch.cells.segment.watershed import consistent_labels
from hpa_batch.config import Config
from hpa_batch.core.atomic import atomic_path, atomic_write_json, staging_path
from hpa_batch.core.errors import reading
from hpa_batch.core.ngff import (
    image_groups,
    label_levels,
    labels_complete,
    level_paths,
    publish,
    read_group_attrs,
    write_labels,
)
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.stamps import LabelsStamp

LABEL_NAMES: tuple[str, ...] = ("cells", "nuclei")


#: Revision of what the stage computes beyond its settings (the built-in backend's algorithm, the QC
#: measures stored with the labels); part of :func:`settings_digest`, so labels made by an older
#: revision are redone rather than kept. 2: issue 24 (edge-aware partition, noise from neighbour
#: differences, wrong-split QC measures); 3: issue 35 (markers of touching nuclei 8-connected, finer
#: smoothing, binucleate cells joined); 4: issue 35 (nuclei no ridge in the edge landscape, edge
#: weight 0.18).
SEGMENT_REVISION = 5


def settings_digest(cfg: Config, segmenter: Segmenter | None = None) -> str:
    """Hash of the segmentation settings, the backend's resolved parameters (its defaults included,
    so a changed default redoes the labels it made) and :data:`SEGMENT_REVISION`; labels made
    otherwise are redone."""
    resolved = asdict(segmenter) if segmenter is not None and is_dataclass(segmenter) else None
    text = json.dumps(
        {"segmentation": asdict(cfg.segmentation), "backend": resolved, "revision": SEGMENT_REVISION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def working_level(shapes: list[tuple[int, ...]], max_size: int) -> int:
    """Index of the finest level whose longer side is <= ``max_size`` (else the coarsest)."""
    for k, shape in enumerate(shapes):
        if max(shape[-2:]) <= max_size:
            return k
    return len(shapes) - 1


def border_ids(cells: np.ndarray) -> np.ndarray:
    """Ids of cells touching the image edge: ``(h, w)`` labels -> sorted int array."""
    edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    return np.unique(edge[edge > 0])


def filter_cells(
    cells: np.ndarray, nuclei: np.ndarray, min_area: float, exclude_border: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Drop cells below ``min_area`` pixels (at this level) and, if asked, border cells; renumber."""
    areas = np.bincount(cells.ravel())
    drop = np.flatnonzero(areas < min_area)
    if exclude_border:
        drop = np.union1d(drop, border_ids(cells))
    drop = drop[drop > 0]
    if drop.size:
        gone = np.isin(cells, drop)
        cells = np.where(gone, 0, cells)
        nuclei = np.where(gone, 0, nuclei)
    return consistent_labels(cells, nuclei)


def segment_image(image_path: Path, segmenter: Segmenter, cfg: Config, staging: Path) -> dict[str, Any]:
    """Segment one stored image and publish its labels; return its QC row."""
    image_id = image_path.name
    with reading(image_path.parent):  # a damaged chunk names the shard store (repair removes the image)
        group = zarr.open_group(image_path, mode="r", zarr_format=3)
        names = level_paths(group)
        shapes = [tuple(group[n].shape[-2:]) for n in names]
        level = working_level(shapes, cfg.segmentation.max_size)
        scale = 2.0**level
        image = group[names[level]][...]
    try:
        cells, nuclei = segmenter.segment(image, scale=scale)
    except Exception as exc:
        raise RuntimeError(f"segmentation of image {image_id} ({image_path}) failed: {exc}") from exc
    cells, nuclei = filter_cells(
        cells, nuclei, cfg.segmentation.min_cell_area / scale**2, cfg.segmentation.exclude_border
    )
    n_cells, border = int(cells.max()), border_ids(cells)
    # rounded once, so a kept image (read back from its attributes) gives the same row as a fresh one
    measures = image_qc(cells, nuclei, image, scale, edge_reference=not segmenter.image_partitioned)
    qc = {k: float(round(v, 6)) for k, v in measures.items()}
    info = {
        "backend": segmenter.name,
        "level": level,
        "n_cells": n_cells,
        "border_cells": border.tolist(),
        "settings": settings_digest(cfg, segmenter),
        "qc": {k: (None if np.isnan(v) else v) for k, v in qc.items()},
    }
    stage = staging / f"{image_id}.labels"
    masks = {"cells": label_levels(cells, level, shapes), "nuclei": label_levels(nuclei, level, shapes)}
    conv = cfg.conversion
    write_labels(
        stage,
        masks,
        chunk=conv.chunk,
        codec=conv.codec,
        pixel_size_um=conv.pixel_size_um,
        info=info,
        sampled_from=level,
    )
    publish(stage, image_path / "labels")
    return {"image_id": image_id, "n_cells": n_cells, "n_border": len(border), "level": level, **qc}


def _kept_row(image_path: Path, digest: str) -> dict[str, Any] | None:
    if not labels_complete(image_path, LABEL_NAMES):
        return None
    try:
        info = LabelsStamp.from_attrs(read_group_attrs(image_path / "labels"))
    except TypeError:  # a stamp without its cells: not labels this stage can keep
        return None
    if info.settings != digest or not info.qc:
        return None
    qc = {k: np.nan if info.qc.get(k) is None else float(info.qc[k]) for k in QC_MEASURES}  # type: ignore[arg-type]
    return {
        "image_id": image_path.name,
        "n_cells": int(info.n_cells),
        "n_border": len(info.border_cells),
        "level": info.level,
        **qc,
    }


def segment_shard(cfg: Config, store: Path, qc_out: Path, summary_out: Path, threads: int = 1) -> dict[str, Any]:
    """Segment every image of a shard store (Dask threads), write the QC table and the summary.

    Parameters
    ----------
    store : Path
        ``results/zarr/{shard}.zarr`` (written by the conversion stage).
    qc_out : Path
        ``results/qc/{shard}.segment.tsv``: per image n_cells, n_border, level, the QC measures,
        ``doubtful`` and ``flag`` (:mod:`hpa_batch.cells.segment.qc`).
    summary_out : Path
        JSON summary, written last.
    """
    t0 = time.monotonic()
    shard = store.name.removesuffix(".zarr")
    images = image_groups(store)
    segmenter = create_segmenter(cfg.segmentation.backend, **cfg.segmentation.options)
    digest = settings_digest(cfg, segmenter)
    staging = staging_path(store, "segment")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    progress = Progress(len(images), f"segment {shard}")

    def task(path: Path) -> dict[str, Any]:
        row = _kept_row(path, digest) or segment_image(path, segmenter, cfg, staging)
        progress.update(1)
        return row

    tasks = [dask.delayed(task, pure=False)(p) for p in images]
    try:
        with zarr.config.set({"threading.max_workers": max(threads, 1)}):
            rows = list(dask.compute(*tasks, scheduler="threads", num_workers=max(threads, 1)))
    finally:  # a failed run (a full disk) leaves no staging behind; finished images keep their labels
        shutil.rmtree(staging, ignore_errors=True)
    table = (
        flag_images(pd.DataFrame(rows), cfg.segmentation_qc) if rows else pd.DataFrame(columns=list(SEGMENT_QC_COLUMNS))
    )
    with atomic_path(qc_out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    summary = {
        "shard": shard,
        "backend": cfg.segmentation.backend,
        "settings": digest,
        "images": len(rows),
        "cells": int(table["n_cells"].sum()),
        "zero_cell_images": table.loc[table["n_cells"] == 0, "image_id"].tolist(),
        "doubtful_images": table.loc[table["doubtful"].astype(bool), "image_id"].tolist(),
        "seconds": round(time.monotonic() - t0, 3),
        "threads": threads,
        "version": __version__,
    }
    atomic_write_json(summary_out, summary)
    log = get_logger()
    log.info(
        "segment %s: %d images, %d cells, %d with zero cells, %d doubtful",
        shard,
        len(rows),
        summary["cells"],
        len(summary["zero_cell_images"]),
        len(summary["doubtful_images"]),
    )
    for r in table[table["doubtful"].astype(bool)].itertuples():
        log.warning("segment %s: %s is doubtful: %s", shard, r.image_id, r.flag)
    return summary
