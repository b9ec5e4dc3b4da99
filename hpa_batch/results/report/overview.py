"""The report's run overview: what went through each stage (shards, images admitted and refused,
segmentation QC, cells, training runs with their epochs and time) and every warning of the run in one
list, before any score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpa_batch.models.split import EXCLUDED
from hpa_batch.results.metrics_file import Metrics
from hpa_batch.results.report.markup import html_note, html_section, html_table
from hpa_batch.results.report.scores import guard_flags


def stage_counts(images: pd.DataFrame, n_cells: int) -> pd.DataFrame:
    """One row per stage: what came in and what went on (``images``: the merged images table)."""
    admitted = images[~images["rejected"]]
    refused = images[images["rejected"]]
    reasons = refused["reject_reason"].fillna("").str.split(":").str[0].value_counts()
    why = ", ".join(f"{n} {r or 'unknown'}" for r, n in reasons.items())
    doubtful = int(admitted["doubtful"].sum()) if "doubtful" in admitted else 0
    excluded = int((admitted["fold"] == EXCLUDED).sum())
    zero = int(admitted["zero_cells"].sum())
    rows = [
        ("plan", f"{images['shard'].nunique()} shards, {images['cell_line'].nunique()} cell lines"),
        (
            "manifest + convert",
            f"{len(images)} images: {len(admitted)} admitted, {len(refused)} refused ({why or 'none'})",
        ),
        (
            "segment",
            (
                f"{doubtful} doubtful segmentations ({excluded} excluded from training and validation), "
                f"{zero} images without a cell"
            ),
        ),
        ("measure + tiles", f"{n_cells} cells ({n_cells / max(len(admitted), 1):.1f} per admitted image)"),
    ]
    return pd.DataFrame(rows, columns=["stage", "result"])


def training_runs(histories: list[Path]) -> pd.DataFrame:
    """One row per trained fold: epochs run, best validation mAP and loss, training time."""
    rows = []
    for path in histories:
        if not Path(path).is_file():
            continue
        h = pd.read_csv(path)
        if h.empty:
            continue
        rows.append(
            {
                "model / fold": f"{Path(path).parent.parent.name}/{Path(path).parent.name}",
                "epochs": len(h),
                "best val mAP": float(h["val_map"].max()) if "val_map" in h else None,
                "best val loss": float(h["val_loss"].min()) if "val_loss" in h else None,
                "minutes": round(float(h["seconds"].sum()) / 60, 1) if "seconds" in h else None,
            }
        )
    return pd.DataFrame(rows)


def overview_section(images: pd.DataFrame, n_cells: int, histories: list[Path], metrics: Metrics) -> str:
    """Stages with their counts, the training runs, and the run's warnings (prediction guard, refused
    and doubtful images, training runs that never validated); ``images`` is the merged images table."""
    counts = stage_counts(images, n_cells)
    runs = training_runs(histories)
    warnings = []
    refused = int(images["rejected"].sum())
    if refused:
        warnings.append(f"{refused} images refused: the rejected section lists each with its reason.")
    if "doubtful" in images and int(images["doubtful"].sum()):
        warnings.append(
            f"{int(images['doubtful'].sum())} images have a doubtful segmentation: the segmentation section shows "
            "the worst."
        )
    for name, m in (metrics.get("models") or {}).items():
        if m.get("random_init"):
            warnings.append(
                f"{name}: its encoder {m.get('encoder')!r} ran without a weights file (random initialisation); "
                "its scores say nothing about the published encoder (docs/CLUSTER.md: which file to use)."
            )
    if not runs.empty and runs["best val mAP"].isna().all():
        warnings.append("No training run scored a validation mAP: the folds hold no validation image with labels.")
    body = guard_flags(metrics) + "".join(html_note(w) for w in warnings) + html_table(counts)
    if not runs.empty:
        body += "<h3>Training runs</h3>" + html_table(runs, sortable=True)
    return html_section("overview", "Run overview", body)
