"""``hpa-batch``: one verb per pipeline stage; every stage runs with or without Snakemake.

Stage verbs take ``--config FILE`` (the YAML the user edits) and/or ``--config-json STR`` (a partial
config merged on top; Snakemake rules pass the config subset the stage reads so a job reruns exactly
when that subset changes). Paths not given default to the contract under ``results_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hpa_batch import __version__
from hpa_batch.config import Config, ConfigError, check_unlabelled, load_config
from hpa_batch.convert.plan import PlanError
from hpa_batch.core.damage import DamagedFileError, UnsafeCheckpointError, printable
from hpa_batch.core.driver import default_signals
from hpa_batch.core.locks import OutputLockError, release_all
from hpa_batch.core.progress import get_logger
from hpa_batch.layout import (
    HISTORY_FILE,
    THRESHOLDS_FILE,
    fold_files,
    predictions_file,
    result,
    shard_of,
)
from hpa_batch.layout import RESULTS as _R_TEMPLATES
from hpa_batch.spec import Level, ModelSpec

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


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.config_json)


def _writes(args: argparse.Namespace, *outputs: Path | str) -> None:
    """Take the exclusive lock of each output this verb writes (refused if another job holds one).

    Under torchrun only rank 0 takes them: every rank of one training is the same job.
    """
    from hpa_batch.core.locks import hold

    args.outputs_ = [*getattr(args, "outputs_", []), *map(Path, outputs)]  # named if the disk fills up
    if os.environ.get("RANK", "0") != "0":
        return
    for out in outputs:
        hold(out, what=f"hpa-batch {args.verb}")


def _paths(cfg: Config, shard: str) -> dict[str, Path]:
    """The per-shard files of ``shard`` (hpa_batch.layout.RESULTS keys)."""

    keys = (
        "manifest",
        "manifest_rejected",
        "store",
        "rejected",
        "convert_summary",
        "segment_qc",
        "segment_summary",
        "cells",
        "tiles",
    )
    return {k: result(cfg.results_dir, k, shard=shard) for k in keys}


def cmd_synth(args: argparse.Namespace) -> int:
    from hpa_batch.synth import parse_styles, synthesize_dataset

    the_2018_set = args.labels == "hpa2018"  # that set's layout: 512 px 8-bit PNGs, Id,Target
    sizes = args.sizes or ("512" if the_2018_set else "1728,2048,3072")
    summary = synthesize_dataset(
        args.out,
        args.n_images,
        args.seed,
        sizes=[int(s) for s in sizes.split(",")],
        cell_lines=args.cell_lines.split(",") if args.cell_lines else None,
        fmt=args.format,
        catalog=args.labels,
        workers=args.workers,
        styles=parse_styles(args.style),
        depth=8 if the_2018_set else 16,
        table=args.labels,
    )
    print(f"wrote {len(summary.ids)} images ({summary.n_cells} cells) to {summary.images_dir}")
    print(f"metadata: {summary.metadata}\nground truth: {summary.truth_dir}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from hpa_batch.convert.plan import plan_from_config

    shards = plan_from_config(_cfg(args))
    if args.format == "json":
        print(json.dumps([s.__dict__ for s in shards], indent=1))
    elif args.format == "names":
        print("\n".join(s.name for s in shards))
    else:
        print(f"{'shard':<28}{'cell line':<20}{'images':>7}  digest")
        for s in shards:
            print(f"{s.name:<28}{s.cell_line:<20}{len(s.ids):>7}  {s.digest}")
        print(f"{len(shards)} shard(s), {sum(len(s.ids) for s in shards)} image(s)")
    return 0


def _run_manifest(cfg: Config, shard_name: str, out: Path, rejected: Path, expect: str | None) -> int:
    from hpa_batch.convert.manifest import build_manifest, write_manifest
    from hpa_batch.convert.plan import find_shard

    shard, meta = find_shard(cfg, shard_name)
    if expect and shard.digest != expect:
        raise SystemExit(
            f"shard {shard_name}: metadata changed since the workflow was planned "
            f"(digest {shard.digest} != {expect}); rerun snakemake"
        )
    manifest = build_manifest(cfg, shard, meta)
    write_manifest(manifest, out, rejected)
    get_logger().info(
        "manifest %s: %d admitted, %d refused (%s)",
        shard_name,
        len(manifest.admitted),
        len(manifest.rejected),
        rejected,
    )
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    _writes(args, args.out or p["manifest"])
    return _run_manifest(
        cfg,
        args.shard,
        args.out or p["manifest"],
        args.rejected or p["manifest_rejected"],
        args.expect_digest,
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from hpa_batch.convert.stage import convert_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    manifest = args.manifest or p["manifest"]
    manifest_rejected = args.manifest_rejected or p["manifest_rejected"]
    _writes(args, args.store or p["store"])
    if not manifest.is_file():
        _writes(args, manifest)
        _run_manifest(cfg, args.shard, manifest, manifest_rejected, None)
    convert_shard(
        cfg,
        manifest,
        manifest_rejected,
        args.store or p["store"],
        rejected_out=args.rejected or p["rejected"],
        summary_out=args.summary or p["convert_summary"],
        threads=args.threads,
    )
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from hpa_batch.cells.segment.stage import segment_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    _writes(args, args.store or p["store"])
    segment_shard(
        cfg,
        args.store or p["store"],
        args.qc or p["segment_qc"],
        args.summary or p["segment_summary"],
        threads=args.threads,
    )
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from hpa_batch.cells.measure import measure_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    _writes(args, args.out or p["cells"])
    measure_shard(
        cfg,
        args.store or p["store"],
        args.manifest or p["manifest"],
        args.out or p["cells"],
        args.segment_qc or p["segment_qc"],
    )
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    from hpa_batch.cells.tiles import tiles_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    _writes(args, args.out or p["tiles"])
    tiles_shard(cfg, args.store or p["store"], args.cells or p["cells"], args.out or p["tiles"])
    return 0


def _model_spec(cfg: Config, name: str) -> ModelSpec:
    try:
        return cfg.model(name)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None


def _tile_stores(cfg: Config, given: list[Path] | None) -> list[Path]:
    if given:
        return list(given)
    from hpa_batch.convert.plan import plan_from_config

    return [_paths(cfg, s.name)["tiles"] for s in plan_from_config(cfg)]


def cmd_split(args: argparse.Namespace) -> int:
    from hpa_batch.models.split import make_splits, write_splits

    cfg = _cfg(args)
    if args.manifests:
        manifests = list(args.manifests)
    else:
        from hpa_batch.convert.plan import plan_from_config

        manifests = [_paths(cfg, s.name)["manifest"] for s in plan_from_config(cfg)]
    out = args.out or result(cfg.results_dir, "splits")
    _writes(args, out)
    sp = cfg.splits
    table = make_splits(
        manifests,
        cfg.catalog,
        sp.n_folds,
        sp.seed,
        sp.min_combination,
        rejected=args.rejected,
        segment_qc=args.segment_qc,
        doubtful=cfg.segmentation_qc.doubtful,
    )
    write_splits(table, out)
    counts = table["fold"].value_counts().sort_index()
    print(
        f"{len(table)} images -> {out}; images per fold: {counts.to_dict()} (-1 = always train, -2 = excluded: doubtful segmentation)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpa_batch.models.train import train_model

    cfg = _cfg(args)
    spec = _model_spec(cfg, args.model)
    check_unlabelled(cfg)
    if spec.external:
        raise PlanError(
            f"model {args.model!r} was trained by another run (trained: {spec.trained_as_given}): "
            "it is only applied here; remove trained: to train it in this run"
        )
    out = args.out or result(cfg.results_dir, "fold_dir", model=args.model, fold=args.fold)
    _writes(args, out)
    splits = args.splits or result(cfg.results_dir, "splits")
    summary = train_model(
        spec, args.fold, _tile_stores(cfg, args.tiles), splits, cfg.catalog, out=out, device=args.device
    )
    print(json.dumps(summary, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpa_batch.models.predict import predict_shard

    cfg = _cfg(args)
    spec = _model_spec(cfg, args.model)
    models = args.models or fold_files(cfg.results_dir, spec)
    tiles = args.tiles or _paths(cfg, args.shard)["tiles"]
    out = args.out or predictions_file(cfg.results_dir, args.model, args.shard)
    _writes(args, out)
    predict_shard(models, tiles, out, cfg.catalog, args.model, device=args.device, level=spec.level)
    return 0


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


def cmd_merge(args: argparse.Namespace) -> int:
    from hpa_batch.results.merge import ShardInputs, merge_stage

    cfg = _cfg(args)
    r = cfg.results_dir
    out_cells, out_images = args.cells or result(r, "cells_table"), args.images or result(r, "images_table")
    _writes(args, out_cells, out_images)
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
    )
    return 0


def _held_out_of(cfg: Config, args: argparse.Namespace) -> tuple[list[int], bool]:
    """Trained folds and all-unseen flag: as given (``--trained-folds``), else from the config."""

    if args.trained_folds is not None:
        return list(args.trained_folds), bool(args.all_unseen)
    return cfg.trained_folds()


def cmd_baseline(args: argparse.Namespace) -> int:
    from hpa_batch.results.baseline import baseline_stage

    cfg = _cfg(args)
    r = cfg.results_dir
    out = args.out or result(r, "baseline_cells")
    _writes(args, out)
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
    print(json.dumps({k: v for k, v in summary.items() if k not in ("features", "thresholds")}, indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpa_batch.results.report import ReportInputs, build_report

    cfg = _cfg(args)
    r = cfg.results_dir
    report_out = args.out or result(r, "report")
    _writes(args, report_out)
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
    )
    if args.figures:
        _writes(args, args.figures)
    out = build_report(inp, cfg.catalog, cfg.report, report_out, figures_dir=args.figures)
    print(out)
    if args.screenshot:
        from hpa_batch.results.report import screenshot

        print(screenshot(out, args.screenshot))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpa_batch.results.evaluate import evaluate_stage

    cfg = _cfg(args)
    r = cfg.results_dir
    out = args.out or result(r, "metrics")
    _writes(args, out)
    folds, all_unseen = _held_out_of(cfg, args)
    metrics = evaluate_stage(
        args.cells or result(r, "cells_table"),
        args.images or result(r, "images_table"),
        list(_per_shard(cfg, args.stores, "store").values()),
        cfg.catalog,
        cfg.evaluation,
        labelled=cfg.dataset.label_column is not None,
        trained_folds=set(folds),
        all_unseen=all_unseen,
        out=out,
        baseline_path=args.baseline or None,
        baseline_summary=(args.baseline_summary or result(r, "baseline_summary")) if args.baseline else None,
    )
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=1))
    return 0


def cmd_h5ad(args: argparse.Namespace) -> int:
    from hpa_batch.results.h5ad import write_cells_h5ad

    cfg = _cfg(args)
    out = args.out or result(cfg.results_dir, "cells_h5ad")
    _writes(args, out)
    n = write_cells_h5ad(args.cells or result(cfg.results_dir, "cells_table"), out, cfg.catalog)
    print(f"{n} cells -> {out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hpa_batch.results.submit import (
        table_predictions,
        write_image_submission,
        write_submission,
    )

    _writes(args, args.out)
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


def cmd_validate(args: argparse.Namespace) -> int:
    from hpa_batch.convert.validate import validate_dataset

    if args.path is None:
        report, _ = validate_dataset(_cfg(args))
        for problem in report.problems:
            print(f"PROBLEM {printable(problem)}")
        print(f"dataset: {report.checked} image(s) checked, {len(report.problems)} problem(s)")
        return 0 if report.ok else 1
    if _image_store(args.path):
        return _validate_store(args.path, deep=args.deep)
    from hpa_batch.core.damage import find_damaged

    checked, damaged = find_damaged(args.path, deep=args.deep)
    for item in damaged:
        print(f"DAMAGED {item}")
    what = "output" if checked == 1 else "outputs"
    print(f"{printable(args.path)}: {checked} {what} checked{' (deep)' if args.deep else ''}, {len(damaged)} damaged")
    if damaged:
        print(f"hpa-batch repair {shlex.quote(str(args.path))} removes exactly these and prints what redoes them")
    return 1 if damaged else 0


def _image_store(path: Path) -> bool:
    """True for a zarr group that is not a tile store (a shard store, an image group, a stray group)."""
    from hpa_batch.core.damage import results_root
    from hpa_batch.layout import result_key

    if not (path.is_dir() and (path / "zarr.json").is_file()):
        return False
    return (result_key(results_root(path), path) or ("", {}))[0] != "tiles"


def _validate_store(path: Path, *, deep: bool) -> int:
    """``validate`` of one image store: each problem, then images checked."""
    from hpa_batch.convert.validate import validate_store

    report = validate_store(path, deep=deep)
    for problem in report.problems:
        print(f"PROBLEM {printable(problem)}")
    print(f"store {printable(path)}: {report.checked} image(s) checked, {len(report.problems)} problem(s)")
    if not report.ok:
        print(f"hpa-batch repair {shlex.quote(str(path))} removes the damaged images and prints what redoes them")
    return 0 if report.ok else 1


def cmd_repair(args: argparse.Namespace) -> int:
    from hpa_batch.core.damage import repair

    done = repair(args.path, hold=lambda output: _writes(args, output))
    for line in done.lines:
        print(line)
    if not done.damaged:
        print(f"{printable(args.path)}: nothing damaged")
    elif done.targets:
        files = " ".join(shlex.quote(str(t)) for t in done.targets)
        print(
            f"now run (or with --profile slurm):\n  snakemake --cores all {files} all\n"
            "it redoes the removed files and every job that reads them (the removed files are named: "
            "Snakemake does not rerun for a missing intermediate file by itself)"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hpa_batch.convert.validate import describe_store

    info = describe_store(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"{info['store']}: {info['n_images']} image(s), {info['n_complete']} complete, "
        f"{info['bytes'] / 1e6:.1f} MB, files per image {info['files_per_image']}\n"
        "  each <store>/<image> is an OME-Zarr 0.5 image with labels/cells and labels/nuclei "
        "(open that path in napari, ome-zarr-py, bioio)"
    )
    for image in info["images"][: args.limit]:
        shapes = " ".join("x".join(map(str, lv["shape"])) for lv in image["levels"])
        labels = ", ".join(
            f"{lb['name']} ({'?' if lb['values'] is None else lb['values']} values)" for lb in image["labels"]
        )
        print(
            f"  {image['image']}: {len(image['levels'])} levels [{shapes}] "
            f"{image['levels'][0]['dtype']} chunks {image['levels'][0]['chunks']} "
            f"{'complete' if image['complete'] else 'INCOMPLETE'}; labels: {labels or 'none'}"
        )
    if info["n_images"] > args.limit:
        print(f"  ... {info['n_images'] - args.limit} more")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    from hpa_batch.convert.qc import merge_rejected, summarise

    _writes(args, args.out)
    merged = merge_rejected(args.inputs, args.out)
    print(summarise(merged))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hpa-batch`` with all verbs."""
    parser = argparse.ArgumentParser(prog="hpa-batch", description=__doc__.split("\n")[0])
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
    p.add_argument("--out", type=Path, help=f"default {_R['splits']}")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train one configured model on one fold (resumes if interrupted)")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--fold", type=int, required=True, help="the fold held out for validation")
    p.add_argument("--splits", type=Path, help=f"default {_R['splits']}")
    p.add_argument("--tiles", nargs="*", type=Path, help="tile stores (default: every planned shard)")
    p.add_argument("--out", type=Path, help=f"the fold's folder (default {_R['fold_dir']})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="per-cell / per-image probabilities of a model for one shard")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003")
    p.add_argument("--models", nargs="*", type=Path, help="fold checkpoints (model.pt)")
    p.add_argument("--tiles", type=Path, help=f"the shard's tile store (default {_R['tiles']})")
    p.add_argument("--out", type=Path, help=f"default {_R['predictions']}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_predict)

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

    p = _tables_verb(
        sub, "evaluate", "metrics of a run (image F1/AP; instance mAP@0.6 with per-cell truth)", cmd_evaluate
    )
    p.add_argument("--baseline", type=Path, help="the baseline's cells.parquet")
    p.add_argument("--baseline-summary", type=Path, help=f"its summary.json (default {_R['baseline_summary']})")
    p.add_argument("--out", type=Path, help=f"metrics JSON (default {_R['metrics']})")
    _held_out_args(p)
    p.add_argument("--stores", nargs="*", type=Path, help="shard stores (truth matching; default: the plan's)")

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

    p = _tables_verb(sub, "baseline", "scikit-learn classifier on the hand-crafted cell features", cmd_baseline)
    p.add_argument("--out", type=Path, help=f"per-cell probabilities (default {_R['baseline_cells']})")
    p.add_argument("--threads", type=int, help="cores to use (overrides baseline.n_jobs; Snakemake passes its grant)")
    p.add_argument("--predictions", nargs="*", type=Path, help="the cell model's predictions (embeddings)")
    p.add_argument("--summary", type=Path, help=f"default {_R['baseline_summary']}")
    p.add_argument("--model-out", type=Path, help=f"default {_R['baseline_model']}")
    _held_out_args(p)

    p = _tables_verb(sub, "h5ad", f"{_R['cells_table']} as AnnData ({_R['cells_h5ad']}), shard by shard", cmd_h5ad)
    p.add_argument("--out", type=Path, help=f"default {_R['cells_h5ad']}")

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
    _add_config_args(p)  # accepted for older command lines; the results folder is found from PATH
    p.add_argument("path", type=Path, help="results folder, results/zarr/{shard}.zarr, a tile store or one file")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpa-batch`` command."""
    args = build_parser().parse_args(argv)
    default_signals()  # a SLURM job's Snakemake ignores them for its command (core.driver.ignore_job_signals)
    get_logger().setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return _run(args)
    finally:
        release_all()  # the job is over: its outputs are free (in a process that goes on, e.g. tests)


def _run(args: argparse.Namespace) -> int:
    """The verb's function, its expected errors as one line."""
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"hpa-batch: {exc}", file=sys.stderr)
        return 2
    except (PlanError, OutputLockError) as exc:
        print(f"hpa-batch {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if args.verbose:
            raise
        print(f"hpa-batch {args.verb}: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if args.verbose or exc.name not in _EXTRAS:
            raise
        print(
            f"hpa-batch {args.verb}: error: {exc.name} is not installed; it comes with the {_EXTRAS[exc.name]} "
            f"extra: pip install 'hpa-batch[{_EXTRAS[exc.name]}]' (make setup installs every extra)",
            file=sys.stderr,
        )
        return 1
    except (DamagedFileError, UnsafeCheckpointError) as exc:
        print(f"hpa-batch {args.verb}: error: {DamagedFileError.line_of(exc) or printable(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = _no_space(exc, args) or DamagedFileError.line_of(exc) or _damaged_input(args)
        if line is None or args.verbose:
            raise
        print(f"hpa-batch {args.verb}: error: {line}", file=sys.stderr)
        return 1


def _no_space(exc: BaseException, args: argparse.Namespace) -> str | None:
    """ "no space left on <folder> (writing <file>)" when the disk filled up anywhere under ``exc`` (its
    causes and, for a worker process's error, its message); None otherwise."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            if str(seen).startswith("no space left on "):
                return str(seen)
            return _space_line(seen.filename, args)
        seen = seen.__cause__ or seen.__context__
    if "[Errno 28]" in str(exc) or "No space left on device" in str(exc):
        return _space_line(None, args)
    return None


def _space_line(filename: object, args: argparse.Namespace) -> str:
    written = Path(str(filename)) if filename else next(iter(getattr(args, "outputs_", [])), None)
    if written is None:
        return "no space left on device (no output named)"
    folder = written.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"no space left on {printable(folder)} (writing {printable(written)})"


def _damaged_input(args: argparse.Namespace) -> str | None:
    """After an unexpected error: the first input of the verb (a path argument it does not write) that
    is damaged, as the one line a stage prints for it; None when every input is sound."""
    from hpa_batch.core.damage import check_output, results_root

    written = {Path(p) for p in getattr(args, "outputs_", [])}
    given = [p for v in vars(args).values() for p in (v if isinstance(v, list) else [v]) if isinstance(p, Path)]
    for path in given + _default_inputs(args):
        if path not in written and path.exists():
            reason = check_output(path, results_root(path), deep=path.suffix in (".parquet", ".json", ".tsv"))
            if reason:
                return str(DamagedFileError(path, reason))
    return None


def _default_inputs(args: argparse.Namespace) -> list[Path]:
    """The files a verb reads when their options are not given: the shard's files and the run's tables."""
    if getattr(args, "config", None) is None and getattr(args, "config_json", None) is None:
        return []
    try:
        cfg = _cfg(args)
    except Exception:  # noqa: BLE001 (only a hint for the error message: no config, no defaults)
        return []
    shard = getattr(args, "shard", None)
    paths = list(_paths(cfg, shard).values()) if shard else []
    return paths + [result(cfg.results_dir, k) for k in ("splits", "cells_table", "images_table", "metrics")]


#: Optional packages and the pyproject extra that brings each.
_EXTRAS = {"torch": "gpu", "torchvision": "gpu", "timm": "gpu", "snakemake": "workflow"}


def _os_error(exc: OSError) -> str:
    """One line for a missing / wrong path: the path, then why."""
    why = {
        FileNotFoundError: "no such file or directory",
        NotADirectoryError: "not a directory",
        IsADirectoryError: "is a directory, not a file",
        PermissionError: "permission denied",
    }.get(type(exc), exc.strerror or str(exc))
    if exc.filename is not None:
        return f"{exc.filename}: {why}"
    text = str(exc)
    bare = len(exc.args) == 1 and isinstance(exc.args[0], str) and " " not in text  # pyarrow: FileNotFoundError(path)
    return f"{text}: {why}" if bare else text


if __name__ == "__main__":
    sys.exit(main())
