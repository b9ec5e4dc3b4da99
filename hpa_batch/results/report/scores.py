"""The report's scored sections: headline metrics with the prediction guard's flags, per-class F1
and AP (deep model vs baseline), and the confusion matrix of matched cells."""

from __future__ import annotations

import html
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hpa_batch.core.labels import LabelCatalog
from hpa_batch.results.evaluate import predicted_ids
from hpa_batch.results.metrics_file import Metrics, RunMetrics
from hpa_batch.results.report.markup import (
    BASE,
    DEEP,
    Figures,
    fig_png,
    html_note,
    html_section,
    html_table,
)

HEADLINE = (
    ("cell_map", "cell mAP@IoU0.6 (2021 metric)"),
    ("cell_accuracy", "cell accuracy (exact label set)"),
    ("image_macro_f1", "image macro-F1 (2018 metric)"),
    ("image_map", "image mAP"),
)


def guard_flags(metrics: Metrics) -> str:
    """Red flags of the prediction guard: one label set for every cell, a class on most cells."""
    guard = metrics.get("prediction_guard")
    if guard is None:
        return ""
    warnings = []
    if guard["single_prediction"]:
        warnings.append("DEGENERATE MODEL: every cell got the same predicted label set.")
    for name in guard["over_predicted"]:
        share = guard["class_share"][name]
        truth = guard.get("truth_share", {}).get(name)
        said = f" (truth: {truth:.0%})" if truth is not None else ""
        warnings.append(
            f"DEGENERATE THRESHOLD: {name} is predicted for {share:.0%} of cells{said}, more than "
            f"evaluation.max_class_share = {guard['max_class_share']:.0%}."
        )
    return "".join(f'<p class="flag">{html.escape(w)}</p>' for w in warnings)


def unscored_summary(metrics: Metrics) -> str:
    """Summary of an unlabelled set: why nothing is scored, and the share of cells per predicted class."""
    guard = metrics.get("prediction_guard")
    share = guard["class_share"] if guard else {}
    df = pd.DataFrame({"class": list(share), "share of cells predicted": list(share.values())})
    note = html_note(
        f"Not scored: {metrics['skipped']}. {metrics.get('images', 0)} images, "
        f"{metrics.get('cells', 0)} cells; {metrics.get('images_with_predictions', 0)} images with a "
        "predicted label."
    )
    return html_section("summary", "Summary", guard_flags(metrics) + note + html_table(df, sortable=True))


def summary_section(metrics: Metrics) -> str:
    """Headline metrics: rows = metric, columns = deep / baseline x all / held-out (an unlabelled set:
    why nothing is scored and what was predicted)."""
    if "skipped" in metrics:
        return unscored_summary(metrics)
    base = metrics.get("baseline")
    candidates: dict[str, RunMetrics | None] = {
        ALL_DEEP: metrics,
        "deep model, held-out": metrics.get("held_out"),
        ALL_BASE: base["all"] if base else None,
        "baseline, held-out": base.get("held_out") if base else None,
    }
    views = {k: cast(dict[str, Any], v) for k, v in candidates.items() if v is not None}
    df = pd.DataFrame(
        {
            "metric": [label for _, label in HEADLINE],
            **{k: [v.get(key) for key, _ in HEADLINE] for k, v in views.items()},
        }
    )
    notes = [
        (
            f"{metrics.get('images', 0)} images evaluated; {metrics.get('held_out_images', 0)} held out "
            f"(no model trained on them; trained folds {metrics.get('trained_folds', [])})."
        )
    ]
    if not metrics.get("held_out_images"):
        notes.append(
            "No held-out images: every image was seen in training by some fold model, so these numbers are optimistic."
        )
    else:
        notes.append(
            "The all-images columns include the images the models trained on (the baseline trains on "
            "the same images): compare the models on the held-out columns."
        )
    flip = ranking_flip(views)
    if flip:
        notes.append(flip)
    if not base:
        notes.append("Baseline disabled (baseline.enabled: false).")
    body = guard_flags(metrics) + html_table(df) + "".join(html_note(n) for n in notes)
    return html_section("summary", "Summary", body + models_table(metrics) + cell_line_table(metrics))


def models_table(metrics: Metrics) -> str:
    """The model families side by side on the same cells: every cell-level model with its own cell
    probabilities (unfused) and the baseline, held-out images when there are any; flags a random-init
    encoder and a degenerate prediction (one label set for every cell, a class on most cells)."""
    models = metrics.get("models") or {}
    if not models:
        return ""
    view = "held_out" if metrics.get("held_out_images") else "all"
    rows: list[dict[str, Any]] = []
    for name, m in models.items():
        flags = []
        if m.get("random_init"):
            flags.append("RANDOM-INIT ENCODER (no weights file): not the published model")
        if view == "held_out" and "held_out" not in m:
            flags.append(m.get("held_out_note", "not scored on the held-out images"))
        guard = m.get("prediction_guard") or {}
        if guard.get("single_prediction"):
            flags.append("one label set for every cell")
        if guard.get("over_predicted"):
            flags.append("on most cells: " + ", ".join(guard["over_predicted"]))
        scores = cast(dict[str, Any], m.get(view) or {})
        what = f"{m['arch']} on {m['encoder']} embeddings" if m.get("encoder") else m["arch"]
        rows.append({"model": name, "family": m["kind"], "architecture": what})
        rows[-1].update({label: scores.get(key) for key, label in HEADLINE})
        rows[-1]["flags"] = "; ".join(flags)
    base = metrics.get("baseline")
    if base and base.get(view):
        scores = cast(dict[str, Any], base[view])  # type: ignore[literal-required]
        rows.append({"model": "baseline", "family": "scikit-learn", "architecture": "hand-crafted features"})
        rows[-1].update({label: scores.get(key) for key, label in HEADLINE})
        rows[-1]["flags"] = ""
    where = "the held-out images" if view == "held_out" else "all images (no held-out images: optimistic)"
    note = html_note(
        f"Every cell-level model scored with its own cell probabilities (not fused with an image model) on "
        f"the same segmented cells of {where}, with the same folds and weak labels; the headline table "
        "above scores the merged (fused) predictions."
    )
    return "<h3>Model families on the same cells</h3>" + html_table(pd.DataFrame(rows), sortable=True) + note


#: Column names of the summary's all-images views (they include training images).
ALL_DEEP, ALL_BASE = "deep model, all images (incl. training)", "baseline, all images (incl. training)"


def ranking_flip(views: dict[str, dict[str, Any]]) -> str:
    """A warning when the deep model and the baseline swap places between all images and held-out
    images on a headline metric (the all-images view then says more about memorising than about
    generalising); "" otherwise."""
    held_deep, held_base = views.get("deep model, held-out"), views.get("baseline, held-out")
    if not (held_deep and held_base and ALL_DEEP in views and ALL_BASE in views):
        return ""
    for key, label in HEADLINE:
        raw = [v.get(key) for v in (views[ALL_DEEP], views[ALL_BASE], held_deep, held_base)]
        values = [float(x) for x in raw if isinstance(x, float) and np.isfinite(x)]
        if len(values) < 4:
            continue
        all_deep, all_base, h_deep, h_base = values
        if (all_deep - all_base) * (h_deep - h_base) < 0:
            lead_all = "deep model" if all_deep > all_base else "baseline"
            lead_held = "deep model" if h_deep > h_base else "baseline"
            return (
                f"WARNING: on {label} the {lead_all} leads on all images but the {lead_held} on the "
                "held-out images; the held-out columns are the fair comparison."
            )
    return ""


def cell_line_table(metrics: Metrics) -> str:
    """Per cell line, each score beside its n: images, image mAP (all and held-out) and, with per-cell
    truth, cells and cell mAP."""
    lines = metrics.get("images_per_cell_line") or {}
    if not lines:
        return ""
    held = metrics.get("held_out") or {}
    cols: dict[str, list[Any]] = {
        "cell line": list(lines),
        "images": list(lines.values()),
        "image mAP, all images": [(metrics.get("image_map_per_cell_line") or {}).get(k) for k in lines],
    }
    if held:
        cols["held-out images"] = [(held.get("images_per_cell_line") or {}).get(k, 0) for k in lines]
        cols["image mAP, held-out"] = [(held.get("image_map_per_cell_line") or {}).get(k) for k in lines]
    if "cell_map_per_cell_line" in metrics:
        cols["cells"] = [(metrics.get("cells_per_cell_line") or {}).get(k) for k in lines]
        cols["cell mAP, all images"] = [metrics["cell_map_per_cell_line"].get(k) for k in lines]
        if held:
            cols["held-out cells"] = [(held.get("cells_per_cell_line") or {}).get(k) for k in lines]
            cols["cell mAP, held-out"] = [(held.get("cell_map_per_cell_line") or {}).get(k) for k in lines]
    return "<h3>Per cell line</h3>" + html_table(pd.DataFrame(cols), sortable=True)


def class_bars(
    ax: plt.Axes, deep: dict[str, float], base: dict[str, float] | None, title: str, classes: tuple[str, ...]
) -> None:
    names = [c for c in classes if c in deep or (base and c in base)]
    x = np.arange(len(names))
    width = 0.4 if base is not None else 0.8
    ax.bar(
        x - (width / 2 if base is not None else 0),
        [deep.get(c, np.nan) for c in names],
        width,
        label="deep model",
        color=DEEP,
    )
    if base is not None:
        ax.bar(x + width / 2, [base.get(c, np.nan) for c in names], width, label="baseline", color=BASE)
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), title=title)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def per_class_section(metrics: Metrics, catalog: LabelCatalog, figures: Figures | None = None) -> str:
    """Per-class F1 and AP bars, deep model vs baseline (held-out view when there is one)."""
    if "skipped" in metrics:
        return html_section("per-class", "Per-class F1 and AP", html_note(f"Not scored: {metrics['skipped']}."))
    held = metrics.get("held_out")
    deep: RunMetrics = held if held is not None else metrics
    baseline = metrics.get("baseline")
    base = (baseline.get("held_out") if held is not None else baseline["all"]) if baseline else None
    cell_level = "cell_ap_per_class" in deep
    ap = deep.get("cell_ap_per_class", {}) if cell_level else deep.get("image_ap_per_class", {})
    base_ap = (base.get("cell_ap_per_class") if cell_level else base.get("image_ap_per_class")) if base else None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 7.5))
    class_bars(
        a1,
        deep.get("image_per_class_f1", {}),
        base.get("image_per_class_f1") if base else None,
        "Image-level F1 per class",
        catalog.classes,
    )
    class_bars(
        a2,
        ap,
        base_ap,
        "Cell-level AP per class (IoU 0.6)" if cell_level else "Image-level AP per class",
        catalog.classes,
    )
    fig.tight_layout()
    which = "held-out images" if held is not None else "all images"
    return html_section(
        "per-class",
        "Per-class F1 and AP: deep model vs baseline",
        html_note(f"On {which}.") + fig_png(fig, figures, "per-class") + class_table(deep, base, catalog),
    )


def class_table(deep: RunMetrics, base: RunMetrics | None, catalog: LabelCatalog) -> str:
    """Each class's scores beside their n: images with the class, image F1, and with per-cell truth the
    true cells of the class and the cell AP (deep model, baseline)."""
    images = deep.get("images_per_class") or {}
    cells = deep.get("cells_per_class") or {}
    names = [c for c in catalog.classes if c in images or c in cells]
    if not names:
        return ""
    cols: dict[str, list[Any]] = {
        "class": names,
        "images": [images.get(c, 0) for c in names],
        "image F1": [deep.get("image_per_class_f1", {}).get(c) for c in names],
    }
    if base:
        cols["image F1, baseline"] = [base.get("image_per_class_f1", {}).get(c) for c in names]
    if "cell_ap_per_class" in deep:
        cols["true cells"] = [cells.get(c, 0) for c in names]
        cols["cell AP"] = [deep["cell_ap_per_class"].get(c) for c in names]
        if base:
            cols["cell AP, baseline"] = [(base.get("cell_ap_per_class") or {}).get(c) for c in names]
    return html_table(pd.DataFrame(cols), sortable=True)


def confusion_matrix(true_sets: list[set[int]], pred_sets: list[set[int]], n: int) -> np.ndarray:
    """Confusion-style counts for multi-label predictions.

    Entry ``(t, p)`` counts instances whose truth contains ``t`` and whose prediction contains ``p``;
    the last column counts instances with class ``t`` and an empty prediction.

    Returns
    -------
    numpy.ndarray
        ``(n, n + 1)`` int64.
    """
    out = np.zeros((n, n + 1), np.int64)
    for t, p in zip(true_sets, pred_sets):
        for a in t:
            if p:
                for b in p:
                    out[a, b] += 1
            else:
                out[a, n] += 1
    return out


def confusion_section(
    cells: pd.DataFrame, images: pd.DataFrame, catalog: LabelCatalog, figures: Figures | None = None
) -> str:
    """Row-normalised matrix of matched cells (per-cell truth) or of images (image labels)."""
    n = catalog.n_classes
    if "truth_labels" in cells and (cells["truth_cell_id"] > 0).any():
        m = cells[cells["truth_cell_id"] > 0]
        neg = {catalog.negative} if catalog.negative is not None else set()
        truth = [{int(v) for v in t} or neg for t in m["truth_labels"]]
        pred = [set(predicted_ids(v, catalog)) for v in m["predicted"]]
        what = f"{len(m)} cells matched to a true cell (IoU > 0.5)"
    else:
        ok = images[~images["rejected"]]
        truth = [{int(v) for v in t} for t in ok["image_labels"]]
        pred = [set(predicted_ids(v, catalog)) for v in ok["predicted"]]
        what = f"{len(ok)} images (no per-cell truth)"
    mat = confusion_matrix(truth, pred, n)
    rows = np.flatnonzero(mat.sum(1))
    if not len(rows):
        return html_section("confusion", "Confusion matrix", html_note("no instances with truth"))
    norm = mat[rows] / mat[rows].sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n + 1), [*catalog.classes, "(none)"], rotation=70, ha="right", fontsize=6)
    ax.set_yticks(range(len(rows)), [catalog.classes[r] for r in rows], fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"Deep model: row-normalised, {what}")
    fig.colorbar(im, ax=ax)
    return html_section("confusion", "Confusion matrix", fig_png(fig, figures, "confusion"))


#: Columns of the report's segmentation QC table (from images.parquet).
