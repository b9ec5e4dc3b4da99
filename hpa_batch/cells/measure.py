"""The per-cell table: geometry, morphology, intensities and hand-crafted localisation features.

One row per cell of every segmented image, measured at full resolution (level ``s0`` of the image and
of its ``labels/cells`` / ``labels/nuclei``) with :func:`skimage.measure.regionprops_table`. Shards are
written image by image through a parquet writer, so memory holds one image at a time.

Hand-crafted features follow the seed study's list (computed inside each cell, background-subtracted):

``green_nucleus_ratio``      mean green in the nucleus / mean green in the cell
``ssim_green_{red,yellow,blue}``  structural similarity of green vs each reference, averaged over the cell
``green_yellow_ratio``       mean green / mean yellow in the cell
``green_area_fraction``      fraction of the cell's pixels with green above the image background
``blob_*``                   green blobs (connected pixels above the cell's ``blob_quantile`` and the
                             background): count, mean compactness (perimeter^2 / (4 pi area)), mean
                             eccentricity (major / minor axis), total blob area / nucleus area, mean
                             distance of blob centroids to the nucleus (px)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from scipy import ndimage as ndi
from skimage.measure import regionprops_table
from skimage.metrics import structural_similarity

from hpa_batch import CHANNELS
from hpa_batch.config import Config, MeasureConfig
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.errors import reading
from hpa_batch.core.progress import Progress, get_logger
from hpa_batch.core.stamps import LabelsStamp
from hpa_batch.core.tables import read_parquet, to_arrow

STATS = ("mean", "median", "std", "integrated")
FEATURES = (
    "green_nucleus_ratio",
    "ssim_green_red",
    "ssim_green_yellow",
    "ssim_green_blue",
    "green_yellow_ratio",
    "green_area_fraction",
    "blob_count",
    "blob_compactness",
    "blob_eccentricity",
    "blob_nucleus_area_ratio",
    "blob_nucleus_distance",
)

GEOMETRY = ("area", "nucleus_area", "eccentricity", "solidity")
INTENSITIES = tuple(f"{c}_{where}_{s}" for where in ("cell", "nucleus") for c in CHANNELS for s in STATS)
FEATURE_COLUMNS = GEOMETRY + INTENSITIES + FEATURES
"""Columns of the per-cell table that make the hand-crafted design matrix (:func:`feature_matrix`)."""

#: What each protein-pattern feature is: (channel, compartment, statistic, unit).
_PATTERN = {
    "green_nucleus_ratio": ("green", "nucleus / cell", "mean ratio, background-subtracted", "ratio"),
    "ssim_green_red": ("green, red", "cell", "structural similarity", "index [-1, 1]"),
    "ssim_green_yellow": ("green, yellow", "cell", "structural similarity", "index [-1, 1]"),
    "ssim_green_blue": ("green, blue", "cell", "structural similarity", "index [-1, 1]"),
    "green_yellow_ratio": ("green, yellow", "cell", "mean ratio", "ratio"),
    "green_area_fraction": ("green", "cell", "area above background + 3 robust sigma", "fraction"),
    "blob_count": ("green", "blobs", "count", "count"),
    "blob_compactness": ("green", "blobs", "mean perimeter^2 / (4 pi area)", "ratio"),
    "blob_eccentricity": ("green", "blobs", "mean major / minor axis", "ratio"),
    "blob_nucleus_area_ratio": ("green", "blobs / nucleus", "total blob area / nucleus area", "ratio"),
    "blob_nucleus_distance": ("green", "blobs", "mean distance to the nucleus", "pixels"),
}
_GEOMETRY = {
    "area": ("", "cell", "area", "pixels^2 (full resolution)"),
    "nucleus_area": ("blue", "nucleus", "area", "pixels^2 (full resolution)"),
    "eccentricity": ("", "cell", "eccentricity", "index [0, 1]"),
    "solidity": ("", "cell", "solidity", "fraction"),
}


def describe_feature(name: str) -> dict[str, str]:
    """What a column of :data:`FEATURE_COLUMNS` measures: ``channel``, ``compartment``, ``statistic``
    and ``unit`` (the ``var`` columns of ``cells.h5ad``); intensities are raw 16-bit values."""
    keys = ("channel", "compartment", "statistic", "unit")
    if name in _GEOMETRY:
        return dict(zip(keys, _GEOMETRY[name], strict=True))
    if name in _PATTERN:
        return dict(zip(keys, _PATTERN[name], strict=True))
    channel, where, stat = name.split("_")
    unit = "intensity x pixels (16-bit)" if stat == "integrated" else "intensity (16-bit)"
    return dict(zip(keys, (channel, where, stat, unit), strict=True))


IMAGE_FEATURE_COLUMNS = tuple(f for f in FEATURES if f != "blob_count")  # the per-cell features but the count
"""Study 002's ten image features, in its order (:func:`image_feature_row`)."""

STUDY_002_FEATURE_WEIGHTS = (2.0, 4.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.5, 0.5, 2.0)
"""The weights study 002 gave :data:`IMAGE_FEATURE_COLUMNS` when it concatenated them to its embedding."""

CELLS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("cell_id", pa.int32()),
        ("cell_line", pa.string()),
        ("shard", pa.string()),
        ("bbox_y0", pa.int32()),
        ("bbox_x0", pa.int32()),
        ("bbox_y1", pa.int32()),
        ("bbox_x1", pa.int32()),
        ("centroid_y", pa.float32()),
        ("centroid_x", pa.float32()),
        ("area", pa.int64()),
        ("nucleus_area", pa.int64()),
        ("eccentricity", pa.float32()),
        ("solidity", pa.float32()),
        ("border", pa.bool_()),
        *[(f"{c}_{where}_{s}", pa.float32()) for where in ("cell", "nucleus") for c in CHANNELS for s in STATS],
        *[(f, pa.float32()) for f in FEATURES],
    ]
)


def feature_matrix(cells: pd.DataFrame) -> np.ndarray:
    """The hand-crafted design matrix of the baseline and of hybrid deep models.

    Parameters
    ----------
    cells : pandas.DataFrame
        Rows of the per-cell table (every column of :data:`FEATURE_COLUMNS`).

    Returns
    -------
    numpy.ndarray
        ``(n, len(FEATURE_COLUMNS))`` float32: areas and intensities as ``log1p`` (negative values as
        0), non-finite values as 0.
    """
    missing = [c for c in FEATURE_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"the per-cell table lacks feature columns {missing[:5]} (written by an older measure?)")
    x = cells[list(FEATURE_COLUMNS)].to_numpy(np.float64, copy=True)
    logged = slice(len(GEOMETRY), len(GEOMETRY) + len(INTENSITIES))
    x[:, logged] = np.log1p(np.maximum(x[:, logged], 0))
    x[:, :2] = np.log1p(np.maximum(x[:, :2], 0))
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _median(regionmask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.median(intensity[regionmask], axis=0)


def _integrated(regionmask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return intensity[regionmask].sum(axis=0, dtype=np.float64)


def _std(regionmask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return intensity[regionmask].std(axis=0)


def intensity_stats(labels: np.ndarray, image: np.ndarray, prefix: str) -> pd.DataFrame:
    """Per-object, per-channel mean/median/std/integrated intensity.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(h, w)`` integer labels.
    image : numpy.ndarray
        ``(h, w, 4)`` intensities, canonical channel order.

    Returns
    -------
    pandas.DataFrame
        Indexed by label; columns ``{channel}_{prefix}_{stat}``.
    """
    table = regionprops_table(
        labels,
        intensity_image=image,
        properties=("label", "intensity_mean"),
        extra_properties=(_median, _std, _integrated),
    )
    out = pd.DataFrame(index=pd.Index(table["label"], name="label"))
    names = {"intensity_mean": "mean", "_median": "median", "_std": "std", "_integrated": "integrated"}
    for key, stat in names.items():
        for i, c in enumerate(CHANNELS):
            out[f"{c}_{prefix}_{stat}"] = table[f"{key}-{i}"]
    return out


def background(image: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel background median and robust sigma (1.4826 MAD) over pixels outside all cells.

    Returns
    -------
    median, sigma : numpy.ndarray
        ``(4,)`` float64 each.
    """
    outside = image[cells == 0]
    if outside.shape[0] < 100:  # cells cover the image: use the darkest 5 % instead
        outside = np.sort(image.reshape(-1, image.shape[-1]), axis=0)[: max(image.shape[0] // 20, 1)]
    sample = outside[:: max(len(outside) // 200_000, 1)].astype(np.float64)
    med = np.median(sample, axis=0)
    sigma = 1.4826 * np.median(np.abs(sample - med), axis=0)
    return med, np.maximum(sigma, 1.0)


def _masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if min(a.shape) < 7:
        return float("nan")
    rng = float(max(a.max(), b.max(), 1e-6))
    _, smap = structural_similarity(a, b, data_range=rng, full=True)
    return float(smap[mask].mean())


def blob_moments(blobs: np.ndarray) -> pd.DataFrame:
    """Area, centroid, axis ratio and compactness of every object of a label image, vectorised.

    Second central moments give the ellipse axes as regionprops defines them (4 sqrt of the
    covariance eigenvalues), the ratio taken with the minor axis floored at 1 px; the perimeter is the count of object pixels with a
    4-neighbour outside the object (a boundary-pixel estimate).

    Parameters
    ----------
    blobs : numpy.ndarray
        ``(h, w)`` int labels, ids ``1..n``.

    Returns
    -------
    pandas.DataFrame
        Index ``1..n``; columns area, cy, cx, eccentricity (major/minor), compactness.
    """
    n = int(blobs.max())
    flat = blobs.ravel()
    yy, xx = np.indices(blobs.shape)
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    sy = np.bincount(flat, yy.ravel(), n + 1)[1:]
    sx = np.bincount(flat, xx.ravel(), n + 1)[1:]
    cy, cx = sy / area, sx / area
    vyy = np.bincount(flat, yy.ravel() ** 2, n + 1)[1:] / area - cy**2
    vxx = np.bincount(flat, xx.ravel() ** 2, n + 1)[1:] / area - cx**2
    vxy = np.bincount(flat, (yy * xx).ravel(), n + 1)[1:] / area - cy * cx
    root = np.sqrt(((vyy - vxx) / 2) ** 2 + vxy**2)
    l1, l2 = (vyy + vxx) / 2 + root, np.maximum((vyy + vxx) / 2 - root, 0.0)
    major, minor = 4 * np.sqrt(l1), np.maximum(4 * np.sqrt(l2), 1.0)
    padded = np.pad(blobs, 1)
    inner = padded[1:-1, 1:-1]
    edge = (inner > 0) & (
        (padded[:-2, 1:-1] != inner)
        | (padded[2:, 1:-1] != inner)
        | (padded[1:-1, :-2] != inner)
        | (padded[1:-1, 2:] != inner)
    )
    perimeter = np.bincount(blobs[edge], minlength=n + 1)[1:].astype(np.float64)
    return pd.DataFrame(
        {
            "area": area,
            "cy": cy,
            "cx": cx,
            "eccentricity": major / minor,
            "compactness": perimeter**2 / (4 * np.pi * area),
        },
        index=np.arange(1, n + 1),
    )


def _blob_features(
    green: np.ndarray, cell: np.ndarray, nucleus: np.ndarray, threshold: float, quantile: float
) -> dict[str, float]:
    inside = green[cell]
    cut = max(float(np.quantile(inside, quantile)), threshold) if inside.size else threshold
    blobs, _ = ndi.label((green > cut) & cell)
    stats = blob_moments(blobs) if blobs.max() else pd.DataFrame()
    stats = stats[stats["area"] >= 4] if len(stats) else stats
    nuc_area = int(nucleus.sum())
    if not len(stats):
        return {
            "blob_count": 0.0,
            "blob_compactness": np.nan,
            "blob_eccentricity": np.nan,
            "blob_nucleus_area_ratio": 0.0,
            "blob_nucleus_distance": np.nan,
        }
    if nuc_area:
        dist = ndi.distance_transform_edt(~nucleus)
        iy = np.clip(np.round(stats["cy"]).astype(int), 0, green.shape[0] - 1)
        ix = np.clip(np.round(stats["cx"]).astype(int), 0, green.shape[1] - 1)
        mean_dist = float(dist[iy, ix].mean())
    else:
        mean_dist = np.nan
    return {
        "blob_count": float(len(stats)),
        "blob_compactness": float(stats["compactness"].mean()),
        "blob_eccentricity": float(stats["eccentricity"].mean()),
        "blob_nucleus_area_ratio": float(stats["area"].sum() / nuc_area) if nuc_area else np.nan,
        "blob_nucleus_distance": mean_dist,
    }


def cell_features(
    crop: np.ndarray, cell: np.ndarray, nucleus: np.ndarray, *, bg: np.ndarray, sigma: np.ndarray, params: MeasureConfig
) -> dict[str, float]:
    """Hand-crafted localisation features of one cell.

    Parameters
    ----------
    crop : numpy.ndarray
        ``(h, w, 4)`` float32 intensities of the cell's bounding box, background-subtracted.
    cell, nucleus : numpy.ndarray
        ``(h, w)`` bool masks of this cell and its nucleus within the box.
    bg, sigma : numpy.ndarray
        ``(4,)`` background median (already subtracted) and robust sigma.
    """
    r, g, b, y = (crop[..., i] for i in range(4))
    g_cell = float(g[cell].mean())
    g_nuc = float(g[nucleus].mean()) if nucleus.any() else np.nan
    thr = params.background_sigmas * float(sigma[1])
    feats = {
        "green_nucleus_ratio": g_nuc / g_cell if g_cell > 0 else np.nan,
        "ssim_green_red": _masked_ssim(g, r, cell),
        "ssim_green_yellow": _masked_ssim(g, y, cell),
        "ssim_green_blue": _masked_ssim(g, b, cell),
        "green_yellow_ratio": g_cell / float(y[cell].mean()) if y[cell].mean() > 0 else np.nan,
        "green_area_fraction": float((g[cell] > thr).mean()),
    }
    feats.update(_blob_features(g, cell, nucleus, thr, params.blob_quantile))
    return feats


def measure_image(
    image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, border: set[int], params: MeasureConfig
) -> pd.DataFrame:
    """All measurements of one image's cells.

    Parameters
    ----------
    image : numpy.ndarray
        ``(4, h, w)`` uint16 full resolution.
    cells, nuclei : numpy.ndarray
        ``(h, w)`` uint32 labels (nucleus k inside cell k).
    border : set of int
        Ids of cells touching the image border.

    Returns
    -------
    pandas.DataFrame
        One row per cell; the geometry, intensity and feature columns of :data:`CELLS_SCHEMA`
        (without the image_id / cell_line / shard columns).
    """
    cells = cells.astype(np.int32)
    nuclei = nuclei.astype(np.int32)
    if cells.max() == 0:
        return pd.DataFrame(columns=CELLS_SCHEMA.names[1:2] + CELLS_SCHEMA.names[4:])
    pix = np.moveaxis(image, 0, -1)
    geo = pd.DataFrame(
        regionprops_table(cells, properties=("label", "bbox", "centroid", "area", "eccentricity", "solidity"))
    ).set_index("label")
    geo.columns = [
        "bbox_y0",
        "bbox_x0",
        "bbox_y1",
        "bbox_x1",
        "centroid_y",
        "centroid_x",
        "area",
        "eccentricity",
        "solidity",
    ]
    geo["nucleus_area"] = pd.Series(np.bincount(nuclei.ravel(), minlength=cells.max() + 1)[geo.index], index=geo.index)
    geo["border"] = [int(k) in border for k in geo.index]
    table = geo.join(intensity_stats(cells, pix, "cell")).join(intensity_stats(nuclei, pix, "nucleus"))
    bg, sigma = background(pix, cells)
    feats = []
    for k, row in geo.iterrows():
        sl = (slice(int(row.bbox_y0), int(row.bbox_y1)), slice(int(row.bbox_x0), int(row.bbox_x1)))
        crop = np.clip(pix[sl].astype(np.float32) - bg.astype(np.float32), 0, None)
        feats.append(cell_features(crop, cells[sl] == k, nuclei[sl] == k, bg=bg, sigma=sigma, params=params))
    table = table.join(pd.DataFrame(feats, index=geo.index))
    table.index.name = "cell_id"
    return table.reset_index()


def image_feature_row(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, params: MeasureConfig) -> np.ndarray:
    """Study 002's features of a whole image: the per-cell features with every cell as one region.

    Green-in-nucleus ratio, SSIM of green with red / yellow / blue, green/yellow intensity, green area
    above background, and the green blobs' compactness, eccentricity, area per nucleus area and
    distance to the nearest nucleus, over the union of the cells and of the nuclei.

    Parameters
    ----------
    image : numpy.ndarray
        ``(4, h, w)`` raw intensities (any pyramid level; the tiles stage uses the whole-image input's).
    cells, nuclei : numpy.ndarray
        ``(h, w)`` integer labels at the same level (no cells: the whole image is the region).

    Returns
    -------
    numpy.ndarray
        ``(len(IMAGE_FEATURE_COLUMNS),)`` float32, non-finite values as 0.
    """
    pix = np.moveaxis(image, 0, -1)
    bg, sigma = background(pix, cells)
    crop = np.clip(pix.astype(np.float32) - bg.astype(np.float32), 0, None)
    region = cells > 0 if (cells > 0).any() else np.ones(cells.shape, bool)
    feats = cell_features(crop, region, (nuclei > 0) & region, bg=bg, sigma=sigma, params=params)
    row = np.array([feats[c] for c in IMAGE_FEATURE_COLUMNS], np.float64)
    return np.where(np.isfinite(row), row, 0.0).astype(np.float32)


def load_image_and_masks(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[int]]:
    """Level ``s0`` of an image and of its cell/nucleus labels, and its border cell ids."""
    with reading(path.parent):  # a damaged chunk names the shard store (repair removes the image)
        group = zarr.open_group(path, mode="r", zarr_format=3)
        labels = group["labels"]
        return (
            group["s0"][...],
            labels["cells"]["s0"][...],
            labels["nuclei"]["s0"][...],
            set(LabelsStamp.from_attrs(dict(labels.attrs)).border_cells),
        )


def measure_shard(cfg: Config, store: Path, manifest: Path, out: Path, segment_qc: Path | None = None) -> int:
    """Write ``results/cells/{shard}.parquet`` for a segmented shard store; return the cell count.

    Images are measured and written one at a time (one parquet row group each); an image with no
    cells adds no rows. With ``segmentation_qc.doubtful: exclude``, images flagged doubtful in
    ``segment_qc`` (``results/qc/{shard}.segment.tsv``) are not measured (so never tiled or predicted).
    The file is written under a temporary name and renamed at the end.
    """
    from hpa_batch.cells.segment.qc import read_segment_qc
    from hpa_batch.core.ngff import image_groups

    shard = store.name.removesuffix(".zarr")
    lines = read_parquet(manifest, columns=["image_id", "cell_line"]).set_index("image_id")["cell_line"]
    images = image_groups(store)
    if cfg.segmentation_qc.doubtful == "exclude" and segment_qc is not None:
        qc = read_segment_qc(segment_qc)
        skip = set(qc.loc[qc["doubtful"], "image_id"])
        images = [p for p in images if p.name not in skip]
        get_logger().info(
            "measure %s: %d doubtful image(s) excluded (segmentation_qc.doubtful: exclude)", shard, len(skip)
        )
    progress = Progress(len(images), f"measure {shard}")
    n = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, CELLS_SCHEMA) as writer:
        for path in images:
            try:
                rows = measure_image(*load_image_and_masks(path), params=cfg.measure)
            except Exception as exc:
                raise RuntimeError(f"measuring image {path.name} ({path}) failed: {exc}") from exc
            rows.insert(0, "image_id", path.name)
            rows["cell_line"] = lines.get(path.name, "unknown")
            rows["shard"] = shard
            if len(rows):
                writer.write_table(to_arrow(rows, CELLS_SCHEMA))
            n += len(rows)
            progress.update(1)
    get_logger().info("measure %s: %d cells from %d images -> %s", shard, n, len(images), out)
    return n
