"""The merge stage: ``results/tables/cells.parquet`` and ``results/tables/images.parquet``.

Built shard by shard through parquet writers (memory holds one shard, whatever the number of
shards). Column names are stable and documented in ``docs/TABLES.md``.

cells.parquet
    every column of the per-cell table, ``fold``, ``cell_prob_k`` (the cell model), ``image_prob_k``
    (the image model, or the max over the image's cells when there is none), ``fused_prob_k``,
    ``predicted`` (fused probabilities against the cell model's thresholds fused the same way), ``image_labels``
    (ground truth of the image) and, where per-cell truth exists, ``truth_cell_id`` / ``truth_labels``;
    each label set also as class names (``predicted_names``, ``image_label_names``, ``truth_label_names``).
images.parquet
    one row per image of the shard plan, refused ones included: size, cell counts, QC flags,
    ``image_prob_k`` (image model), ``cells_max_prob_k`` (max over cells), ``predicted`` (image level),
    ``cells_predicted_names`` (every class its cells carry), ``image_labels`` (truth), with names.

Fusion (``merge.fusion``): ``product`` = cell x image (the top 2021 solutions' choice),
``mean`` = weighted mean with ``merge.cell_weight``, ``cell`` = cell probabilities alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hpa_batch.cells.measure import CELLS_SCHEMA
from hpa_batch.cells.segment.qc import read_segment_qc
from hpa_batch.config import MergeConfig
from hpa_batch.core.atomic import atomic_path
from hpa_batch.core.labels import LabelCatalog, format_labels, label_names
from hpa_batch.core.progress import get_logger
from hpa_batch.core.tables import read_parquet, to_arrow, with_classes
from hpa_batch.models.checkpoint import read_thresholds
from hpa_batch.models.split import ALWAYS_TRAIN, REFUSED


@dataclass(frozen=True)
class ShardInputs:
    """The files of one shard that the merge reads (missing optional ones are ``None``)."""

    name: str
    manifest: Path
    rejected: Path
    segment_qc: Path
    cells: Path
    cell_predictions: Path | None
    image_predictions: Path | None


#: A label set as class names (``list<string>``, class-id order): beside every label-id column.
NAMES = pa.list_(pa.string())


def prob_fields(prefix: str, n: int) -> list[tuple[str, pa.DataType]]:
    """``[(f"{prefix}_prob_{k}", float32) ...]``."""
    return [(f"{prefix}_prob_{k}", pa.float32()) for k in range(n)]


def cells_schema(n: int, with_truth: bool) -> pa.Schema:
    """Schema of ``cells.parquet`` for ``n`` classes."""
    fields = list(CELLS_SCHEMA) + [pa.field("fold", pa.int8())]
    for prefix in ("cell", "image", "fused"):
        fields += [pa.field(*f) for f in prob_fields(prefix, n)]
    fields += [pa.field("predicted", pa.string()), pa.field("predicted_names", NAMES)]
    fields += [pa.field("image_labels", pa.list_(pa.int16())), pa.field("image_label_names", NAMES)]
    if with_truth:
        fields += [pa.field("truth_cell_id", pa.int32()), pa.field("truth_labels", pa.list_(pa.int16()))]
        fields += [pa.field("truth_label_names", NAMES)]
    return pa.schema(fields)


def images_schema(n: int) -> pa.Schema:
    """Schema of ``images.parquet`` for ``n`` classes."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("shard", pa.string()),
            ("cell_line", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("n_cells", pa.int32()),
            ("n_border", pa.int32()),
            ("border_fraction", pa.float32()),
            ("rejected", pa.bool_()),
            ("reject_reason", pa.string()),
            ("zero_cells", pa.bool_()),
            ("coverage", pa.float32()),
            ("median_cell_area", pa.float32()),
            ("cell_nucleus_ratio", pa.float32()),
            ("doubtful", pa.bool_()),
            ("qc_flag", pa.string()),
            ("fold", pa.int8()),
        ]
        + prob_fields("image", n)
        + prob_fields("cells_max", n)
        + [("predicted", pa.string()), ("predicted_names", NAMES), ("cells_predicted_names", NAMES)]
        + [("image_labels", pa.list_(pa.int16())), ("image_label_names", NAMES)]
    )


def fuse(cell: np.ndarray, image: np.ndarray, method: str, cell_weight: float) -> np.ndarray:
    """Fused per-cell probabilities: ``(n, c)`` cell and image probabilities -> ``(n, c)``."""
    if method == "product":
        return cell * image
    if method == "mean":
        return cell_weight * cell + (1 - cell_weight) * image
    return cell


def derive_negative(fused: np.ndarray, thresholds: np.ndarray, negative: int) -> np.ndarray:
    """Replace the Negative column by a confidence derived from the protein classes.

    ``r = max_k fused_k / t_k`` over the protein classes; Negative = ``clip(1 - r / 2, 0, 1)``, which
    is >= 0.5 exactly when no protein class reaches its threshold, 1 when all are 0, 0 when one is at
    twice its threshold.

    Parameters
    ----------
    fused : numpy.ndarray
        ``(n, c)`` float32 fused probabilities.
    thresholds : numpy.ndarray
        ``(c,)`` fused thresholds.

    Returns
    -------
    numpy.ndarray
        ``(n, c)`` float32, a copy.
    """
    out = np.array(fused, dtype=np.float32, copy=True)
    if not len(out):
        return out
    protein = np.ones(out.shape[1], bool)
    protein[negative] = False
    ratio = (out[:, protein] / np.maximum(thresholds[protein], 1e-6)).max(axis=1)
    out[:, negative] = np.clip(1.0 - ratio / 2.0, 0.0, 1.0)
    return out


def _probs(table: pd.DataFrame, n: int) -> np.ndarray:
    return table[[f"prob_{k}" for k in range(n)]].to_numpy(np.float32)


def merge_shard(
    inp: ShardInputs,
    splits: pd.DataFrame,
    n: int,
    catalog: LabelCatalog,
    *,
    options: MergeConfig,
    thresholds: np.ndarray,
    truth: pd.DataFrame | None,
    image_thresholds: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells and images rows of one shard (``thresholds`` ``(c,)`` for the cells' fused
    probabilities, ``image_thresholds`` for the images' ``predicted``, default the same)."""
    cells = read_parquet(inp.cells)
    manifest = read_parquet(inp.manifest)
    folds = splits.set_index("image_id")["fold"]
    labels = manifest.set_index("image_id")["labels"]
    cells["fold"] = cells["image_id"].map(folds).fillna(ALWAYS_TRAIN).astype(np.int8)
    cp = np.zeros((len(cells), n), np.float32)
    if inp.cell_predictions is not None:
        pred = read_parquet(inp.cell_predictions)
        cp = _probs(cells[["image_id", "cell_id"]].merge(pred, on=["image_id", "cell_id"], how="left"), n)
        cp = np.nan_to_num(cp)
    has_cell = inp.cell_predictions is not None
    for k in range(n):  # NaN: no cell-level model in this run
        cells[f"cell_prob_{k}"] = cp[:, k] if has_cell else np.float32(np.nan)
    img_probs = _image_probs(inp, cells, cp, n)
    ip = np.stack([img_probs.get(i, np.zeros(n, np.float32)) for i in cells["image_id"]]) if len(cells) else cp
    if has_cell:
        fused = fuse(cp, ip, options.fusion, options.cell_weight)
        # thresholds go through the same fusion as the probabilities (product: t*t, i.e. the geometric mean
        # of cell and image probability against t), so fusing never silently turns every prediction off
        fused_t = fuse(thresholds[None, :], thresholds[None, :], options.fusion, options.cell_weight)[0]
    else:  # image level only: every cell carries its image's probabilities and thresholds
        fused, fused_t = ip.copy(), thresholds.astype(np.float32)
    for k in range(n):
        cells[f"image_prob_{k}"] = ip[:, k]
        cells[f"fused_prob_{k}"] = fused[:, k]
    hits, negative_column = _calls(fused, fused_t, catalog, options)
    if negative_column is not None:
        cells[f"fused_prob_{catalog.negative}"] = negative_column
    cells["predicted"] = [format_labels(h, catalog) for h in hits]
    cells["predicted_names"] = [label_names(h, catalog) for h in hits]
    cells["image_labels"] = [list(labels.get(i, [])) for i in cells["image_id"]]
    cells["image_label_names"] = [label_names(v, catalog) for v in cells["image_labels"]]
    if truth is not None:
        cells = cells.merge(truth, on=["image_id", "cell_id"], how="left")
        cells["truth_cell_id"] = cells["truth_cell_id"].fillna(-1).astype(np.int32)
        cells["truth_labels"] = [list(v) if isinstance(v, list | np.ndarray) else [] for v in cells["truth_labels"]]
        cells["truth_label_names"] = [label_names(v, catalog) for v in cells["truth_labels"]]
    image_t = thresholds if image_thresholds is None else image_thresholds
    negative = catalog.negative if options.negative == "derived" else None
    return cells, _images(
        inp,
        manifest,
        cells,
        cp if has_cell else None,
        img_probs,
        folds,
        catalog,
        ImageCalls(image_t, negative),
    )


def _calls(
    fused: np.ndarray, fused_t: np.ndarray, catalog: LabelCatalog, options: MergeConfig
) -> tuple[list[list[int]], np.ndarray | None]:
    """Each cell's predicted class ids from its ``(n, c)`` fused probabilities against the ``(c,)``
    fused thresholds, and the ``(n,)`` Negative column to write instead of the fused one (None: keep
    it). Under ``merge.negative: derived`` Negative is predicted exactly when no protein class is; its
    confidence stays the model's own fused Negative (``negative_confidence: model``, what ranks Negative
    cells) or becomes :func:`derive_negative`'s."""
    neg = catalog.negative
    if neg is None or options.negative != "derived":
        return [np.flatnonzero(r >= fused_t).tolist() for r in fused], None
    derived = derive_negative(fused, fused_t, neg)
    fused_t = fused_t.copy()
    fused_t[neg] = np.nextafter(np.float32(0.5), np.float32(1))  # the derived column: >= 0.5 iff no class
    hits = [np.flatnonzero(r >= fused_t).tolist() for r in derived]
    return hits, (derived[:, neg] if options.negative_confidence == "derived" else None)


def _image_probs(inp: ShardInputs, cells: pd.DataFrame, cp: np.ndarray, n: int) -> dict[str, np.ndarray]:
    if inp.image_predictions is not None:
        pred = read_parquet(inp.image_predictions)
        return dict(zip(pred["image_id"], _probs(pred, n)))
    out: dict[str, np.ndarray] = {}
    for image_id, idx in cells.groupby("image_id").indices.items():
        out[image_id] = cp[idx].max(axis=0)
    return out


def _refused_image_row(r: Any, shard: str, n: int) -> dict[str, Any]:
    """The one images-table row of an image a stage refused (``r`` a row of the shard's refusals)."""
    return {
        "image_id": r.image_id,
        "shard": shard,
        "cell_line": r.cell_line,
        "height": None,
        "width": None,
        "n_cells": 0,
        "n_border": 0,
        "border_fraction": 0.0,
        "rejected": True,
        "reject_reason": r.reason,
        "zero_cells": False,
        "coverage": np.nan,
        "median_cell_area": np.nan,
        "cell_nucleus_ratio": np.nan,
        "doubtful": False,
        "qc_flag": None,
        "fold": REFUSED,  # never in the splits
        **{f"image_prob_{k}": np.nan for k in range(n)},
        **{f"cells_max_prob_{k}": np.nan for k in range(n)},
        "predicted": None,
        "predicted_names": [],
        "cells_predicted_names": [],
        "image_labels": [],
        "image_label_names": [],
    }


@dataclass(frozen=True)
class ImageCalls:
    """How an image's own ``predicted`` is called: per-class ``thresholds`` ``(c,)`` on its image
    probabilities, and with ``negative`` (the Negative class under ``merge.negative: derived``) the
    cells' rule: Negative exactly when no other class is predicted."""

    thresholds: np.ndarray
    negative: int | None


def _image_labels(ip: np.ndarray, calls: ImageCalls, cell_names: pd.Series, catalog: LabelCatalog) -> dict[str, Any]:
    """An image's ``predicted`` / ``predicted_names`` (``ip`` ``(c,)`` its probabilities) and
    ``cells_predicted_names`` (every class one of its cells carries)."""
    hits = np.flatnonzero(ip >= calls.thresholds).tolist()
    if calls.negative is not None:
        hits = [k for k in hits if k != calls.negative] or [calls.negative]
    order = {name: k for k, name in enumerate(catalog.classes)}
    carried = sorted({name for names in cell_names for name in names}, key=order.__getitem__)
    return {
        "predicted": format_labels(hits, catalog),
        "predicted_names": label_names(hits, catalog),
        "cells_predicted_names": carried,
    }


def _images(
    inp: ShardInputs,
    manifest: pd.DataFrame,
    cells: pd.DataFrame,
    cp: np.ndarray | None,
    img_probs: dict[str, np.ndarray],
    folds: pd.Series,
    catalog: LabelCatalog,
    calls: ImageCalls,
) -> pd.DataFrame:
    """Image rows; ``cp`` ``(n_cells, c)`` cell-model probabilities, None without a cell model
    (``cells_max_prob_k`` NaN)."""
    n = catalog.n_classes
    qc = read_segment_qc(inp.segment_qc).drop_duplicates("image_id").set_index("image_id")
    rejected = pd.read_csv(inp.rejected, sep="\t", dtype=str, keep_default_na=False)
    rejected = rejected.drop_duplicates("image_id")
    refused = set(rejected["image_id"])
    rows = []
    groups = cells.groupby("image_id").indices
    for r in manifest.itertuples():
        if r.image_id in refused:  # admitted, then refused by a later stage: one row, as refused
            continue
        idx = groups.get(r.image_id, np.array([], int))
        seg = qc.loc[r.image_id] if r.image_id in qc.index else None
        n_cells = int(qc.at[r.image_id, "n_cells"]) if r.image_id in qc.index else len(idx)
        n_border = int(qc.at[r.image_id, "n_border"]) if r.image_id in qc.index else 0
        if cp is None:
            cmax = np.full(n, np.nan, np.float32)
        else:
            cmax = cp[idx].max(axis=0) if len(idx) else np.zeros(n, np.float32)
        ip = img_probs.get(r.image_id, np.zeros(n, np.float32) if cp is None else cmax)
        rows.append(
            {
                "image_id": r.image_id,
                "shard": inp.name,
                "cell_line": r.cell_line,
                "height": r.height,
                "width": r.width,
                "n_cells": n_cells,
                "n_border": n_border,
                "border_fraction": n_border / n_cells if n_cells else 0.0,
                "rejected": False,
                "reject_reason": None,
                "zero_cells": n_cells == 0,
                "coverage": np.nan if seg is None else seg["coverage"],
                "median_cell_area": np.nan if seg is None else seg["median_cell_area"],
                "cell_nucleus_ratio": np.nan if seg is None else seg["cell_nucleus_ratio"],
                "doubtful": bool(seg is not None and seg["doubtful"]),
                "qc_flag": None if seg is None or not seg["flag"] else seg["flag"],
                "fold": int(folds.get(r.image_id, ALWAYS_TRAIN)),
                **{f"image_prob_{k}": ip[k] for k in range(n)},
                **{f"cells_max_prob_{k}": cmax[k] for k in range(n)},
                **_image_labels(ip, calls, cells["predicted_names"].iloc[idx], catalog),
                "image_labels": list(r.labels),
                "image_label_names": label_names(r.labels, catalog),
            }
        )
    rows += [_refused_image_row(r, inp.name, n) for r in rejected.itertuples()]
    return pd.DataFrame(rows, columns=images_schema(n).names)


def model_thresholds(paths: list[Path], n: int) -> np.ndarray:
    """Mean per-class thresholds ``(n,)`` of a model's folds (0.5 when there are none), read from each
    fold's ``thresholds.json`` (:func:`hpa_batch.models.checkpoint.read_thresholds`; no torch needed here)."""
    values = [read_thresholds(p, n) for p in paths]
    return np.mean(values, axis=0) if values else np.full(n, 0.5, np.float32)


def merge_tables(
    shards: list[ShardInputs],
    splits_path: Path,
    catalog: LabelCatalog,
    options: MergeConfig,
    *,
    thresholds: np.ndarray,
    out_cells: Path,
    out_images: Path,
    truth: pd.DataFrame | None = None,
    image_thresholds: np.ndarray | None = None,
) -> tuple[int, int]:
    """Stream every shard into the two tables (written under temporary names, renamed at the end);
    thresholds as in :func:`merge_shard`."""
    n = catalog.n_classes
    splits = read_parquet(splits_path)
    cschema = with_classes(cells_schema(n, truth is not None), catalog)
    ischema = with_classes(images_schema(n), catalog)
    n_cells = n_images = 0
    with (
        atomic_path(out_cells) as tmp_c,
        atomic_path(out_images) as tmp_i,
        pq.ParquetWriter(tmp_c, cschema) as wc,
        pq.ParquetWriter(tmp_i, ischema) as wi,
    ):
        for inp in shards:
            cells, images = merge_shard(
                inp,
                splits,
                n,
                catalog,
                options=options,
                thresholds=thresholds,
                truth=truth,
                image_thresholds=image_thresholds,
            )
            if len(cells):
                wc.write_table(to_arrow(cells, cschema))
            if len(images):
                wi.write_table(to_arrow(images, ischema))
            n_cells, n_images = n_cells + len(cells), n_images + len(images)
    get_logger().info("merge: %d cells, %d images -> %s, %s", n_cells, n_images, out_cells, out_images)
    return n_cells, n_images


def merge_stage(
    shards: list[ShardInputs],
    splits_path: Path,
    catalog: LabelCatalog,
    options: MergeConfig,
    *,
    cell_thresholds: list[Path] | None,
    image_thresholds: list[Path] | None,
    truth_dir: Path | None,
    stores: list[Path],
    out_cells: Path,
    out_images: Path,
    out_truth_pairs: Path,
) -> tuple[int, int]:
    """The merge stage: the models' fold thresholds (``thresholds.json`` files; None = no model at that
    level), the truth matches of the ``stores``' cells (``out_truth_pairs``, :mod:`hpa_batch.results.truth`;
    empty without ``truth_dir``), then :func:`merge_tables`.

    With no cell model the cells carry the image model's probabilities, so its thresholds apply to
    them; with neither, 0.5 everywhere."""
    from hpa_batch.results.truth import truth_table, write_truth_pairs

    n = catalog.n_classes
    image_t = model_thresholds(image_thresholds, n) if image_thresholds else None
    cell_t = model_thresholds(cell_thresholds, n) if cell_thresholds else image_t
    pairs = write_truth_pairs(stores, truth_dir, out_truth_pairs)
    truth = truth_table(pairs, Path(truth_dir), catalog) if truth_dir else None
    return merge_tables(
        shards,
        splits_path,
        catalog,
        options,
        thresholds=cell_t if cell_t is not None else model_thresholds([], n),
        out_cells=out_cells,
        out_images=out_images,
        truth=truth,
        image_thresholds=image_t,
    )
