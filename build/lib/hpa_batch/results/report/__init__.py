"""The run report: ``results/report.html``, one standalone file (figures embedded as PNG).

Sections (each an ``<section id=...>``, in this order):

``overview``       what went through each stage (images admitted and refused, doubtful segmentations,
                   cells), the training runs (epochs, best validation scores, minutes), every warning
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

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpa_batch.config import MergeConfig, ReportConfig
from hpa_batch.core.atomic import atomic_write_text
from hpa_batch.core.labels import LabelCatalog
from hpa_batch.core.tables import read_parquet, read_schema
from hpa_batch.results.metrics_file import read_metrics
from hpa_batch.results.report.embedding import umap_section
from hpa_batch.results.report.markup import CSS, SORT_JS, Figures
from hpa_batch.results.report.overview import overview_section
from hpa_batch.results.report.provenance import git_revision, package_versions, provenance_section
from hpa_batch.results.report.scores import confusion_matrix, confusion_section, per_class_section, summary_section
from hpa_batch.results.report.screenshot import find_browser, screenshot
from hpa_batch.results.report.sections import (
    fusion_rule,
    gallery_section,
    labels_section,
    qc_ranking,
    rejected_section,
    segmentation_section,
    training_section,
)

SECTIONS = (
    "overview",
    "summary",
    "labels",
    "training",
    "per-class",
    "confusion",
    "umap",
    "segmentation",
    "gallery",
    "rejected",
    "provenance",
)


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
    h5ad: Path | None = None


def build_report(
    inp: ReportInputs,
    catalog: LabelCatalog,
    options: ReportConfig,
    out: Path,
    *,
    figures_dir: Path | None = None,
    name: str | None = None,
    merge: MergeConfig | None = None,
) -> Path:
    """Write the standalone report ``out`` (temporary name, then renamed); with ``figures_dir``, its
    figures (not the gallery's tiles) also as PNG files there (:meth:`Figures.write`)."""
    metrics = read_metrics(inp.metrics)
    images = read_parquet(inp.images)
    n = catalog.n_classes
    cols = ["image_id", "cell_id", "predicted", *[f"fused_prob_{k}" for k in range(n)]]
    names = set(read_schema(inp.cells).names)
    cols += [c for c in ("truth_cell_id", "truth_labels", "cell_line") if c in names]
    cells = read_parquet(inp.cells, columns=cols)
    figures = Figures()
    sections = [
        overview_section(images, len(cells), inp.histories, metrics),
        summary_section(metrics),
        labels_section(images, catalog, figures),
        training_section(inp.histories, figures, fusion_rule(merge) if merge else ""),
        per_class_section(metrics, catalog, figures),
        confusion_section(cells, images, catalog, figures),
        umap_section(cells, inp.h5ad, catalog, options.umap_cells, figures),
        segmentation_section(images, inp.zarr_stores, options.overlays, options.max_rejected, figures),
        gallery_section(cells, inp.tile_stores, catalog, options.gallery_per_class),
        rejected_section(images, inp.rejected, options.max_rejected),
        provenance_section(inp.config, inp.workdir),
    ]
    name = html.escape(name or str(inp.config.get("dataset", {}).get("name", "run")))
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>hpa_batch report: {name}</title>'
        f"<style>{CSS}</style></head><body><h1>hpa_batch report: {name}</h1>"
        f'<p class="note">{len(images)} images, {len(cells)} cells, {catalog.name} catalog</p>'
        f"<nav>{nav}</nav>{''.join(sections)}<script>{SORT_JS}</script></body></html>"
    )
    atomic_write_text(out, doc)
    if figures_dir is not None:
        figures.write(figures_dir)
    return out


__all__ = [
    "SECTIONS",
    "Figures",
    "ReportInputs",
    "build_report",
    "confusion_matrix",
    "find_browser",
    "git_revision",
    "package_versions",
    "qc_ranking",
    "screenshot",
    "segmentation_section",
]
