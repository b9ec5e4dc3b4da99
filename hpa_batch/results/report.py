"""The run report: ``results/report.html``, one standalone file (figures embedded as PNG).

Sections (each an ``<section id=...>``, in this order):

``summary``        headline metrics, deep model vs baseline, on every image and on the held-out ones
``labels``         label distribution over images and the class co-occurrence matrix
``training``       training curves (loss, validation mAP / macro-F1) of every model and fold
``per-class``      per-class F1 (image level) and AP (cell level, else image level), deep vs baseline
``confusion``      confusion-style matrix: true class (rows) x predicted class of matched cells
``segmentation``   the worst images by segmentation QC beside typical ones (outlines + flag reasons),
                   and a sortable QC table (coverage, cell/nucleus ratio, doubtful, reasons, fold)
``gallery``        the most confident cell tiles per predicted class, with their confidences
``rejected``       refused images with the reason (and images where no cell was found)
``provenance``     resolved configuration, package versions, git revision, host and time

Memory: the cells table is read column-wise (identifiers, probabilities, labels), never the tiles
of the run; the gallery reads only the chunks holding the chosen tiles.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
import zarr
from PIL import Image

from hpa_batch.cells.segment.qc import robust_z
from hpa_batch.config import ReportConfig
from hpa_batch.core.atomic import atomic_path, atomic_write_text
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.tables import read_parquet, read_schema
from hpa_batch.layout import THRESHOLDS_FILE
from hpa_batch.models.split import EXCLUDED, multi_hot
from hpa_batch.results.evaluate import predicted_ids
from hpa_batch.results.metrics_file import Metrics, RunMetrics, read_metrics
from hpa_batch.results.viz import composite, store_overlay

SECTIONS = (
    "summary",
    "labels",
    "training",
    "per-class",
    "confusion",
    "segmentation",
    "gallery",
    "rejected",
    "provenance",
)
PACKAGES = (
    "hpa-batch",
    "numpy",
    "pandas",
    "pyarrow",
    "zarr",
    "numcodecs",
    "dask",
    "scikit-image",
    "scikit-learn",
    "torch",
    "torchvision",
    "timm",
    "snakemake",
    "pycocotools",
    "ome-zarr-models",
    "matplotlib",
)
DEEP, BASE = "#3465a4", "#f57900"


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from (the contract paths under ``results_dir``)."""

    cells: Path
    images: Path
    metrics: Path
    baseline: Path | None
    histories: list[Path]
    tile_stores: list[Path]
    zarr_stores: list[Path]
    rejected: Path | None
    config: dict[str, Any]
    workdir: Path


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _img_tag(buf.getvalue())


def _img_tag(png: bytes, title: str = "", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return (
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(title)}"'
        f' title="{html.escape(title)}"{w}>'
    )


def _array_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _table(df: pd.DataFrame, sortable: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False))
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


#: Click-to-sort for tables of class ``sortable`` (numbers numerically, text alphabetically).
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = tr => { const t = tr.cells[col].textContent; const v = parseFloat(t);
                      return isNaN(v) ? t : v; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""


# --- sections ---------------------------------------------------------------------------------------

HEADLINE = (
    ("cell_map", "cell mAP@IoU0.6 (2021 metric)"),
    ("cell_accuracy", "cell accuracy (exact label set)"),
    ("image_macro_f1", "image macro-F1 (2018 metric)"),
    ("image_map", "image mAP"),
)


def _guard_flags(metrics: Metrics) -> str:
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


def _unscored_summary(metrics: Metrics) -> str:
    """Summary of an unlabelled set: why nothing is scored, and the share of cells per predicted class."""
    guard = metrics.get("prediction_guard")
    share = guard["class_share"] if guard else {}
    df = pd.DataFrame({"class": list(share), "share of cells predicted": list(share.values())})
    note = _note(
        f"Not scored: {metrics['skipped']}. {metrics.get('images', 0)} images, "
        f"{metrics.get('cells', 0)} cells; {metrics.get('images_with_predictions', 0)} images with a "
        "predicted label."
    )
    return _section("summary", "Summary", _guard_flags(metrics) + note + _table(df, sortable=True))


def summary_section(metrics: Metrics) -> str:
    """Headline metrics: rows = metric, columns = deep / baseline x all / held-out (an unlabelled set:
    why nothing is scored and what was predicted)."""
    if "skipped" in metrics:
        return _unscored_summary(metrics)
    base = metrics.get("baseline")
    candidates: dict[str, RunMetrics | None] = {
        "deep model, all images": metrics,
        "deep model, held-out": metrics.get("held_out"),
        "baseline, all images": base["all"] if base else None,
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
    if not base:
        notes.append("Baseline disabled (baseline.enabled: false).")
    return _section("summary", "Summary", _guard_flags(metrics) + _table(df) + "".join(_note(n) for n in notes))


def labels_section(images: pd.DataFrame, catalog: LabelCatalog) -> str:
    """Bar chart of images per class and the co-occurrence heatmap."""
    ok = images[~images["rejected"]]
    y = multi_hot(ok["labels"].tolist(), catalog.n_classes).astype(np.int64)
    counts = y.sum(0)
    fig, ax = plt.subplots(figsize=(7, 0.22 * catalog.n_classes + 1))
    ax.barh(range(catalog.n_classes), counts, color=DEEP)
    ax.set_yticks(range(catalog.n_classes), catalog.classes, fontsize=7)
    ax.invert_yaxis()
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=6)
    ax.set_xlabel("images")
    ax.set_title(f"Label distribution ({len(ok)} images, {y.sum(1).mean() if len(y) else 0:.2f} labels/image)")
    bars = _png(fig)
    present = np.flatnonzero(counts)
    if not len(present):
        return _section("labels", "Labels", bars + _note("no labelled image"))
    co = (y.T @ y)[np.ix_(present, present)]
    names = [catalog.classes[k] for k in present]
    fig, ax = plt.subplots(figsize=(0.32 * len(present) + 3, 0.3 * len(present) + 2))
    im = ax.imshow(np.log1p(co), cmap="viridis")
    ax.set_xticks(range(len(present)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(present)), names, fontsize=7)
    for i, j in zip(*np.nonzero(co)):
        ax.text(j, i, str(co[i, j]), ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="log(1 + images)", shrink=0.7)
    ax.set_title("Co-occurrence of the classes present (diagonal = images with the class)", fontsize=9)
    return _section("labels", "Labels", bars + _png(fig))


def training_section(histories: list[Path]) -> str:
    """Loss and validation curves per model and fold (``history.csv`` of each)."""
    found = [(p, pd.read_csv(p)) for p in histories if p.is_file() and p.stat().st_size > 0]
    found = [(p, h) for p, h in found if len(h)]
    if not found:
        return _section("training", "Training curves", _note("no training history found"))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for p, h in found:
        name = f"{p.parent.parent.name}/{p.parent.name}"
        line = a1.plot(h["epoch"], h["train_loss"], label=f"{name} train")[0]
        if "val_loss" in h:
            a1.plot(h["epoch"], h["val_loss"], "--", color=line.get_color(), label=f"{name} val")
        for col, style in (("val_map", "-"), ("val_macro_f1", ":")):
            if col in h:
                a2.plot(h["epoch"], h[col], style, color=line.get_color(), label=f"{name} {col[4:]}")
    a1.set(xlabel="epoch", ylabel="loss", title="Loss")
    a2.set(xlabel="epoch", ylabel="score", title="Validation mAP (solid), macro-F1 (dotted)", ylim=(0, 1))
    for a in (a1, a2):
        a.xaxis.get_major_locator().set_params(integer=True)
        a.legend(fontsize=6)
        a.grid(alpha=0.3)
    return _section("training", "Training curves", _png(fig) + thresholds_table([p for p, _ in found]))


def thresholds_table(histories: list[Path]) -> str:
    """Per class and model fold: the threshold and its validation support (``thresholds.json`` beside
    each ``history.csv``), with the rule that chose them."""
    cols: dict[str, list[str]] = {}
    classes: list[str] = []
    rules = []
    for p in histories:
        f = p.with_name(THRESHOLDS_FILE)
        if not f.is_file():
            continue
        t = json.loads(f.read_text())
        classes = classes or list(t["classes"])
        name = f"{p.parent.parent.name}/{p.parent.name}"
        support = t.get("validation_positives") or [None] * len(t["thresholds"])
        why = t.get("reasons") or [""] * len(t["thresholds"])
        cols[name] = [
            f"{v:.3f}" + (f" ({n})" if n is not None else "") + (f" {w}" if w and w != "tuned" else "")
            for v, n, w in zip(t["thresholds"], support, why)
        ]
        if "rule" in t:
            r = t["rule"]
            rules.append(
                f"{name}: F1-optimal per class on the best epoch (by {t.get('selection', '?')}); fewer "
                f"than {r['min_positives']} validation positives (few positives) or an optimum below {r['low']} "
                f"(below low: the scores do not separate the class) -> {r['default']}; above "
                f"{r['high']} -> {r['high']}."
            )
    if not cols:
        return ""
    df = pd.DataFrame({"class": classes, **cols})
    return "<h3>Thresholds (validation positives)</h3>" + _table(df, sortable=True) + "".join(_note(r) for r in rules)


def _bars(
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


def per_class_section(metrics: Metrics, catalog: LabelCatalog) -> str:
    """Per-class F1 and AP bars, deep model vs baseline (held-out view when there is one)."""
    if "skipped" in metrics:
        return _section("per-class", "Per-class F1 and AP", _note(f"Not scored: {metrics['skipped']}."))
    held = metrics.get("held_out")
    deep: RunMetrics = held if held is not None else metrics
    baseline = metrics.get("baseline")
    base = (baseline.get("held_out") if held is not None else baseline["all"]) if baseline else None
    cell_level = "cell_ap_per_class" in deep
    ap = deep.get("cell_ap_per_class", {}) if cell_level else deep.get("image_ap_per_class", {})
    base_ap = (base.get("cell_ap_per_class") if cell_level else base.get("image_ap_per_class")) if base else None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 7.5))
    _bars(
        a1,
        deep.get("image_per_class_f1", {}),
        base.get("image_per_class_f1") if base else None,
        "Image-level F1 per class",
        catalog.classes,
    )
    _bars(
        a2,
        ap,
        base_ap,
        "Cell-level AP per class (IoU 0.6)" if cell_level else "Image-level AP per class",
        catalog.classes,
    )
    fig.tight_layout()
    which = "held-out images" if held is not None else "all images"
    return _section("per-class", "Per-class F1 and AP: deep model vs baseline", _note(f"On {which}.") + _png(fig))


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


def confusion_section(cells: pd.DataFrame, images: pd.DataFrame, catalog: LabelCatalog) -> str:
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
        truth = [{int(v) for v in t} for t in ok["labels"]]
        pred = [set(predicted_ids(v, catalog)) for v in ok["predicted"]]
        what = f"{len(ok)} images (no per-cell truth)"
    mat = confusion_matrix(truth, pred, n)
    rows = np.flatnonzero(mat.sum(1))
    if not len(rows):
        return _section("confusion", "Confusion matrix", _note("no instances with truth"))
    norm = mat[rows] / mat[rows].sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n + 1), [*catalog.classes, "(none)"], rotation=70, ha="right", fontsize=6)
    ax.set_yticks(range(len(rows)), [catalog.classes[r] for r in rows], fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"Deep model: row-normalised, {what}")
    fig.colorbar(im, ax=ax)
    return _section("confusion", "Confusion matrix", _png(fig))


#: Columns of the report's segmentation QC table (from images.parquet).
QC_TABLE_COLUMNS = (
    "image_id",
    "cell_line",
    "n_cells",
    "coverage",
    "median_cell_area",
    "cell_nucleus_ratio",
    "doubtful",
    "qc_flag",
    "fold",
)


def qc_ranking(images: pd.DataFrame) -> pd.DataFrame:
    """Segmented images, worst first: doubtful ones (most reasons first), then by how far the cell/nucleus
    area ratio and coverage lie from their cell line's medians (robust z, larger = worse)."""
    ok = images[~images["rejected"]].copy()
    if ok.empty:
        return ok
    for col in ("doubtful", "qc_flag", "cell_nucleus_ratio", "coverage"):
        if col not in ok:
            ok[col] = False if col == "doubtful" else np.nan
    ok["doubtful"] = ok["doubtful"].fillna(False).astype(bool) | ok["zero_cells"].astype(bool)
    reasons = ok["qc_flag"].map(lambda f: len([r for r in f.split("; ") if r]) if isinstance(f, str) else 0)
    z = pd.Series(0.0, index=ok.index)
    for col in ("cell_nucleus_ratio", "coverage"):  # robust z within the image's cell line
        v = np.log(ok[col].astype(float).clip(lower=1e-3))
        zc = v.groupby(ok["cell_line"]).transform(lambda s: robust_z(s.to_numpy(), 0.05))
        z = np.maximum(z, zc.abs().fillna(99.0))
    ok["_key"] = ok["doubtful"].astype(int) * 1000 + reasons * 100 + z.clip(upper=99)
    return ok.sort_values(["_key", "image_id"], ascending=[False, True]).drop(columns="_key")


def _overlay_figure(path: Path, caption: str, flag: str) -> str:
    group = zarr.open_group(path, mode="r", zarr_format=3)
    levels = sorted(k for k in group.array_keys() if k.startswith("s"))
    level = next((int(k[1:]) for k in levels if max(group[k].shape[-2:]) <= 1024), int(levels[-1][1:]))
    rgb = store_overlay(path, level)
    why = f'<br><span class="flag">{html.escape(flag)}</span>' if flag else ""
    return (
        f"<figure>{_img_tag(_array_png(_shrink(rgb, 384)), caption)}"
        f"<figcaption>{html.escape(caption)}{why}</figcaption></figure>"
    )


def segmentation_section(images: pd.DataFrame, zarr_stores: list[Path], n: int, limit: int = 500) -> str:
    """The worst images by segmentation QC beside typical ones (composite + cell / nucleus outlines,
    with the flag reasons), and the QC table of every segmented image, sortable by any column."""
    ranked = qc_ranking(images)
    stores = {s.name.removesuffix(".zarr"): s for s in zarr_stores}

    def shown(rows: pd.DataFrame, k: int) -> pd.DataFrame:
        """The first ``k`` rows whose labels exist (checked lazily: a run has ~10^5 images)."""
        keep: list[Any] = []
        for i, r in zip(rows.index, rows.itertuples()):
            if len(keep) == k:
                break
            if (stores.get(r.shard, Path()) / r.image_id / "labels").is_dir():
                keep.append(i)
        return rows.loc[keep]

    worst = shown(ranked, (n + 1) // 2)
    rest = ranked.drop(index=worst.index)
    rest = rest[~rest["doubtful"]]
    # typical = evenly spaced through the better three quarters of the ranking
    m = min(n - len(worst), len(rest))
    picks = rest.iloc[np.unique(np.linspace(len(rest) // 4, len(rest) - 1, m).astype(int))] if m > 0 else rest.head(0)
    typical = shown(picks, m)
    blocks = []
    for title, rows in (("Worst by QC", worst), ("Typical", typical.drop_duplicates("image_id"))):
        figs = [
            _overlay_figure(
                stores[r.shard] / r.image_id,
                f"{r.image_id} · {r.cell_line} · {r.n_cells} cells",
                (r.qc_flag or "") if isinstance(r.qc_flag, str) else "",
            )
            for r in rows.itertuples()
        ]
        if figs:
            blocks.append(f'<h3>{title}</h3><div class="grid">{"".join(figs)}</div>')
    n_doubtful = int(ranked["doubtful"].sum()) if len(ranked) else 0
    n_excluded = int((ranked["fold"] == EXCLUDED).sum()) if len(ranked) else 0
    policy = (
        f"{n_doubtful} of {len(ranked)} segmented images are doubtful; {n_excluded} of them are excluded "
        "from training and validation (fold -2, segmentation_qc.doubtful). Click a column to sort."
    )
    table = ranked.reindex(columns=list(QC_TABLE_COLUMNS)).head(limit)
    more = _note(f"{len(ranked) - limit} more rows in images.parquet.") if len(ranked) > limit else ""
    body = (
        ("".join(blocks) or _note("no segmented images"))
        + "<h3>Segmentation QC per image</h3>"
        + _note(policy)
        + _table(table, sortable=True)
        + more
    )
    return _section("segmentation", f"Segmentation ({n_doubtful} doubtful)", body)


def _shrink(rgb: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(rgb)
    scale = size / max(img.size)
    if scale < 1:
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.LANCZOS)
    return np.asarray(img)


def tile_locations(tile_stores: list[Path]) -> dict[tuple[str, int], tuple[Path, int]]:
    """(image_id, cell_id) -> (tile store, row) for every stored cell tile."""
    out = {}
    for store in tile_stores:
        group = zarr.open_group(store, mode="r", zarr_format=3)
        for row, (image_id, cell_id) in enumerate(zip(group["cell_image"][:], group["cell_id"][:])):
            out[(str(image_id), int(cell_id))] = (store, row)
    return out


def gallery_section(cells: pd.DataFrame, tile_stores: list[Path], catalog: LabelCatalog, per_class: int) -> str:
    """For each predicted class, the ``per_class`` most confident cells (fused probability)."""
    where = tile_locations(tile_stores)
    groups = {s: zarr.open_group(s, mode="r", zarr_format=3)["cells"] for s in tile_stores}
    pred = [set(predicted_ids(v, catalog)) for v in cells["predicted"]]
    blocks = []
    for k, name in enumerate(catalog.classes):
        has = np.flatnonzero([k in p for p in pred])
        if not len(has):
            continue
        conf = cells[f"fused_prob_{k}"].to_numpy()[has]
        top = has[np.argsort(-conf, kind="stable")[:per_class]]
        figs = []
        for i in top:
            key = (str(cells["image_id"].iat[i]), int(cells["cell_id"].iat[i]))
            if key not in where:
                continue
            store, row = where[key]
            rgb = composite(groups[store][row].astype(np.float32))
            p = float(cells[f"fused_prob_{k}"].iat[i])
            truth = ""
            if "truth_labels" in cells and cells["truth_cell_id"].iat[i] > 0:
                t = {int(v) for v in cells["truth_labels"].iat[i]} or (
                    {catalog.negative} if catalog.negative is not None else set()
                )
                truth = " ✓" if k in t else " ✗"
            caption = f"{p:.2f}{truth}"
            figs.append(
                f'<figure class="tile">{_img_tag(_array_png(rgb), f"{key[0]} cell {key[1]}", 96)}'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if figs:
            blocks.append(
                f"<h3>{html.escape(name)} <small>({len(has)} cells predicted)</small></h3>"
                f'<div class="grid">{"".join(figs)}</div>'
            )
    legend = _note(
        "Most confident cells per predicted class; the number is the fused probability; "
        "✓/✗ = the matched true cell has / lacks the class (synthetic truth)."
    )
    return _section(
        "gallery",
        "Cell gallery per predicted class",
        legend + ("".join(blocks) if blocks else _note("no cell predicted any class")),
    )


def rejected_section(images: pd.DataFrame, rejected: Path | None, limit: int) -> str:
    """Refused images and images without cells."""
    rej = images.loc[images["rejected"], ["image_id", "cell_line", "shard", "reject_reason"]]
    zero = images.loc[~images["rejected"] & images["zero_cells"], ["image_id", "cell_line", "shard"]]
    zero = zero.assign(reject_reason="segmentation found no cell")
    both = pd.concat([rej, zero], ignore_index=True).rename(columns={"reject_reason": "reason"})
    src = f" Full list: {rejected}." if rejected is not None else ""
    if both.empty:
        return _section("rejected", "Rejected images", _note(f"No image was refused.{src}"))
    shown = both.head(limit)
    more = _note(f"{len(both) - limit} more not shown.") if len(both) > limit else ""
    return _section(
        "rejected",
        f"Rejected images ({len(rej)} refused, {len(zero)} without cells)",
        _table(shown) + more + _note(src.strip()),
    )


def git_revision(workdir: Path) -> str:
    """``<sha>`` (``+dirty`` when the tree has changes) of the checkout at ``workdir``, or a reason."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance_section(config: dict[str, Any], workdir: Path) -> str:
    """Resolved configuration, package versions, git revision, host and time."""
    info = pd.DataFrame(
        {
            "item": ["git revision", "python", "host", "generated"],
            "value": [
                git_revision(workdir),
                platform.python_version(),
                socket.gethostname(),
                time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            ],
        }
    )
    versions = pd.DataFrame(sorted(package_versions().items()), columns=["package", "version"])
    cfg = html.escape(yaml.safe_dump(config, sort_keys=False))
    body = _table(info) + "<h3>Packages</h3>" + _table(versions) + f"<h3>Resolved configuration</h3><pre>{cfg}</pre>"
    return _section("provenance", "Provenance", body)


CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1150px;color:#222}
h1{margin-bottom:0}nav a{margin-right:.8em;font-size:.9em}section{border-top:1px solid #ccc;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px}
th{background:#f0f0f0}.grid{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;text-align:center;font-size:.75em}
.tile img{image-rendering:pixelated}.flag{color:#b00}figcaption{max-width:384px}
table.sortable th{cursor:pointer}pre{background:#f7f7f7;padding:.6em;font-size:.75em;max-height:30em;overflow:auto}
.note{color:#555;font-size:.85em}
"""


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a headless-capable Chromium on ``PATH`` (``HPA_BATCH_BROWSER`` wins), else ``None``."""

    for name in (os.environ.get("HPA_BATCH_BROWSER"), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def screenshot(
    report: Path, png: Path, width: int = 1200, height: int = 16000, browser: str | None = None, timeout: float = 120
) -> Path:
    """Render ``report`` in headless Chromium and save a screenshot ``png`` of the whole page (a
    ``width`` x ``height`` window, cropped below the last non-white row).

    Raises
    ------
    FileNotFoundError
        No Chromium found (install Debian's ``chromium-headless-shell`` or set ``HPA_BATCH_BROWSER``).
    RuntimeError
        Chromium failed; the message carries its stderr.
    """
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(
            "no headless Chromium found: apt-get install chromium-headless-shell, "
            "or point HPA_BATCH_BROWSER at a Chrome/Chromium binary"
        )
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpa-batch-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(report).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot of {report} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    img = Image.open(png).convert("RGB")
    ink = np.flatnonzero((np.asarray(img.convert("L")) < 250).any(axis=1))
    if len(ink):
        img.crop((0, 0, img.size[0], min(img.size[1], int(ink[-1]) + 20))).save(png)
    return png


def build_report(
    inp: ReportInputs,
    catalog: LabelCatalog,
    options: ReportConfig,
    out: Path,
    *,
    figures_dir: Path | None = None,
) -> Path:
    """Write the standalone report ``out`` (temporary name, then renamed); with ``figures_dir``, its
    figures also as PNG files there (:func:`export_figures`)."""
    metrics = read_metrics(inp.metrics)
    images = read_parquet(inp.images)
    n = catalog.n_classes
    cols = ["image_id", "cell_id", "predicted", *[f"fused_prob_{k}" for k in range(n)]]
    names = set(read_schema(inp.cells).names)
    cols += [c for c in ("truth_cell_id", "truth_labels") if c in names]
    cells = read_parquet(inp.cells, columns=cols)
    sections = [
        summary_section(metrics),
        labels_section(images, catalog),
        training_section(inp.histories),
        per_class_section(metrics, catalog),
        confusion_section(cells, images, catalog),
        segmentation_section(images, inp.zarr_stores, options.overlays, options.max_rejected),
        gallery_section(cells, inp.tile_stores, catalog, options.gallery_per_class),
        rejected_section(images, inp.rejected, options.max_rejected),
        provenance_section(inp.config, inp.workdir),
    ]
    name = html.escape(str(inp.config.get("dataset", {}).get("name", "run")))
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>hpa_batch report: {name}</title>'
        f"<style>{CSS}</style></head><body><h1>hpa_batch report: {name}</h1>"
        f'<p class="note">{len(images)} images, {len(cells)} cells, {catalog.name} catalog</p>'
        f"<nav>{nav}</nav>{''.join(sections)}<script>{SORT_JS}</script></body></html>"
    )
    atomic_write_text(out, doc)
    if figures_dir is not None:
        export_figures(doc, figures_dir)
    return out


#: Sections whose figures are also written as PNG files (the cell gallery's tiles are not).
FIGURE_SECTIONS = ("labels", "training", "per-class", "confusion", "segmentation")
_IMG = re.compile(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"')


def export_figures(doc: str, folder: Path) -> list[Path]:
    """Write the report's figures (:data:`FIGURE_SECTIONS`) as ``<section>-<k>.png`` files in ``folder``
    (replaced as a whole, :func:`~hpa_batch.core.atomic.atomic_path`), for Snakemake's own report."""
    folder = Path(folder)
    written = []
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for sid, body in re.findall(r'<section id="([^"]+)">(.*?)</section>', doc, flags=re.DOTALL):
            if sid not in FIGURE_SECTIONS:
                continue
            for k, (data, _alt) in enumerate(_IMG.findall(body)):
                (tmp / f"{sid}-{k}.png").write_bytes(base64.b64decode(data))
                written.append(folder / f"{sid}-{k}.png")
    return written
