"""The report's data sections: labels, training curves and thresholds, segmentation QC with overlays,
the cell gallery and the refused images."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import zarr
from PIL import Image

from hpa_batch.cells.segment.qc import robust_z
from hpa_batch.config import MergeConfig
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.ngff import level_paths
from hpa_batch.layout import THRESHOLDS_FILE
from hpa_batch.models.split import EXCLUDED, multi_hot
from hpa_batch.results.evaluate import predicted_ids
from hpa_batch.results.report.markup import (
    DEEP,
    Figures,
    array_png,
    fig_png,
    html_note,
    html_section,
    html_table,
    img_tag,
    kept_png,
)
from hpa_batch.results.viz import composite, store_overlay


def labels_section(images: pd.DataFrame, catalog: LabelCatalog, figures: Figures | None = None) -> str:
    """Bar chart of images per class and the co-occurrence heatmap."""
    ok = images[~images["rejected"]]
    y = multi_hot(ok["image_labels"].tolist(), catalog.n_classes).astype(np.int64)
    counts = y.sum(0)
    fig, ax = plt.subplots(figsize=(7, 0.22 * catalog.n_classes + 1))
    ax.barh(range(catalog.n_classes), counts, color=DEEP)
    ax.set_yticks(range(catalog.n_classes), catalog.classes, fontsize=7)
    ax.invert_yaxis()
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=6)
    ax.set_xlabel("images")
    ax.set_title(f"Label distribution ({len(ok)} images, {y.sum(1).mean() if len(y) else 0:.2f} labels/image)")
    bars = fig_png(fig, figures, "labels")
    present = np.flatnonzero(counts)
    if not len(present):
        return html_section("labels", "Labels", bars + html_note("no labelled image"))
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
    return html_section("labels", "Labels", bars + fig_png(fig, figures, "labels"))


def training_section(histories: list[Path], figures: Figures | None = None, fusion: str = "") -> str:
    """Loss and validation curves per model and fold (``history.csv`` of each)."""
    found = [(p, pd.read_csv(p)) for p in histories if p.is_file() and p.stat().st_size > 0]
    found = [(p, h) for p, h in found if len(h)]
    if not found:
        return html_section("training", "Training curves", html_note("no training history found"))
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
    return html_section(
        "training",
        "Training curves",
        fig_png(fig, figures, "training") + thresholds_table([p for p, _ in found], fusion),
    )


def fusion_rule(merge: MergeConfig) -> str:
    """How the merged tables apply the class thresholds ``t`` to a cell, in words: under product fusion a
    cell is predicted when cell x image probability >= t^2, so its fused probability may be below t."""
    if merge.fusion == "product":
        return (
            "A cell gets class k when cell_prob x image_prob >= t_k^2 (merge.fusion: product; the threshold "
            "is fused like the probabilities), so a predicted cell's fused probability can be well below t_k: "
            "at t_k = 0.5, cell and image probabilities of 0.5 each (fused 0.25) pass."
        )
    if merge.fusion == "mean":
        w = merge.cell_weight
        return (
            f"A cell gets class k when {w:g} x cell_prob + {1 - w:g} x image_prob >= t_k "
            "(merge.fusion: mean, merge.cell_weight)."
        )
    return "A cell gets class k when its cell-model probability >= t_k (merge.fusion: cell)."


def thresholds_table(histories: list[Path], fusion: str = "") -> str:
    """Per class and model fold: the threshold and its validation support (``thresholds.json`` beside
    each ``history.csv``), with the rule that chose them and ``fusion`` (:func:`fusion_rule`), how the
    merged tables apply them."""
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
    return (
        "<h3>Thresholds (validation positives)</h3>"
        + html_table(df, sortable=True)
        + "".join(html_note(r) for r in rules)
        + (html_note(fusion) if fusion else "")
    )


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


def overlay_figure(path: Path, caption: str, flag: str, figures: Figures | None) -> str:
    group = zarr.open_group(path, mode="r", zarr_format=3)
    levels = level_paths(group)
    level = next((k for k, name in enumerate(levels) if max(group[name].shape[-2:]) <= 1024), len(levels) - 1)
    rgb = store_overlay(path, level)
    why = f'<br><span class="flag">{html.escape(flag)}</span>' if flag else ""
    return (
        f"<figure>{img_tag(kept_png(array_png(shrink(rgb, 384)), figures, 'segmentation'), caption)}"
        f"<figcaption>{html.escape(caption)}{why}</figcaption></figure>"
    )


def segmentation_section(
    images: pd.DataFrame, zarr_stores: list[Path], n: int, limit: int = 500, figures: Figures | None = None
) -> str:
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
            overlay_figure(
                stores[r.shard] / r.image_id,
                f"{r.image_id} · {r.cell_line} · {r.n_cells} cells",
                (r.qc_flag or "") if isinstance(r.qc_flag, str) else "",
                figures,
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
    more = html_note(f"{len(ranked) - limit} more rows in images.parquet.") if len(ranked) > limit else ""
    body = (
        ("".join(blocks) or html_note("no segmented images"))
        + "<h3>Segmentation QC per image</h3>"
        + html_note(policy)
        + html_table(table, sortable=True)
        + more
    )
    return html_section("segmentation", f"Segmentation ({n_doubtful} doubtful)", body)


def shrink(rgb: np.ndarray, size: int) -> np.ndarray:
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
                f'<figure class="tile">{img_tag(array_png(rgb), f"{key[0]} cell {key[1]}", 96)}'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        if figs:
            blocks.append(
                f"<h3>{html.escape(name)} <small>({len(has)} cells predicted)</small></h3>"
                f'<div class="grid">{"".join(figs)}</div>'
            )
    legend = html_note(
        "Most confident cells per predicted class; the number is the fused probability; "
        "✓/✗ = the matched true cell has / lacks the class (synthetic truth)."
    )
    return html_section(
        "gallery",
        "Cell gallery per predicted class",
        legend + ("".join(blocks) if blocks else html_note("no cell predicted any class")),
    )


def rejected_section(images: pd.DataFrame, rejected: Path | None, limit: int) -> str:
    """Refused images and images without cells."""
    rej = images.loc[images["rejected"], ["image_id", "cell_line", "shard", "reject_reason"]]
    zero = images.loc[~images["rejected"] & images["zero_cells"], ["image_id", "cell_line", "shard"]]
    zero = zero.assign(reject_reason="segmentation found no cell")
    both = pd.concat([rej, zero], ignore_index=True).rename(columns={"reject_reason": "reason"})
    src = f" Full list: {rejected}." if rejected is not None else ""
    if both.empty:
        return html_section("rejected", "Rejected images", html_note(f"No image was refused.{src}"))
    shown = both.head(limit)
    more = html_note(f"{len(both) - limit} more not shown.") if len(both) > limit else ""
    return html_section(
        "rejected",
        f"Rejected images ({len(rej)} refused, {len(zero)} without cells)",
        html_table(shown) + more + html_note(src.strip()),
    )
