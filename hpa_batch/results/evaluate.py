"""Evaluation against ground truth: match segmented cells to true cells and score predictions.

``evaluate_run`` scores one set of predictions (the deep model's fused probabilities, or the
baseline's) the same way: image-level macro-F1 / mAP / per-class F1 and AP against the image labels
and, with per-cell truth, the 2021 instance mAP at IoU 0.6, per-class AP, per cell line and cell
accuracy. ``evaluate_all`` does it for the deep model and the baseline, on every image and on the
held-out images (those no model of the run trained on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from hpa_batch.cells.segment.quality import iou_matrix
from hpa_batch.config import EvaluationConfig
from hpa_batch.core.errors import reading
from hpa_batch.core.labels import LabelCatalog, emitted_ids, format_labels
from hpa_batch.core.metrics import macro_f1, mean_ap
from hpa_batch.core.progress import get_logger
from hpa_batch.models.split import multi_hot
from hpa_batch.results.metrics_file import Metrics, ModelMetrics, PredictionGuard, RunMetrics, write_metrics
from hpa_batch.results.truth import Ious, ious_from_pairs, read_truth_pairs, truth_cell_labels


def score_cells(
    pred: pd.DataFrame,
    matches: pd.DataFrame,
    truth: pd.DataFrame,
    catalog: LabelCatalog,
    thresholds: np.ndarray | float = 0.5,
) -> dict[str, float]:
    """Cell-level macro-F1 and mAP of predictions (``prob_k`` columns) on matched cells.

    Returns
    -------
    dict
        ``cells`` (matched and scored), ``macro_f1``, ``map``, ``accuracy`` (exact label-set match).
    """
    m = pred.merge(matches, on=["image_id", "cell_id"]).merge(truth, on=["image_id", "truth_cell_id"])
    if m.empty:
        return {"cells": 0, "macro_f1": float("nan"), "map": float("nan"), "accuracy": float("nan")}
    prob = m[[f"prob_{k}" for k in range(catalog.n_classes)]].to_numpy()
    y = multi_hot(m["labels"].tolist(), catalog.n_classes)
    if catalog.negative is not None:  # a cell without labels is Negative
        y[y.sum(1) == 0, catalog.negative] = 1
    hits = prob >= np.asarray(thresholds)
    return {
        "cells": len(m),
        "macro_f1": macro_f1(y, prob, thresholds),
        "map": mean_ap(y, prob),
        "accuracy": float((hits == y.astype(bool)).all(1).mean()),
    }


def interpolated_ap(scores: np.ndarray, tp: np.ndarray, n_true: int) -> float:
    """Average precision of ranked detections, Open Images / VOC style (precision envelope, summed over
    recall steps), as the HPA 2021 metric computes it.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(n,)`` confidences of the detections of one class.
    tp : numpy.ndarray
        ``(n,)`` bool, whether each detection matched a true instance.
    n_true : int
        Number of true instances of the class (> 0).
    """
    if n_true == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = np.asarray(tp, bool)[order]
    tps, fps = np.cumsum(hits), np.cumsum(~hits)
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / n_true
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def instance_map(
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    ious: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_classes: int,
    iou_threshold: float = 0.6,
) -> tuple[float, dict[int, float]]:
    """Mean over classes of the instance-level AP: a (cell, class, confidence) detection is a true
    positive when it overlaps a not yet matched true cell of that class in the same image with IoU >=
    ``iou_threshold`` (the 2021 metric uses 0.6); detections are taken in descending confidence.

    Parameters
    ----------
    pred : pandas.DataFrame
        image_id, cell_id, ``prob_k`` for k < ``n_classes`` (one row per predicted cell).
    truth : pandas.DataFrame
        image_id, truth_cell_id, labels (list of class ids; a cell without labels counts as class
        ``negative`` only if the caller put it there).
    ious : dict
        image_id -> (pred cell ids ``(p,)``, true cell ids ``(t,)``, IoU ``(t, p)``).

    Returns
    -------
    mAP, per-class AP
        Classes without true instances are left out.
    """
    per_class: dict[int, float] = {}
    gt_by_class: dict[int, set[tuple[str, int]]] = {}
    for r in truth.itertuples():
        for c in r.labels:
            gt_by_class.setdefault(int(c), set()).add((r.image_id, int(r.truth_cell_id)))
    for c, gt in sorted(gt_by_class.items()):
        scores = pred[f"prob_{c}"].to_numpy(float)
        order = np.argsort(-scores, kind="stable")
        matched: set[tuple[str, int]] = set()
        tp = np.zeros(len(pred), bool)
        for i in order:
            image_id, cell_id = pred["image_id"].iat[i], int(pred["cell_id"].iat[i])
            if image_id not in ious:
                continue
            p_ids, t_ids, iou = ious[image_id]
            col = np.flatnonzero(p_ids == cell_id)
            if not len(col):
                continue
            for j in np.argsort(-iou[:, col[0]]):
                key = (image_id, int(t_ids[j]))
                if iou[j, col[0]] < iou_threshold:
                    break
                if key in gt and key not in matched:
                    matched.add(key)
                    tp[i] = True
                    break
        per_class[c] = interpolated_ap(scores, tp, len(gt))
    return (float(np.mean(list(per_class.values()))) if per_class else float("nan")), per_class


def predicted_ids(text: str | None, catalog: LabelCatalog) -> list[int]:
    """Class ids of a predicted label string: :func:`hpa_batch.core.labels.emitted_ids` (any separator, so
    ``catalog`` is not needed to read it)."""
    return emitted_ids(text)


def evaluate_run(
    cells: pd.DataFrame,
    images: pd.DataFrame,
    ious: Ious | None,
    truth_dir: Path | None,
    catalog: LabelCatalog,
    *,
    iou_threshold: float = 0.6,
) -> RunMetrics:
    """Metrics of a run: image-level macro-F1 / per-class F1 and AP, and with per-cell truth the
    instance mAP at ``iou_threshold`` (fused probabilities), cell accuracy, per cell line.

    ``ious`` (:func:`hpa_batch.results.truth.ious_from_pairs`: the matches the merge computed once) is
    needed with ``truth_dir``."""
    from sklearn.metrics import average_precision_score, f1_score

    n = catalog.n_classes
    ok = images[~images["rejected"]]
    y_img = multi_hot(ok["image_labels"].tolist(), n)
    p_img = ok[[f"image_prob_{k}" for k in range(n)]].to_numpy(float)
    pred_img = multi_hot([predicted_ids(v, catalog) for v in ok["predicted"]], n)
    result: RunMetrics = {
        "images": len(ok),
        "image_macro_f1": macro_f1(y_img, pred_img.astype(float), 0.5) if len(ok) else None,
        "image_map": mean_ap(y_img, p_img) if len(ok) else None,
        "image_per_class_f1": {
            catalog.classes[k]: float(f1_score(y_img[:, k], pred_img[:, k], zero_division=0))
            for k in range(n)
            if y_img[:, k].any()
        },
        "image_ap_per_class": {
            catalog.classes[k]: float(average_precision_score(y_img[:, k], p_img[:, k]))
            for k in range(n)
            if y_img[:, k].any() and not y_img[:, k].all()
        },
    }
    result["images_per_class"] = {catalog.classes[k]: int(v) for k, v in enumerate(y_img.sum(0)) if v}
    lines_of = ok["cell_line"].fillna("").to_numpy()
    result["images_per_cell_line"] = {str(k): int(v) for k, v in zip(*np.unique(lines_of, return_counts=True))}
    result["image_map_per_cell_line"] = {
        str(line): mean_ap(y_img[lines_of == line], p_img[lines_of == line]) for line in np.unique(lines_of)
    }
    if truth_dir is None or ious is None:
        return result
    truth = truth_cell_labels(truth_dir, catalog)
    if catalog.negative is not None:
        truth["labels"] = [v if v else [catalog.negative] for v in truth["labels"]]
    wanted = set(images["image_id"])  # once, not per image
    ious = {k: v for k, v in ious.items() if k in wanted}
    truth = truth[truth["image_id"].isin(list(ious))]
    pred = cells.rename(columns={f"fused_prob_{k}": f"prob_{k}" for k in range(n)})
    m, per = instance_map(pred, truth, ious, n, iou_threshold)
    result["cell_map"] = m
    result["iou_threshold"] = iou_threshold
    result["cell_ap_per_class"] = {catalog.classes[k]: v for k, v in per.items()}
    positives = multi_hot([list(v) for v in truth["labels"]], n).sum(0) if len(truth) else np.zeros(n)
    result["cells_per_class"] = {catalog.classes[k]: int(v) for k, v in enumerate(positives) if v}
    lines, counts = {}, {}
    for line, idx in images.groupby("cell_line").groups.items():
        ids = set(images.loc[idx, "image_id"])
        sub_t = truth[truth["image_id"].isin(ids)]
        if len(sub_t):
            lines[line] = instance_map(pred[pred["image_id"].isin(ids)], sub_t, ious, n, iou_threshold)[0]
            counts[str(line)] = len(sub_t)
    result["cell_map_per_cell_line"] = lines
    result["cells_per_cell_line"] = counts  # the n beside each cell mAP
    if "truth_labels" in cells:
        matched = cells[cells["truth_cell_id"] > 0]
        truth_sets = [
            set(v) if len(v) else ({catalog.negative} if catalog.negative is not None else set())
            for v in matched["truth_labels"]
        ]
        pred_sets = [set(predicted_ids(v, catalog)) for v in matched["predicted"]]
        result["cell_accuracy"] = (
            float(np.mean([a == b for a, b in zip(pred_sets, truth_sets)])) if len(matched) else None
        )
        result["cell_macro_f1"] = _set_macro_f1(truth_sets, pred_sets, n) if len(matched) else None
        result["matched_cells"] = len(matched)
    return result


def read_submission(path: Path, n_classes: int) -> Iterator[tuple[str, np.ndarray, pd.DataFrame]]:
    """Decode a submission CSV image by image, as a scorer would see it.

    Yields
    ------
    image_id, labels, detections
        ``labels``: ``(h, w)`` int32, one id per distinct mask token (in order of appearance);
        ``detections``: image_id, cell_id, ``prob_k`` (0 for a class the string does not list).
    """
    from hpa_batch.results.submit import decode_mask

    table = pd.read_csv(path, dtype={"ID": str, "PredictionString": str}, keep_default_na=False)
    for row in table.itertuples(index=False):
        parts = row.PredictionString.split()
        if len(parts) % 3:
            raise ValueError(f"{path}: {row.ID}: PredictionString is not a sequence of class confidence mask triples")
        ids: dict[str, int] = {}
        labels = np.zeros((int(row.ImageHeight), int(row.ImageWidth)), np.int32)
        probs: dict[int, np.ndarray] = {}
        for k in range(0, len(parts), 3):
            cls, conf, token = int(parts[k]), float(parts[k + 1]), parts[k + 2]
            if token not in ids:
                ids[token] = len(ids) + 1
                labels[decode_mask(token, labels.shape[0], labels.shape[1]) > 0] = ids[token]
                probs[ids[token]] = np.zeros(n_classes)
            probs[ids[token]][cls] = conf
        det = pd.DataFrame(
            {
                "image_id": row.ID,
                "cell_id": list(probs),
                **{f"prob_{c}": [p[c] for p in probs.values()] for c in range(n_classes)},
            }
        )
        yield row.ID, labels, det


def score_submission(
    path: Path, truth_dir: Path, catalog: LabelCatalog, iou_threshold: float = 0.6
) -> tuple[float, dict[int, float]]:
    """The HPA 2021 instance mAP of a submission file against per-cell truth, from the file alone
    (masks decoded from their tokens, matched to the true cells, confidences as written)."""
    truth = truth_cell_labels(truth_dir, catalog)
    if catalog.negative is not None:
        truth["labels"] = [v if v else [catalog.negative] for v in truth["labels"]]
    ious, frames = {}, []
    for image_id, labels, det in read_submission(path, catalog.n_classes):
        mask_path = Path(truth_dir) / f"{image_id}_cells.tif"
        if not mask_path.is_file():
            continue
        true = tifffile.imread(mask_path).astype(np.int64)
        ious[image_id] = (np.unique(labels[labels > 0]), np.unique(true[true > 0]), iou_matrix(true, labels))
        frames.append(det)
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id", "cell_id"])
    return instance_map(pred, truth[truth["image_id"].isin(list(ious))], ious, catalog.n_classes, iou_threshold)


def _set_macro_f1(truth: list[set[int]], pred: list[set[int]], n: int) -> float | None:
    """Macro-F1 over the classes present in ``truth`` of per-cell label sets (the labels as emitted)."""
    from sklearn.metrics import f1_score

    y = multi_hot([sorted(t) for t in truth], n)
    present = np.flatnonzero(y.any(axis=0))
    if not len(present):
        return None
    p = multi_hot([sorted(q) for q in pred], n)
    return float(f1_score(y, p, labels=present, average="macro", zero_division=0))


def held_out_images(images: pd.DataFrame, trained_folds: set[int], *, all_unseen: bool = False) -> set[str]:
    """Images no model of the run trained on.

    A fold-``k`` model trains on every fold but ``k`` (fold -1 included), so an image of fold ``f`` is
    unseen only when every trained fold is ``f``: with one trained fold, that fold's images; with a
    full cross-validation ensemble, none. With ``all_unseen`` (every model was trained by another
    run), every admitted image.
    """
    if all_unseen:
        return set(images.loc[~images["rejected"], "image_id"])
    if len(trained_folds) != 1:
        return set()
    (fold,) = trained_folds
    return set(images.loc[(images["fold"] == fold) & ~images["rejected"], "image_id"])


def baseline_view(
    cells: pd.DataFrame, images: pd.DataFrame, baseline: pd.DataFrame, thresholds: np.ndarray, catalog: LabelCatalog
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's tables with the baseline's probabilities in place of the deep model's.

    Cells get ``fused_prob_k`` / ``predicted`` from ``baseline`` (image_id, cell_id, ``prob_k``,
    predicted); images get ``image_prob_k`` = max over their cells and ``predicted`` against
    ``thresholds`` ``(c,)``.
    """
    n = catalog.n_classes
    probs = [f"prob_{k}" for k in range(n)]
    keep = [c for c in cells.columns if not c.startswith("fused_prob_") and c != "predicted"]
    c = cells[keep].merge(
        baseline[["image_id", "cell_id", *probs, "predicted"]], on=["image_id", "cell_id"], how="left"
    )
    c[probs] = c[probs].fillna(0.0)
    c = c.rename(columns={p: f"fused_{p}" for p in probs})
    img_max = c.groupby("image_id")[[f"fused_{p}" for p in probs]].max()
    i = images.copy()
    ip = img_max.reindex(i["image_id"]).fillna(0.0).to_numpy(np.float32)
    for k in range(n):
        i[f"image_prob_{k}"] = np.where(i["rejected"], np.nan, ip[:, k])
    i["predicted"] = [
        None if rej else format_labels(np.flatnonzero(row >= thresholds).tolist(), catalog)
        for rej, row in zip(i["rejected"], ip)
    ]
    return c, i


def prediction_guard(cells: pd.DataFrame, catalog: LabelCatalog, max_share: float) -> PredictionGuard:
    """Share of cells predicted per class, and the classes predicted for more than ``max_share`` of the
    cells although the per-cell truth (when there is one) gives them no more than that share.

    A model that labels (nearly) every cell with one class, or one label set for every cell, has learned
    nothing about cells: ``single_prediction`` says so.
    """
    n = catalog.n_classes
    sets = [predicted_ids(v, catalog) for v in cells["predicted"]] if len(cells) else []
    pred = multi_hot(sets, n).mean(axis=0) if sets else np.zeros(n)
    truth = None
    if "truth_labels" in cells and len(cells):
        matched = cells[cells["truth_cell_id"] >= 0] if "truth_cell_id" in cells else cells
        if len(matched):
            truth = multi_hot([list(map(int, v)) for v in matched["truth_labels"]], n).mean(axis=0)
    over = [catalog.classes[k] for k in range(n) if pred[k] > max_share and (truth is None or truth[k] <= max_share)]
    distinct = {tuple(s) for s in sets}
    guard: PredictionGuard = {
        "max_class_share": max_share,
        "class_share": {catalog.classes[k]: round(float(pred[k]), 4) for k in range(n)},
        "over_predicted": over,
        "single_prediction": len(sets) > 1 and len(distinct) == 1,
    }
    if truth is not None:
        guard["truth_share"] = {catalog.classes[k]: round(float(truth[k]), 4) for k in range(n)}
    return guard


UNLABELLED = (
    "the dataset has no labels (dataset.label_column: null): predictions, tables and the submission "
    "are written, nothing is scored"
)


def unlabelled_metrics(
    cells: pd.DataFrame, images: pd.DataFrame, catalog: LabelCatalog, max_class_share: float = 0.6
) -> Metrics:
    """``metrics.json`` of an unlabelled set: why nothing is scored, what was predicted, and the
    prediction guard (a class on most cells, one label set for every cell still shows)."""
    admitted = images[~images["rejected"]]
    guard = prediction_guard(cells, catalog, max_class_share)
    for name in guard["over_predicted"]:
        get_logger().warning("evaluate: %s is predicted for %.0f%% of cells", name, 100 * guard["class_share"][name])
    return {
        "skipped": UNLABELLED,
        "images": len(admitted),
        "cells": len(cells),
        "images_with_predictions": int(admitted["predicted"].map(bool).sum()),
        "prediction_guard": guard,
    }


def evaluate_all(
    cells: pd.DataFrame,
    images: pd.DataFrame,
    ious: Ious | None,
    truth_dir: Path | None,
    catalog: LabelCatalog,
    *,
    trained_folds: set[int],
    baseline: pd.DataFrame | None = None,
    baseline_thresholds: np.ndarray | None = None,
    iou_threshold: float = 0.6,
    max_class_share: float = 0.6,
    all_unseen: bool = False,
    compared: dict[str, Compared] | None = None,
) -> Metrics:
    """``metrics.json``: the deep model's metrics on every image at the top level (as before), then
    ``held_out`` (images no model trained on; absent when there are none) and ``baseline`` with the
    same two views."""
    held = held_out_images(images, trained_folds, all_unseen=all_unseen)

    def both(c: pd.DataFrame, i: pd.DataFrame) -> tuple[RunMetrics, RunMetrics | None]:
        everything = evaluate_run(c, i, ious, truth_dir, catalog, iou_threshold=iou_threshold)
        if not held:
            return everything, None
        sub = evaluate_run(
            c[c["image_id"].isin(held)],
            i[i["image_id"].isin(held)],
            ious,
            truth_dir,
            catalog,
            iou_threshold=iou_threshold,
        )
        return everything, sub

    everything, held_metrics = both(cells, images)
    result = Metrics(**everything)
    result["held_out_images"] = len(held)
    result["trained_folds"] = sorted(trained_folds)
    guard = result["prediction_guard"] = prediction_guard(cells, catalog, max_class_share)
    for name in guard["over_predicted"]:
        get_logger().warning(
            "evaluate: %s is predicted for %.0f%% of cells (> %.0f%%, more than the truth "
            "says): its threshold is degenerate",
            name,
            100 * guard["class_share"][name],
            100 * max_class_share,
        )
    if held_metrics is not None:
        result["held_out"] = held_metrics
    if baseline is not None and baseline_thresholds is not None:
        b_all, b_held = both(*baseline_view(cells, images, baseline, baseline_thresholds, catalog))
        result["baseline"] = {"all": b_all}
        if b_held is not None:
            result["baseline"]["held_out"] = b_held
    if compared:
        result["models"] = {}
        for name, model in compared.items():
            c, i = baseline_view(cells, images, model.cells, model.thresholds, catalog)
            m_all, m_held = both(c, i)
            entry = ModelMetrics(
                kind="encoder head" if model.about.get("encoder") else "timm",
                arch=str(model.about.get("arch", "")),
                encoder=model.about.get("encoder"),
                all=m_all,
                prediction_guard=prediction_guard(c, catalog, max_class_share),
            )
            if "random_init" in model.about:
                entry["random_init"] = bool(model.about["random_init"])
            if m_held is not None and set(model.about.get("folds", [])) == set(trained_folds):
                entry["held_out"] = m_held
            elif m_held is not None:  # its training images differ: the run's held-out images may not be
                entry["held_out_note"] = (
                    f"trained on folds {model.about.get('folds')}, the run's held-out images are those of "
                    f"folds {sorted(trained_folds)}: not held out for this model, so not scored there"
                )
            result["models"][name] = entry
    return result


def evaluate_stage(
    cells_path: Path,
    images_path: Path,
    truth_pairs: Path | None,
    catalog: LabelCatalog,
    evaluation: EvaluationConfig,
    *,
    labelled: bool,
    trained_folds: set[int],
    all_unseen: bool,
    out: Path,
    baseline_path: Path | None = None,
    baseline_summary: Path | None = None,
    compare: list[Path] | None = None,
) -> Metrics:
    """The evaluate stage: ``metrics.json`` (:func:`evaluate_all`, or :func:`unlabelled_metrics` for a
    set without labels) written atomically to ``out``; returns it.

    Parameters
    ----------
    baseline_path, baseline_summary : Path, optional
        The baseline's per-cell predictions and its ``summary.json`` (its thresholds); both or neither.
    compare : list of Path, optional
        Per-shard cell predictions of every cell-level model to compare (``results/predictions/{model}/
        {shard}.parquet``; grouped by the model their metadata names): each is scored with its own
        cell probabilities on the same cells (``models`` in ``metrics.json``).
    """
    import json

    from hpa_batch.core.tables import read_parquet

    cells = read_parquet(cells_path)
    images = read_parquet(images_path)
    if not labelled:
        metrics = unlabelled_metrics(cells, images, catalog, evaluation.max_class_share)
        get_logger().info("evaluate: skipped: %s", metrics["skipped"])
    else:
        baseline = thresholds = None
        if baseline_path is not None and baseline_summary is not None:
            baseline = read_parquet(baseline_path)
            with reading(baseline_summary):
                thresholds = np.asarray(json.loads(Path(baseline_summary).read_text())["thresholds"])
        ious = ious_from_pairs(read_truth_pairs(truth_pairs)) if truth_pairs and evaluation.truth_dir else None
        metrics = evaluate_all(
            cells,
            images,
            ious,
            evaluation.truth_dir,
            catalog,
            trained_folds=trained_folds,
            baseline=baseline,
            baseline_thresholds=thresholds,
            max_class_share=evaluation.max_class_share,
            all_unseen=all_unseen,
            compared=read_compared(compare or [], catalog),
        )
    write_metrics(out, metrics)
    return metrics


@dataclass(frozen=True)
class Compared:
    """One cell-level model's predictions for the family comparison.

    Attributes
    ----------
    cells : pandas.DataFrame
        ``image_id``, ``cell_id``, ``prob_k``, ``predicted`` of every cell of the run.
    thresholds : numpy.ndarray
        ``(c,)`` the per-class thresholds its ``predicted`` used.
    about : dict
        The predictions' metadata: ``arch``, ``encoder``, ``random_init``.
    """

    cells: pd.DataFrame
    thresholds: np.ndarray
    about: dict[str, Any]


def read_compared(paths: list[Path], catalog: LabelCatalog) -> dict[str, Compared]:
    """Model name -> its :class:`Compared` predictions, from per-shard prediction files of any models.

    Raises
    ------
    ValueError
        A file without the model metadata (written before it: rerun its predict job), naming it.
    """
    from hpa_batch.core.tables import read_parquet, read_predictions_about

    columns = ["image_id", "cell_id", *[f"prob_{k}" for k in range(catalog.n_classes)], "predicted"]
    parts: dict[str, list[pd.DataFrame]] = {}
    about: dict[str, dict[str, Any]] = {}
    for path in paths:
        meta = read_predictions_about(path)
        if "model" not in meta:
            raise ValueError(f"{path} names no model in its metadata: rerun its predict job to compare it")
        parts.setdefault(meta["model"], []).append(read_parquet(path, columns=columns))
        about[meta["model"]] = meta
    return {
        name: Compared(pd.concat(frames, ignore_index=True), np.asarray(about[name]["thresholds"]), about[name])
        for name, frames in parts.items()
    }
