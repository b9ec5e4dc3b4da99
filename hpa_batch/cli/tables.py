"""The verbs over the merged tables of ``hpa-batch`` (merge, evaluate, report, baseline, h5ad,
spatialdata, submit): each verb's parser beside the function that runs it. They read what they are
given; anything not given comes from the config and :mod:`hpa_batch.layout`. A list option given with
no value means "none" (e.g. no cell-level model)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpa_batch.cli.common import R, config_of, held_out_args, shard_verb, tables_verb, writes
from hpa_batch.config import Config
from hpa_batch.convert.plan import PlanError
from hpa_batch.core.atomic import json_text
from hpa_batch.layout import (
    HISTORY_FILE,
    THRESHOLDS_FILE,
    fold_files,
    predictions_file,
    result,
    shard_of,
)
from hpa_batch.spec import Level, ModelSpec

if TYPE_CHECKING:
    from hpa_batch.results.h5ad import Embeddings


def _pick_model(cfg: Config, level: Level) -> ModelSpec | None:
    try:
        return cfg.merged_model(level)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None


def _per_shard(cfg: Config, given: list[Path] | None, key: str, **fields: object) -> dict[str, Path]:
    """shard -> file: the files given (named by shard), or every planned shard's ``key`` file."""
    from hpa_batch.convert.plan import plan_from_config

    if given is None:
        return {s.name: result(cfg.results_dir, key, shard=s.name, **fields) for s in plan_from_config(cfg)}
    return {shard_of(p): Path(p) for p in given}


def _model_files(cfg: Config, given: list[Path] | None, level: Level, name: str) -> list[Path] | None:
    """Fold files (``thresholds.json``) of the model feeding ``level``: as given (``[]`` = no such
    model), else from the config; None when there is no such model."""

    if given is not None:
        return list(given) or None
    spec = _pick_model(cfg, level)
    return fold_files(cfg.results_dir, spec, name) if spec else None


def _predictions(cfg: Config, given: list[Path] | None, level: Level) -> dict[str, Path] | None:
    """shard -> predictions of the model feeding ``level`` (given, ``[]`` = none, else the config's)."""
    if given is not None:
        return _per_shard(cfg, given, "predictions") if given else None
    spec = _pick_model(cfg, level)
    return _per_shard(cfg, None, "predictions", model=spec.name) if spec else None


def _held_out_of(cfg: Config, args: argparse.Namespace) -> tuple[list[int], bool]:
    """Trained folds and all-unseen flag: as given (``--trained-folds``), else from the config."""

    if args.trained_folds is not None:
        return list(args.trained_folds), bool(args.all_unseen)
    return cfg.trained_folds()


def _existing(path: Path) -> Path | None:
    return path if Path(path).is_file() else None


def _compared(cfg: Config, given: list[Path] | None) -> list[Path]:
    """Prediction files of the models compared on the same cells: given (``[]`` = none), else every
    cell-level model's, every shard, when the run has two or more (:func:`compared_models`)."""
    if given is not None:
        return list(given)
    from hpa_batch.convert.plan import plan_from_config

    shards = [s.name for s in plan_from_config(cfg)]
    return [predictions_file(cfg.results_dir, m.name, s) for m in cfg.compared_models() for s in shards]


def _embeddings(args: argparse.Namespace) -> Embeddings:
    """The embeddings a table verb was given: the cell model's predictions (``--embeddings``, one per
    shard, obsm ``--embedding-key``) and encoder stores (``--encoder-stores``: ``results/embeddings/
    {encoder}/{shard}.zarr``, their folder names the encoder)."""
    from hpa_batch.results.h5ad import Embeddings

    stores: dict[str, dict[str, Path]] = {}
    for path in args.encoder_stores or []:
        stores.setdefault(Path(path).parent.name, {})[shard_of(path)] = Path(path)
    predictions = {shard_of(p): Path(p) for p in args.embeddings} if args.embeddings else None
    return Embeddings(predictions=predictions, key=args.embedding_key, encoders=stores)


def embedding_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--embeddings``, ``--embedding-key`` and ``--encoder-stores`` (``what``: which shards)."""
    p.add_argument("--embeddings", nargs="+", type=Path, help=f"the cell model's predictions with embeddings, {what}")
    p.add_argument("--embedding-key", default="X_cell_model", help="their obsm key (X_<model>)")
    p.add_argument(
        "--encoder-stores",
        nargs="*",
        type=Path,
        help=f"embedding stores of foundation encoders ({R['embeddings']}), {what}: obsm X_<encoder>",
    )


def cmd_merge(args: argparse.Namespace) -> int:
    from hpa_batch.results.merge import ShardInputs, merge_stage

    cfg = config_of(args)
    r = cfg.results_dir
    out_cells, out_images = args.cells or result(r, "cells_table"), args.images or result(r, "images_table")
    out_pairs = args.truth_pairs or result(r, "truth_pairs")
    writes(args, out_cells, out_images, out_pairs)
    manifests = _per_shard(cfg, args.manifests, "manifest")
    rejected = _per_shard(cfg, args.rejected, "rejected")
    segment_qc = _per_shard(cfg, args.segment_qc, "segment_qc")
    cells = _per_shard(cfg, args.shard_cells, "cells")
    cell_pred = _predictions(cfg, args.cell_predictions, "cell")
    image_pred = _predictions(cfg, args.image_predictions, "image")
    shards = [
        ShardInputs(
            s,
            manifests[s],
            rejected[s],
            segment_qc[s],
            cells[s],
            cell_pred[s] if cell_pred else None,
            image_pred[s] if image_pred else None,
        )
        for s in manifests
    ]
    merge_stage(
        shards,
        args.splits or result(r, "splits"),
        cfg.catalog,
        cfg.merge,
        cell_thresholds=_model_files(cfg, args.cell_thresholds, "cell", THRESHOLDS_FILE),
        image_thresholds=_model_files(cfg, args.image_thresholds, "image", THRESHOLDS_FILE),
        truth_dir=cfg.evaluation.truth_dir,
        stores=list(_per_shard(cfg, args.stores, "store").values()),
        out_cells=out_cells,
        out_images=out_images,
        out_truth_pairs=out_pairs,
    )
    return 0


def add_merge(sub: argparse._SubParsersAction) -> None:
    """The ``merge`` verb's arguments."""
    p = tables_verb(
        sub,
        "merge",
        f"merge every shard into {R['cells_table']} / {R['images_table']} (--cells and --images are the outputs)",
        cmd_merge,
    )
    p.add_argument("--splits", type=Path, help=f"default {R['splits']}")
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
        help=f"output: the cells' truth matches, computed once (default {R['truth_pairs']})",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpa_batch.results.evaluate import evaluate_stage

    cfg = config_of(args)
    r = cfg.results_dir
    out = args.out or result(r, "metrics")
    writes(args, out)
    folds, all_unseen = _held_out_of(cfg, args)
    metrics = evaluate_stage(
        args.cells or result(r, "cells_table"),
        args.images or result(r, "images_table"),
        args.truth_pairs or result(r, "truth_pairs"),
        cfg.catalog,
        cfg.evaluation,
        labelled=cfg.dataset.label_column is not None,
        trained_folds=set(folds),
        all_unseen=all_unseen,
        out=out,
        baseline_path=args.baseline or None,
        baseline_summary=(args.baseline_summary or result(r, "baseline_summary")) if args.baseline else None,
        compare=_compared(cfg, args.compare),
    )
    print(json_text({k: v for k, v in metrics.items() if not isinstance(v, dict)}))
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """The ``evaluate`` verb's arguments."""
    p = tables_verb(
        sub, "evaluate", "metrics of a run (image F1/AP; instance mAP@0.6 with per-cell truth)", cmd_evaluate
    )
    p.add_argument("--baseline", type=Path, help="the baseline's cells.parquet")
    p.add_argument("--baseline-summary", type=Path, help=f"its summary.json (default {R['baseline_summary']})")
    p.add_argument("--out", type=Path, help=f"metrics JSON (default {R['metrics']})")
    held_out_args(p)
    p.add_argument("--truth-pairs", type=Path, help=f"the merge's truth matches (default {R['truth_pairs']})")
    p.add_argument(
        "--compare",
        nargs="*",
        type=Path,
        help="cell predictions of the models to compare on the same cells, every shard of each "
        f"({R['predictions']}; default: every cell-level model's when there are two or more)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from hpa_batch.results.report import ReportInputs, build_report

    cfg = config_of(args)
    r = cfg.results_dir
    report_out = args.out or result(r, "report")
    writes(args, report_out)
    histories = (
        args.histories
        if args.histories is not None
        else [p for m in cfg.models for p in fold_files(r, m, HISTORY_FILE)]
    )
    baseline = (
        (args.baseline[0] if args.baseline else None) if args.baseline is not None else result(r, "baseline_cells")
    )
    rejected = args.qc or result(r, "qc_table")
    run_config = json.loads(args.run_config) if args.run_config else cfg.raw
    inp = ReportInputs(
        cells=args.cells or result(r, "cells_table"),
        images=args.images or result(r, "images_table"),
        metrics=args.metrics or result(r, "metrics"),
        baseline=baseline if baseline and Path(baseline).is_file() else None,
        histories=list(histories),
        tile_stores=list(_per_shard(cfg, args.tiles, "tiles").values()),
        zarr_stores=list(_per_shard(cfg, args.stores, "store").values()),
        rejected=rejected if rejected.is_file() else None,
        config=run_config,
        workdir=Path.cwd(),
        h5ad=_existing(args.h5ad or result(r, "cells_h5ad")),
    )
    if args.figures:
        writes(args, args.figures)
    out = build_report(
        inp, cfg.catalog, cfg.report, report_out, figures_dir=args.figures, name=cfg.dataset.name, merge=cfg.merge
    )
    print(out)
    if args.screenshot:
        from hpa_batch.results.report import screenshot

        print(screenshot(out, args.screenshot))
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    """The ``report`` verb's arguments."""
    p = tables_verb(sub, "report", f"{R['report']}: figures, metrics deep vs baseline, provenance", cmd_report)
    p.add_argument("--out", type=Path, help=f"default {R['report']}")
    p.add_argument("--figures", type=Path, help="also write its figures as PNG files in this folder")
    p.add_argument("--screenshot", type=Path, help="also render it in headless Chromium to this PNG")
    p.add_argument("--metrics", type=Path, help=f"default {R['metrics']}")
    p.add_argument("--qc", type=Path, help=f"{R['qc_table']}")
    p.add_argument("--baseline", nargs="*", type=Path, help="the baseline's cells.parquet (none given: no baseline)")
    p.add_argument("--histories", nargs="*", type=Path, help="training history.csv files (default: the config's)")
    p.add_argument("--tiles", nargs="*", type=Path, help="tile stores, for cell crops (default: the plan's)")
    p.add_argument("--stores", nargs="*", type=Path, help="shard stores, for overlays (default: the plan's)")
    p.add_argument("--run-config", help="JSON of the whole run's config, shown under provenance")
    p.add_argument("--h5ad", type=Path, help=f"{R['cells_h5ad']}, for the UMAP (default: it, if there)")


def cmd_baseline(args: argparse.Namespace) -> int:
    from hpa_batch.results.baseline import baseline_stage

    cfg = config_of(args)
    r = cfg.results_dir
    out = args.out or result(r, "baseline_cells")
    writes(args, out)
    folds, all_unseen = _held_out_of(cfg, args)
    summary = baseline_stage(
        Path(args.cells or result(r, "cells_table")),
        Path(args.images or result(r, "images_table")),
        cfg.catalog,
        dataclasses.replace(cfg.baseline, n_jobs=args.threads) if args.threads else cfg.baseline,
        out,
        trained_folds=set(folds),
        all_unseen=all_unseen,
        predictions=_predictions(cfg, args.predictions, "cell") if cfg.baseline.embeddings else None,
        summary_out=args.summary or result(r, "baseline_summary"),
        model_out=args.model_out or result(r, "baseline_model"),
    )
    print(json_text({k: v for k, v in summary.items() if k not in ("features", "thresholds")}))
    return 0


def add_baseline(sub: argparse._SubParsersAction) -> None:
    """The ``baseline`` verb's arguments."""
    p = tables_verb(sub, "baseline", "scikit-learn classifier on the hand-crafted cell features", cmd_baseline)
    p.add_argument("--out", type=Path, help=f"per-cell probabilities (default {R['baseline_cells']})")
    p.add_argument("--threads", type=int, help="cores to use (overrides baseline.n_jobs; Snakemake passes its grant)")
    p.add_argument("--predictions", nargs="*", type=Path, help="the cell model's predictions (embeddings)")
    p.add_argument("--summary", type=Path, help=f"default {R['baseline_summary']}")
    p.add_argument("--model-out", type=Path, help=f"default {R['baseline_model']}")
    held_out_args(p)


def cmd_h5ad(args: argparse.Namespace) -> int:
    from hpa_batch.results.h5ad import write_cells_h5ad

    cfg = config_of(args)
    out = args.out or result(cfg.results_dir, "cells_h5ad")
    writes(args, out)
    n = write_cells_h5ad(
        args.cells or result(cfg.results_dir, "cells_table"),
        out,
        cfg.catalog,
        embeddings=_embeddings(args),
        umap_cells=cfg.h5ad.umap_cells,
    )
    print(f"{n} cells -> {out}")
    return 0


def add_h5ad(sub: argparse._SubParsersAction) -> None:
    """The ``h5ad`` verb's arguments."""
    p = tables_verb(sub, "h5ad", f"{R['cells_table']} as AnnData ({R['cells_h5ad']}), shard by shard", cmd_h5ad)
    p.add_argument("--out", type=Path, help=f"default {R['cells_h5ad']}")
    embedding_args(p, "every shard")


def cmd_spatialdata(args: argparse.Namespace) -> int:
    from hpa_batch.results.spatialdata import write_spatialdata

    cfg = config_of(args)
    r = cfg.results_dir
    out = args.out or result(r, "spatialdata", shard=args.shard)
    writes(args, out)
    counts = write_spatialdata(
        store=args.store or result(r, "store", shard=args.shard),
        cells_table=args.cells or result(r, "cells_table"),
        shard=args.shard,
        out=out,
        catalog=cfg.catalog,
        embeddings=_embeddings(args),
        h5ad=args.h5ad,
    )
    print(f"{counts['images']} images, {counts['cells']} cells -> {out}")
    return 0


def add_spatialdata(sub: argparse._SubParsersAction) -> None:
    """The ``spatialdata`` verb's arguments."""
    p = shard_verb(
        sub,
        "spatialdata",
        f"the shard as a SpatialData store ({R['spatialdata']}): images and labels linked, not copied, "
        "and its cells table annotating the cells labels",
    )
    p.add_argument("--cells", type=Path, help=f"the merged cells table (default {R['cells_table']})")
    p.add_argument("--h5ad", type=Path, help=f"{R['cells_h5ad']}: the table's X_umap rows come from it")
    embedding_args(p, "of this shard")
    p.add_argument("--out", type=Path, help=f"default {R['spatialdata']}")
    p.set_defaults(func=cmd_spatialdata)


def cmd_submit(args: argparse.Namespace) -> int:
    from hpa_batch.results.submit import (
        table_predictions,
        write_image_submission,
        write_submission,
    )

    writes(args, args.out)
    if args.images:
        n = write_image_submission(args.images, args.out)
        print(f"{n} images -> {args.out}")
        return 0
    if not args.stores:
        raise SystemExit("submit: --stores is required for the 2021 format (cell masks)")

    from hpa_batch.core.labels import get_catalog

    n_classes = get_catalog(args.catalog).n_classes
    source = table_predictions(args.cells, n_classes) if args.cells else list(args.predictions)
    n = write_submission(source, list(args.stores), args.out, n_classes, min_confidence=args.min_confidence)
    print(f"{n} images -> {args.out}")
    return 0


def add_submit(sub: argparse._SubParsersAction) -> None:
    """The ``submit`` verb's arguments."""
    p = sub.add_parser(
        "submit",
        help="Kaggle submission: HPA 2021 (COCO RLE masks, from cell predictions) or, "
        "with --images, HPA 2018 (Id,Predicted per image)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--cells",
        type=Path,
        help=f"merged {R['cells_table']}: submits its fused_prob_* (what metrics.json scores)",
    )
    src.add_argument("--predictions", nargs="+", type=Path, help="cell prediction parquet files (prob_*)")
    src.add_argument(
        "--images", type=Path, help=f"merged {R['images_table']}: the 2018 task's Id,Predicted (image labels)"
    )
    p.add_argument(
        "--stores", nargs="*", type=Path, default=[], help="shard zarr stores with labels/cells (2021 format)"
    )
    p.add_argument("--catalog", default="hpa2021", help="label catalog (its class count)")
    p.add_argument("--min-confidence", type=float, default=0.0, help="leave out cell labels below this confidence")
    p.add_argument("--out", type=Path, required=True, help="submission CSV")
    p.set_defaults(func=cmd_submit)


VERBS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_merge,
    add_evaluate,
    add_report,
    add_baseline,
    add_h5ad,
    add_spatialdata,
    add_submit,
)
"""This module's verbs, in the order ``hpa-batch --help`` lists them."""
