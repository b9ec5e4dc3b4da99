"""The argument parser of ``hpa-batch``: one sub-command per verb, each set to its function in
:mod:`hpa_batch.cli.verbs`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpa_batch import __version__
from hpa_batch.cli.stores import cmd_info, cmd_repair, cmd_validate
from hpa_batch.cli.verbs import (
    cmd_baseline,
    cmd_convert,
    cmd_embed,
    cmd_evaluate,
    cmd_h5ad,
    cmd_manifest,
    cmd_measure,
    cmd_merge,
    cmd_plan,
    cmd_predict,
    cmd_qc,
    cmd_report,
    cmd_segment,
    cmd_spatialdata,
    cmd_split,
    cmd_submit,
    cmd_synth,
    cmd_tiles,
    cmd_train,
)
from hpa_batch.layout import RESULTS as _R_TEMPLATES

_R = {k: f"results/{v}" for k, v in _R_TEMPLATES.items()}  # help texts: the default paths


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (e.g. config/config.yaml)")
    p.add_argument("--config-json", help="JSON object merged over --config (used by Snakemake rules)")


def _tables_verb(sub: argparse._SubParsersAction, name: str, help_: str, func: object) -> argparse.ArgumentParser:
    """A verb reading (or writing) the merged tables: config options, ``--cells``, ``--images``."""
    p = sub.add_parser(name, help=help_)
    _add_config_args(p)
    p.add_argument("--cells", type=Path, help=f"default {_R['cells_table']}")
    p.add_argument("--images", type=Path, help=f"default {_R['images_table']}")
    p.set_defaults(func=func)
    return p


def _shard_verb(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    """A per-shard stage verb: config arguments, ``--shard`` and ``--store``."""
    p = sub.add_parser(name, help=help_)
    _add_config_args(p)
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003 (hpa-batch plan lists them)")
    p.add_argument("--store", type=Path, help=f"the shard's zarr store (default: {_R['store']})")
    return p


def _held_out_args(p: argparse.ArgumentParser) -> None:
    """``--trained-folds`` / ``--all-unseen``: which images no model of the run trained on."""
    p.add_argument(
        "--trained-folds",
        nargs="*",
        type=int,
        help="folds trained in this run by the models feeding the tables (default: from the config)",
    )
    p.add_argument("--all-unseen", action="store_true", help="every such model was trained by another run")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hpa-batch`` with all verbs."""
    parser = argparse.ArgumentParser(
        prog="hpa-batch",
        description="hpa-batch: one verb per pipeline stage; every stage runs with or without Snakemake.",
    )
    parser.add_argument("--version", action="version", version=f"hpa-batch {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug log lines, and a traceback on errors")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synth", help="write a synthetic dataset in the HPA layout (+ ground truth)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder: images/, train.csv, truth/")
    p.add_argument("--n-images", type=int, required=True, help="images to draw")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same dataset)")
    p.add_argument("--sizes", help="comma-separated image sides (default 1728,2048,3072; 512 with --labels hpa2018)")
    p.add_argument("--cell-lines", help="comma-separated cell line names")
    p.add_argument("--format", choices=["png", "tif", "jpg"], default="png", help="image file format")
    p.add_argument(
        "--labels",
        choices=["hpa2021", "hpa2018"],
        default="hpa2021",
        help="hpa2018 writes that set's layout: 8-bit PNGs, train.csv Id,Target (space-separated), no cell-line column",
    )
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument(
        "--style",
        default="standard",
        help="comma-separated image styles cycled over the images (standard, dots, dim, crowded, "
        "large, small, nuclear-ratio, uneven, saturated, mitotic, vary; 'all' = every one but "
        "standard)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("plan", help="print the shard plan of a config")
    _add_config_args(p)
    p.add_argument(
        "--format", choices=["table", "json", "names"], default="table", help="a table, JSON, or one name per line"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("manifest", help="check a shard's images and write its manifest + refusals")
    _add_config_args(p)
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003 (hpa-batch plan lists them)")
    p.add_argument("--out", type=Path, help="manifest parquet")
    p.add_argument("--rejected", type=Path, help="refused-images TSV")
    p.add_argument("--expect-digest", help="fail if the shard's rows no longer hash to this")
    p.set_defaults(func=cmd_manifest)

    p = _shard_verb(sub, "convert", "convert a shard to OME-Zarr (runs the manifest if missing)")
    p.add_argument("--manifest", type=Path, help=f"the shard's manifest (default {_R['manifest']}; made if missing)")
    p.add_argument(
        "--manifest-rejected", type=Path, help=f"the manifest's refusals (default {_R['manifest_rejected']})"
    )
    p.add_argument("--rejected", type=Path, help=f"refusals of the shard (default {_R['rejected']})")
    p.add_argument("--summary", type=Path, help=f"completion record (default {_R['convert_summary']})")
    p.add_argument("--threads", type=int, default=1, help="images converted at once")
    p.set_defaults(func=cmd_convert)

    p = _shard_verb(sub, "segment", "segment cells and nuclei of a converted shard (labels in the store)")
    p.add_argument("--qc", type=Path, help="per-image segmentation QC TSV")
    p.add_argument("--summary", type=Path, help=f"completion record (default {_R['segment_summary']})")
    p.add_argument("--threads", type=int, default=1, help="images segmented at once")
    p.set_defaults(func=cmd_segment)

    p = _shard_verb(sub, "measure", "per-cell table of a segmented shard")
    p.add_argument("--manifest", type=Path, help=f"the shard's manifest (default {_R['manifest']})")
    p.add_argument("--segment-qc", type=Path, help="qc/{shard}.segment.tsv (doubtful images)")
    p.add_argument("--out", type=Path, help="cells parquet")
    p.set_defaults(func=cmd_measure)

    p = _shard_verb(sub, "tiles", "packed cell tiles + whole-image inputs of a measured shard")
    p.add_argument("--cells", type=Path, help="cells parquet")
    p.add_argument("--out", type=Path, help="tile store (.zarr)")
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser("split", help="multilabel-stratified folds of all admitted images")
    _add_config_args(p)
    p.add_argument("--manifests", nargs="*", type=Path, help="every shard's manifest (default: the plan's)")
    p.add_argument("--rejected", nargs="*", type=Path, help="qc/{shard}.rejected.tsv: refused images are left out")
    p.add_argument(
        "--segment-qc",
        nargs="*",
        type=Path,
        help="qc/{shard}.segment.tsv: doubtful images get fold -2 (segmentation_qc.doubtful)",
    )
    p.add_argument(
        "--metadata", type=Path, help="the metadata table with splits.group_column (default: dataset.metadata)"
    )
    p.add_argument("--out", type=Path, help=f"default {_R['splits']}")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train one configured model on one fold (resumes if interrupted)")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--fold", type=int, required=True, help="the fold held out for validation")
    p.add_argument("--splits", type=Path, help=f"default {_R['splits']}")
    p.add_argument(
        "--tiles",
        "--embeddings",
        dest="tiles",
        nargs="*",
        type=Path,
        help="tile stores, or for a head on an encoder (encoder: set) its embedding stores (default: every planned shard)",
    )
    p.add_argument("--out", type=Path, help=f"the fold's folder (default {_R['fold_dir']})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="per-cell / per-image probabilities of a model for one shard")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003")
    p.add_argument("--models", nargs="*", type=Path, help="fold checkpoints (model.pt)")
    p.add_argument(
        "--tiles",
        "--embeddings",
        dest="tiles",
        type=Path,
        help=f"the shard's tile store (default {_R['tiles']}) or, for a head, embedding store ({_R['embeddings']})",
    )
    p.add_argument("--out", type=Path, help=f"default {_R['predictions']}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("embed", help="one frozen encoder's embedding of every cell of one shard")
    _add_config_args(p)
    p.add_argument("--encoder", required=True, help="name of an entry of `encoders` in the config")
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003")
    p.add_argument("--tiles", type=Path, help=f"the shard's tile store (default {_R['tiles']})")
    p.add_argument("--store", type=Path, help=f"crop.source image: the shard's store (default {_R['store']})")
    p.add_argument("--cells", type=Path, help=f"crop.source image: the shard's cells table (default {_R['cells']})")
    p.add_argument("--out", type=Path, help=f"default {_R['embeddings']}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_embed)

    # Global verbs read what they are given; anything not given comes from the config and hpa_batch.layout.
    # A list option given with no value means "none" (e.g. no cell-level model).
    p = _tables_verb(
        sub,
        "merge",
        f"merge every shard into {_R['cells_table']} / {_R['images_table']} (--cells and --images are the outputs)",
        cmd_merge,
    )
    p.add_argument("--splits", type=Path, help=f"default {_R['splits']}")
    for flag in (
        "manifests",
        "rejected",
        "segment-qc",
        "shard-cells",
        "cell-predictions",
        "image-predictions",
        "cell-thresholds",
        "image-thresholds",
        "stores",
    ):
        p.add_argument(f"--{flag}", nargs="*", type=Path, help="one file per shard / fold (default: the plan's)")
    p.add_argument(
        "--truth-pairs",
        type=Path,
        help=f"output: the cells' truth matches, computed once (default {_R['truth_pairs']})",
    )

    p = _tables_verb(
        sub, "evaluate", "metrics of a run (image F1/AP; instance mAP@0.6 with per-cell truth)", cmd_evaluate
    )
    p.add_argument("--baseline", type=Path, help="the baseline's cells.parquet")
    p.add_argument("--baseline-summary", type=Path, help=f"its summary.json (default {_R['baseline_summary']})")
    p.add_argument("--out", type=Path, help=f"metrics JSON (default {_R['metrics']})")
    _held_out_args(p)
    p.add_argument("--truth-pairs", type=Path, help=f"the merge's truth matches (default {_R['truth_pairs']})")
    p.add_argument(
        "--compare",
        nargs="*",
        type=Path,
        help="cell predictions of the models to compare on the same cells, every shard of each "
        f"({_R['predictions']}; default: every cell-level model's when there are two or more)",
    )

    p = _tables_verb(sub, "report", f"{_R['report']}: figures, metrics deep vs baseline, provenance", cmd_report)
    p.add_argument("--out", type=Path, help=f"default {_R['report']}")
    p.add_argument("--figures", type=Path, help="also write its figures as PNG files in this folder")
    p.add_argument("--screenshot", type=Path, help="also render it in headless Chromium to this PNG")
    p.add_argument("--metrics", type=Path, help=f"default {_R['metrics']}")
    p.add_argument("--qc", type=Path, help=f"{_R['qc_table']}")
    p.add_argument("--baseline", nargs="*", type=Path, help="the baseline's cells.parquet (none given: no baseline)")
    p.add_argument("--histories", nargs="*", type=Path, help="training history.csv files (default: the config's)")
    p.add_argument("--tiles", nargs="*", type=Path, help="tile stores, for cell crops (default: the plan's)")
    p.add_argument("--stores", nargs="*", type=Path, help="shard stores, for overlays (default: the plan's)")
    p.add_argument("--run-config", help="JSON of the whole run's config, shown under provenance")
    p.add_argument("--h5ad", type=Path, help=f"{_R['cells_h5ad']}, for the UMAP (default: it, if there)")

    p = _tables_verb(sub, "baseline", "scikit-learn classifier on the hand-crafted cell features", cmd_baseline)
    p.add_argument("--out", type=Path, help=f"per-cell probabilities (default {_R['baseline_cells']})")
    p.add_argument("--threads", type=int, help="cores to use (overrides baseline.n_jobs; Snakemake passes its grant)")
    p.add_argument("--predictions", nargs="*", type=Path, help="the cell model's predictions (embeddings)")
    p.add_argument("--summary", type=Path, help=f"default {_R['baseline_summary']}")
    p.add_argument("--model-out", type=Path, help=f"default {_R['baseline_model']}")
    _held_out_args(p)

    p = _tables_verb(sub, "h5ad", f"{_R['cells_table']} as AnnData ({_R['cells_h5ad']}), shard by shard", cmd_h5ad)
    p.add_argument("--out", type=Path, help=f"default {_R['cells_h5ad']}")
    p.add_argument(
        "--embeddings", nargs="+", type=Path, help="the cell model's predictions with embeddings, one per shard"
    )
    p.add_argument("--embedding-key", default="X_cell_model", help="their obsm key (X_<model>)")
    p.add_argument(
        "--encoder-stores",
        nargs="*",
        type=Path,
        help=f"embedding stores of foundation encoders ({_R['embeddings']}), every shard of each: obsm X_<encoder>",
    )

    p = _shard_verb(
        sub,
        "spatialdata",
        f"the shard as a SpatialData store ({_R['spatialdata']}): images and labels linked, not copied, "
        "and its cells table annotating the cells labels",
    )
    p.add_argument("--cells", type=Path, help=f"the merged cells table (default {_R['cells_table']})")
    p.add_argument("--embeddings", type=Path, help="the cell model's predictions of this shard, with embeddings")
    p.add_argument("--embedding-key", default="X_cell_model", help="their obsm key (X_<model>)")
    p.add_argument("--out", type=Path, help=f"default {_R['spatialdata']}")
    p.set_defaults(func=cmd_spatialdata)

    p = sub.add_parser(
        "submit",
        help="Kaggle submission: HPA 2021 (COCO RLE masks, from cell predictions) or, "
        "with --images, HPA 2018 (Id,Predicted per image)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--cells",
        type=Path,
        help=f"merged {_R['cells_table']}: submits its fused_prob_* (what metrics.json scores)",
    )
    src.add_argument("--predictions", nargs="+", type=Path, help="cell prediction parquet files (prob_*)")
    src.add_argument(
        "--images", type=Path, help=f"merged {_R['images_table']}: the 2018 task's Id,Predicted (image labels)"
    )
    p.add_argument(
        "--stores", nargs="*", type=Path, default=[], help="shard zarr stores with labels/cells (2021 format)"
    )
    p.add_argument("--catalog", default="hpa2021", help="label catalog (its class count)")
    p.add_argument("--min-confidence", type=float, default=0.0, help="leave out cell labels below this confidence")
    p.add_argument("--out", type=Path, required=True, help="submission CSV")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "validate",
        help="check outputs (PATH: the results folder, walked whole, or one store / table / checkpoint) or, "
        "without PATH, the configured dataset",
    )
    _add_config_args(p)
    p.add_argument("path", nargs="?", type=Path, help="results folder, a store, an image group or one output file")
    p.add_argument(
        "--deep", action="store_true", help="decode everything: every chunk, parquet page, pyramid level, checkpoint"
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "repair",
        help="remove what validate --deep finds damaged under PATH (a results folder, a store or a file; in an "
        "image store only the damaged images / labels and the stage outputs that claim them done) and print the "
        "command that redoes exactly those and what follows",
    )
    _add_config_args(p)  # the config's results_dir is a results tree even before a workflow marked it
    p.add_argument("path", type=Path, help="results folder, results/zarr/{shard}.zarr, a tile store or one file")
    p.add_argument("--dry-run", "-n", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("info", help="what a store (or image group) holds")
    p.add_argument("path", type=Path, help="a shard store (results/zarr/<shard>.zarr) or one image group in it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=10, help="images listed at most")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("qc", help="merge shard refusal tables and print the summary")
    p.add_argument("inputs", nargs="*", type=Path, help="qc/{shard}.rejected.tsv files")
    p.add_argument("--out", type=Path, required=True, help=f"merged table ({_R['qc_table']})")
    p.set_defaults(func=cmd_qc)
    return parser
