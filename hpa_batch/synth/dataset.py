"""A synthetic dataset on disk in the HPA layouts (:func:`synthesize_dataset`)."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from hpa_batch import CHANNELS
from hpa_batch.core.labels import LabelCatalog, format_labels, get_catalog
from hpa_batch.synth.common import FORMATS
from hpa_batch.synth.image import synthesize_image
from hpa_batch.synth.profiles import DEFAULT_CELL_LINES
from hpa_batch.synth.styles import get_style

# --------------------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize_dataset` wrote.

    Attributes
    ----------
    out : Path
        Dataset root.
    metadata : Path
        ``out/train.csv``.
    images_dir : Path
        ``out/images``.
    truth_dir : Path
        ``out/truth``.
    ids : tuple of str
        Image ids in generation order.
    n_cells : int
        Total number of cells.
    """

    out: Path
    metadata: Path
    images_dir: Path
    truth_dir: Path
    ids: tuple[str, ...]
    n_cells: int


@dataclass(frozen=True)
class _Job:
    """Arguments of :func:`_generate_one` (picklable for process pools)."""

    index: int
    seed: int
    size: int
    cell_line: str
    fmt: str
    catalog: str
    images_dir: Path
    truth_dir: Path
    style: str = "standard"
    depth: int = 16


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    """uint16 ADU -> uint8 (``min(adu >> 7, 255)``), as 8-bit public sets store them."""
    return np.minimum(arr >> 7, 255).astype(np.uint8)


def _encode_channel(arr: np.ndarray, fmt: str, depth: int = 16) -> bytes:
    """Encode a uint16 (h, w) channel: 16- or 8-bit PNG / zlib TIFF, or 8-bit JPEG (``adu >> 7``)."""
    if fmt == "png":
        return bytes(imagecodecs.png_encode(arr if depth == 16 else _eight_bit(arr), level=3))
    if fmt == "jpg":
        return bytes(imagecodecs.jpeg8_encode(_eight_bit(arr), level=95))
    raise ValueError(fmt)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    """Write a 2-D array as zlib-compressed TIFF (deterministic bytes)."""
    tifffile.imwrite(path, arr, compression="zlib", predictor=True, metadata=None)


def _generate_one(job: _Job) -> tuple[str, str, str, list[list[object]], dict[str, object]]:
    """Generate and write image ``job.index``.

    Returns
    -------
    tuple
        (ID, Label, Cell_line, rows of cells.csv, row of images.csv)
    """
    rng = np.random.default_rng([job.seed, job.index])
    image_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    catalog = get_catalog(job.catalog)
    img = synthesize_image(rng, job.size, job.cell_line, catalog, style=job.style)
    for name, arr in zip(CHANNELS, img.channels):
        path = job.images_dir / f"{image_id}_{name}.{job.fmt}"
        if job.fmt == "tif":
            _write_tif(path, arr if job.depth == 16 else _eight_bit(arr))
        else:
            path.write_bytes(_encode_channel(arr, job.fmt, job.depth))
    _write_tif(job.truth_dir / f"{image_id}_cells.tif", img.cells)
    _write_tif(job.truth_dir / f"{image_id}_nuclei.tif", img.nuclei)
    n = len(img.cell_labels)
    areas = np.bincount(img.cells.ravel(), minlength=n + 1)
    nuc_areas = np.bincount(img.nuclei.ravel(), minlength=n + 1)
    edge = np.concatenate([img.cells[0], img.cells[-1], img.cells[:, 0], img.cells[:, -1]])
    border = set(np.unique(edge).tolist())
    rows: list[list[object]] = [
        [
            image_id,
            k,
            format_labels(img.cell_labels[k], catalog),
            job.cell_line,
            int(areas[k]),
            int(nuc_areas[k]),
            k in border,
        ]
        for k in range(1, n + 1)
    ]
    summary = {
        "ID": image_id,
        "Cell_line": job.cell_line,
        "size": job.size,
        "n_cells": n,
        "mitotic_cells": len(img.mitotic),
        **img.style,
    }
    return image_id, format_labels(img.image_labels, catalog), job.cell_line, rows, summary


_README = """\
Ground truth of a synthetic HPA dataset written by hpa_batch.synth
(catalog: {catalog}, seed: {seed}).

{{ID}}_cells.tif   uint16 cell label image (zlib TIFF, full resolution): 0 = background, cells 1..n.
{{ID}}_nuclei.tif  uint16 nucleus label image: nucleus k lies inside cell k.
images.csv       one row per image: ID, Cell_line, size, n_cells, mitotic_cells, the style and
                 the values it drew (radius px at 2048, nucleus_area_ratio, coverage, ...).
cells.csv        one row per cell: ID, cell_id, Label (that cell's class ids joined with the
                 catalog separator; {negative}), Cell_line, area and nucleus_area (px),
                 border (True if the cell touches the image edge).
../train.csv     image-level labels = the union of the cell labels of the image.
Images: ../images/{{ID}}_{{red,green,blue,yellow}}.{fmt} ({depth}).
"""


def _checked(
    n_images: int,
    seed: int,
    sizes: Sequence[int],
    cell_lines: Sequence[str] | None,
    fmt: str,
    depth: int,
    table: str,
) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """The arguments of :func:`synthesize_dataset` checked: the format's canonical name, the sizes and
    the cell lines (``ValueError`` naming the bad one)."""
    if depth not in (8, 16):
        raise ValueError(f"depth must be 8 or 16, got {depth}")
    if table not in ("hpa2021", "hpa2018"):
        raise ValueError(f"table must be hpa2021 (ID,Label,Cell_line) or hpa2018 (Id,Target), got {table!r}")
    fmt = fmt.lower().lstrip(".")
    if fmt == "tiff":
        fmt = "tif"
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if n_images < 0:
        raise ValueError("n_images must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    sizes = tuple(int(v) for v in sizes)
    if not sizes or min(sizes) < 32:
        raise ValueError(f"sizes must be a non-empty sequence of ints >= 32, got {sizes}")
    lines = tuple(cell_lines) if cell_lines is not None else DEFAULT_CELL_LINES[:3]
    if not lines:
        raise ValueError("cell_lines must not be empty")
    return fmt, sizes, lines


def _write_tables(root: Path, results: list, cat: LabelCatalog, table: str) -> tuple[Path, int]:
    """Write ``train.csv`` (``table`` layout) and the truth tables ``truth/cells.csv`` and
    ``truth/images.csv``; returns the metadata path and the number of cells."""
    truth_dir = root / "truth"
    metadata = root / "train.csv"
    with metadata.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if table == "hpa2018":  # the 2018 competition's train.csv: Id,Target (space-separated), no cell line
            w.writerow(["Id", "Target"])
            for image_id, label, _line, *_rest in results:
                w.writerow([image_id, label.replace(cat.separator, " ")])
        else:
            w.writerow(["ID", "Label", "Cell_line"])
            for image_id, label, line, *_rest in results:
                w.writerow([image_id, label, line])
    n_cells = 0
    with (truth_dir / "cells.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["ID", "cell_id", "Label", "Cell_line", "area", "nucleus_area", "border"])
        for *_head, rows, _image in results:
            w.writerows(rows)
            n_cells += len(rows)
    image_rows = [r[-1] for r in results]
    columns = list(image_rows[0]) if image_rows else ["ID", "Cell_line", "size", "n_cells", "style"]
    with (truth_dir / "images.csv").open("w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        dw.writeheader()
        dw.writerows(image_rows)
    return metadata, n_cells


def _jobs(
    n_images: int,
    seed: int,
    sizes: tuple[int, ...],
    lines: tuple[str, ...],
    styles: tuple[str, ...],
    *,
    fmt: str,
    catalog: str,
    root: Path,
    depth: int,
) -> list[_Job]:
    """One job per image: its size, cell line and style cycled so that every line gets every size and style."""
    nl = len(lines)
    return [
        _Job(
            i,
            int(seed),
            sizes[(i + i // nl) % len(sizes)],
            lines[i % nl],
            fmt,
            catalog,
            root / "images",
            root / "truth",
            styles[(i // nl) % len(styles)],
            depth,
        )
        for i in range(n_images)
    ]


def synthesize_dataset(
    out: str | Path,
    n_images: int,
    seed: int = 0,
    *,
    sizes: Sequence[int] = (1728, 2048, 3072),
    cell_lines: Sequence[str] | None = None,
    fmt: str = "png",
    catalog: str = "hpa2021",
    workers: int = 1,
    styles: Sequence[str] = ("standard",),
    depth: int = 16,
    table: str = "hpa2021",
) -> SynthSummary:
    """Write a synthetic HPA dataset with ground-truth masks and per-cell labels.

    Parameters
    ----------
    out : str or Path
        Dataset root (created).
    n_images : int
        Number of images.
    seed : int
        Non-negative seed; image ``i`` uses ``numpy.random.default_rng([seed, i])``, so
        the output does not depend on ``workers``.
    sizes : sequence of int
        Image sizes; image ``i`` gets ``sizes[(i + i // len(cell_lines)) % len(sizes)]``
        so that every cell line gets every size.
    cell_lines : sequence of str, optional
        Cell lines, assigned round-robin.  Default: first 3 of :data:`DEFAULT_CELL_LINES`.
    fmt : {"png", "tif", "jpg"}
        Image format: 16-bit PNG / TIFF, or 8-bit JPEG (``min(adu >> 7, 255)``).
    catalog : str
        Label catalog name (``"hpa2021"`` or ``"hpa2018"``).
    workers : int
        Number of processes.
    styles : sequence of str
        Image styles (:data:`STYLES`); image ``i`` gets ``styles[(i // len(cell_lines)) % len(styles)]``
        so that every cell line gets every style.
    depth : {16, 8}
        Bits per pixel of PNG / TIFF channels (8: ``min(adu >> 7, 255)``, as the 2018 set's PNGs).
    table : {"hpa2021", "hpa2018"}
        Layout of ``train.csv``: ``ID,Label,Cell_line`` (labels joined with the catalog separator) or
        the 2018 competition's ``Id,Target`` (space-separated labels, no cell-line column).

    Returns
    -------
    SynthSummary
    """
    fmt, sizes, lines = _checked(n_images, seed, sizes, cell_lines, fmt, depth, table)
    cat = get_catalog(catalog)
    styles = tuple(get_style(st).name for st in styles) or ("standard",)
    root = Path(out)
    images_dir, truth_dir = root / "images", root / "truth"
    images_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(n_images, seed, sizes, lines, styles, fmt=fmt, catalog=cat.name, root=root, depth=depth)
    if workers > 1 and n_images > 1:
        with ProcessPoolExecutor(max_workers=min(workers, n_images)) as ex:
            results = list(ex.map(_generate_one, jobs))
    else:
        results = [_generate_one(j) for j in jobs]

    metadata, n_cells = _write_tables(root, results, cat, table)
    negative = f'an all-negative cell is "{cat.negative}"' if cat.negative is not None else "empty for a negative cell"
    depth_text = "8-bit, ADU >> 7" if fmt == "jpg" or depth == 8 else "16-bit ADU"
    (truth_dir / "README.txt").write_text(
        _README.format(catalog=cat.name, seed=seed, negative=negative, fmt=fmt, depth=depth_text)
    )
    return SynthSummary(
        out=root,
        metadata=metadata,
        images_dir=images_dir,
        truth_dir=truth_dir,
        ids=tuple(r[0] for r in results),
        n_cells=n_cells,
    )
