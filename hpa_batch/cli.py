"""``hpa-batch``: one verb per pipeline stage; every stage runs with or without Snakemake.

Stage verbs take ``--config FILE`` (the YAML the user edits) and/or ``--config-json STR`` (a partial
config merged on top; Snakemake rules pass the config subset the stage reads so a job reruns exactly
when that subset changes). Paths not given default to the contract under ``results_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hpa_batch import __version__
from hpa_batch.config import Config, ConfigError, check_unlabelled, load_config
from hpa_batch.plan import PlanError
from hpa_batch.progress import get_logger


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (e.g. config/config.yaml)")
    p.add_argument("--config-json", help="JSON object merged over --config (used by Snakemake rules)")


def _tables_verb(sub: argparse._SubParsersAction, name: str, help_: str, func: object) -> argparse.ArgumentParser:
    """A verb reading (or writing) the merged tables: config options, ``--cells``, ``--images``."""
    p = sub.add_parser(name, help=help_)
    _add_config_args(p)
    p.add_argument("--cells", type=Path, help="default results/tables/cells.parquet")
    p.add_argument("--images", type=Path, help="default results/tables/images.parquet")
    p.set_defaults(func=func)
    return p


def _shard_verb(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    """A per-shard stage verb: config arguments, ``--shard`` and ``--store``."""
    p = sub.add_parser(name, help=help_)
    _add_config_args(p)
    p.add_argument("--shard", required=True)
    p.add_argument("--store", type=Path, help="the shard's zarr store (default: results_dir/zarr/{shard}.zarr)")
    return p


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.config_json)


def _paths(cfg: Config, shard: str) -> dict[str, Path]:
    r = cfg.results_dir
    return {
        "manifest": r / "manifest" / f"{shard}.parquet",
        "manifest_rejected": r / "qc" / f"{shard}.manifest.tsv",
        "store": r / "zarr" / f"{shard}.zarr",
        "rejected": r / "qc" / f"{shard}.rejected.tsv",
        "summary": r / "zarr" / f"{shard}.convert.json",
        "segment_qc": r / "qc" / f"{shard}.segment.tsv",
        "segment_summary": r / "zarr" / f"{shard}.segment.json",
        "cells": r / "cells" / f"{shard}.parquet",
        "tiles": r / "tiles" / f"{shard}.zarr",
    }


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
    from hpa_batch.plan import plan_from_config

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
    from hpa_batch.manifest import build_manifest, write_manifest
    from hpa_batch.plan import find_shard

    shard, meta = find_shard(cfg, shard_name)
    if expect and shard.digest != expect:
        raise SystemExit(
            f"shard {shard_name}: metadata changed since the workflow was planned "
            f"(digest {shard.digest} != {expect}); rerun snakemake"
        )
    manifest = build_manifest(cfg, shard, meta)
    write_manifest(manifest, out, rejected)
    get_logger().info(
        "manifest %s: %d admitted, %d refused (%s)", shard_name, len(manifest.admitted),
        len(manifest.rejected), rejected,
    )
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    return _run_manifest(
        cfg, args.shard, args.out or p["manifest"], args.rejected or p["manifest_rejected"],
        args.expect_digest,
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from hpa_batch.convert import convert_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    manifest = args.manifest or p["manifest"]
    manifest_rejected = args.manifest_rejected or p["manifest_rejected"]
    if not manifest.is_file():
        _run_manifest(cfg, args.shard, manifest, manifest_rejected, None)
    convert_shard(
        cfg, manifest, manifest_rejected, args.store or p["store"], args.rejected or p["rejected"],
        args.summary or p["summary"], threads=args.threads,
    )
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from hpa_batch.segment.stage import segment_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    segment_shard(cfg, args.store or p["store"], args.qc or p["segment_qc"],
                  args.summary or p["segment_summary"], threads=args.threads)
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from hpa_batch.measure import measure_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    measure_shard(cfg, args.store or p["store"], args.manifest or p["manifest"], args.out or p["cells"],
                  args.segment_qc or p["segment_qc"])
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    from hpa_batch.tiles import tiles_shard

    cfg = _cfg(args)
    p = _paths(cfg, args.shard)
    tiles_shard(cfg, args.store or p["store"], args.cells or p["cells"], args.out or p["tiles"])
    return 0


def _model_spec(cfg: Config, name: str) -> dict:
    from hpa_batch.layout import model_spec

    try:
        return model_spec(cfg.raw, name)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None


def _tile_stores(cfg: Config, given: list[Path] | None) -> list[Path]:
    if given:
        return list(given)
    from hpa_batch.plan import plan_from_config

    return [cfg.results_dir / "tiles" / f"{s.name}.zarr" for s in plan_from_config(cfg)]


def cmd_split(args: argparse.Namespace) -> int:
    from hpa_batch.splits import make_splits, write_splits

    cfg = _cfg(args)
    if args.manifests:
        manifests = list(args.manifests)
    else:
        from hpa_batch.plan import plan_from_config

        manifests = [cfg.results_dir / "manifest" / f"{s.name}.parquet" for s in plan_from_config(cfg)]
    sp = cfg.raw["splits"]
    table = make_splits(manifests, cfg.catalog, sp["n_folds"], sp["seed"], sp["min_combination"],
                        rejected=args.rejected, segment_qc=args.segment_qc,
                        doubtful=cfg.segmentation_qc.doubtful)
    out = args.out or cfg.results_dir / "splits.parquet"
    write_splits(table, out)
    counts = table["fold"].value_counts().sort_index()
    print(f"{len(table)} images -> {out}; images per fold: {counts.to_dict()} (-1 = always train, -2 = excluded: doubtful segmentation)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpa_batch.layout import is_external
    from hpa_batch.train import train_model

    cfg = _cfg(args)
    spec = _model_spec(cfg, args.model)
    check_unlabelled(cfg.raw)
    if is_external(spec):
        raise PlanError(f"model {args.model!r} was trained by another run (trained: {spec['trained']}): "
                        "it is only applied here; remove trained: to train it in this run")
    out = args.out or cfg.results_dir / "models" / args.model / f"fold{args.fold}"
    splits = args.splits or cfg.results_dir / "splits.parquet"
    result = train_model(spec, args.fold, _tile_stores(cfg, args.tiles), splits, cfg.catalog, out, args.device)
    print(json.dumps(result, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpa_batch.layout import fold_files, predictions_file
    from hpa_batch.predict import predict_shard

    cfg = _cfg(args)
    spec = _model_spec(cfg, args.model)
    models = args.models or fold_files(cfg.results_dir, spec)
    tiles = args.tiles or cfg.results_dir / "tiles" / f"{args.shard}.zarr"
    out = args.out or predictions_file(cfg.results_dir, args.model, args.shard)
    predict_shard(models, tiles, out, cfg.catalog, args.model, device=args.device, level=spec["level"])
    return 0


def _pick_model(cfg: Config, level: str) -> dict | None:
    from hpa_batch.layout import merged_model

    try:
        return merged_model(cfg.raw, level)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None


def cmd_merge(args: argparse.Namespace) -> int:
    from hpa_batch.evaluate import truth_table
    from hpa_batch.layout import fold_files, predictions_file
    from hpa_batch.merge import ShardInputs, merge_tables, model_thresholds
    from hpa_batch.plan import plan_from_config

    cfg = _cfg(args)
    r = cfg.results_dir
    cell_model, image_model = _pick_model(cfg, "cell"), _pick_model(cfg, "image")
    shards = []
    for s in plan_from_config(cfg):
        p = _paths(cfg, s.name)
        shards.append(ShardInputs(
            s.name, p["manifest"], p["rejected"], p["segment_qc"], p["cells"],
            predictions_file(r, cell_model["name"], s.name) if cell_model else None,
            predictions_file(r, image_model["name"], s.name) if image_model else None))
    n = cfg.catalog.n_classes
    image_t = model_thresholds(fold_files(r, image_model), n) if image_model else None
    # with no cell model, the cells carry the image model's probabilities: its thresholds apply
    cell_t = model_thresholds(fold_files(r, cell_model), n) if cell_model else image_t
    truth_dir = cfg.raw["evaluation"]["truth_dir"]
    truth = truth_table([r / "zarr" / f"{s.name}.zarr" for s in shards], Path(truth_dir), cfg.catalog) \
        if truth_dir else None
    merge_tables(shards, r / "splits.parquet", cfg.catalog, cfg.raw["merge"],
                 cell_t if cell_t is not None else model_thresholds([], n),
                 args.cells or r / "tables" / "cells.parquet", args.images or r / "tables" / "images.parquet", truth,
                 image_thresholds=image_t)
    return 0


def _trained_folds(cfg: Config) -> tuple[set[int], bool]:
    """Folds trained in this run by the models feeding the merged tables (the merge's cell and image
    models), and whether every such model was trained by another run (then no image was seen)."""
    from hpa_batch.layout import is_external

    models = [m for m in (_pick_model(cfg, "cell"), _pick_model(cfg, "image")) if m]
    local = [m for m in models if not is_external(m)]
    return {int(k) for m in local for k in m["folds"]}, bool(models) and not local


def cmd_baseline(args: argparse.Namespace) -> int:
    import pandas as pd

    from hpa_batch.baseline import run_baseline
    from hpa_batch.evaluate import held_out_images

    cfg = _cfg(args)
    r = cfg.results_dir
    cells = args.cells or r / "tables" / "cells.parquet"
    images = pd.read_parquet(args.images or r / "tables" / "images.parquet", columns=["image_id", "fold", "rejected"])
    folds, all_unseen = _trained_folds(cfg)
    held = held_out_images(images, folds, all_unseen=all_unseen)
    cell_model = _pick_model(cfg, "cell")
    pred_dir = r / "predictions" / cell_model["name"] if cell_model else None
    options = {**cfg.raw["baseline"], **({"n_jobs": args.threads} if args.threads else {})}
    from hpa_batch.splits import EXCLUDED

    excluded = set(images.loc[images["fold"] == EXCLUDED, "image_id"])
    summary = run_baseline(Path(cells), held, cfg.catalog, options,
                           args.out or r / "baseline" / "cells.parquet", pred_dir, excluded=excluded)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("features", "thresholds")}, indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpa_batch.layout import fold_files
    from hpa_batch.plan import plan_from_config
    from hpa_batch.report import ReportInputs, build_report

    cfg = _cfg(args)
    r = cfg.results_dir
    shards = [s.name for s in plan_from_config(cfg)]
    histories = [p for m in cfg.raw["models"] for p in fold_files(r, m, "history.csv")]
    baseline = r / "baseline" / "cells.parquet"
    rejected = r / "qc" / "rejected.tsv"
    inp = ReportInputs(cells=r / "tables" / "cells.parquet", images=r / "tables" / "images.parquet",
                       metrics=r / "metrics.json", baseline=baseline if baseline.is_file() else None,
                       histories=histories, tile_stores=[r / "tiles" / f"{s}.zarr" for s in shards],
                       zarr_stores=[r / "zarr" / f"{s}.zarr" for s in shards],
                       rejected=rejected if rejected.is_file() else None, config=cfg.raw, workdir=Path.cwd())
    out = build_report(inp, cfg.catalog, cfg.raw["report"], args.out or r / "report.html")
    print(out)
    if args.screenshot:
        from hpa_batch.report import screenshot

        print(screenshot(out, args.screenshot))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from hpa_batch.evaluate import evaluate_all, unlabelled_metrics
    from hpa_batch.plan import plan_from_config

    cfg = _cfg(args)
    r = cfg.results_dir
    truth_dir = cfg.raw["evaluation"]["truth_dir"]
    stores = [r / "zarr" / f"{s.name}.zarr" for s in plan_from_config(cfg)]
    cells = pd.read_parquet(args.cells or r / "tables" / "cells.parquet")
    images = pd.read_parquet(args.images or r / "tables" / "images.parquet")
    max_share = cfg.raw["evaluation"]["max_class_share"]
    if cfg.dataset.label_column is None:
        result = unlabelled_metrics(cells, images, cfg.catalog, max_share)
        get_logger().info("evaluate: skipped: %s", result["skipped"])
    else:
        baseline = thresholds = None
        if args.baseline:
            baseline = pd.read_parquet(args.baseline)
            summary = json.loads(args.baseline.with_name("summary.json").read_text())
            thresholds = np.asarray(summary["thresholds"])
        folds, all_unseen = _trained_folds(cfg)
        result = evaluate_all(cells, images, stores, Path(truth_dir) if truth_dir else None, cfg.catalog,
                              folds, baseline, thresholds, max_class_share=max_share, all_unseen=all_unseen)
    out = args.out or r / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hpa_batch.submit import (
        table_predictions,
        write_image_submission,
        write_submission,
    )

    if args.images:
        n = write_image_submission(args.images, args.out)
        print(f"{n} images -> {args.out}")
        return 0
    if not args.stores:
        raise SystemExit("submit: --stores is required for the 2021 format (cell masks)")

    source = table_predictions(args.cells, args.n_classes) if args.cells else list(args.predictions)
    n = write_submission(source, list(args.stores), args.out, args.n_classes, args.min_confidence)
    print(f"{n} images -> {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from hpa_batch.validate import validate_dataset, validate_store

    if args.path is not None:
        report = validate_store(args.path, deep=args.deep)
        what = f"store {args.path}"
    else:
        report, _ = validate_dataset(_cfg(args))
        what = "dataset"
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    print(f"{what}: {report.checked} image(s) checked, {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    from hpa_batch.validate import describe_store

    info = describe_store(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['store']}: {info['n_images']} image(s), {info['n_complete']} complete, "
          f"{info['bytes'] / 1e6:.1f} MB, files per image {info['files_per_image']}")
    for image in info["images"][: args.limit]:
        shapes = " ".join("x".join(map(str, lv["shape"])) for lv in image["levels"])
        print(f"  {image['image']}: {len(image['levels'])} levels [{shapes}] "
              f"{image['levels'][0]['dtype']} chunks {image['levels'][0]['chunks']} "
              f"{'complete' if image['complete'] else 'INCOMPLETE'}")
    if info["n_images"] > args.limit:
        print(f"  ... {info['n_images'] - args.limit} more")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    from hpa_batch.qc import merge_rejected, summarise

    merged = merge_rejected(args.inputs, args.out)
    print(summarise(merged))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hpa-batch`` with all verbs."""
    parser = argparse.ArgumentParser(prog="hpa-batch", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"hpa-batch {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("synth", help="write a synthetic dataset in the HPA layout (+ ground truth)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", help="comma-separated image sides (default 1728,2048,3072; 512 with --labels hpa2018)")
    p.add_argument("--cell-lines", help="comma-separated cell line names")
    p.add_argument("--format", choices=["png", "tif", "jpg"], default="png")
    p.add_argument("--labels", choices=["hpa2021", "hpa2018"], default="hpa2021",
                   help="hpa2018 writes that set's layout: 8-bit PNGs, train.csv Id,Target (space-separated), "
                        "no cell-line column")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--style", default="standard",
                   help="comma-separated image styles cycled over the images (standard, dots, dim, crowded, "
                        "large, small, nuclear-ratio, uneven, saturated, mitotic, vary; 'all' = every one but "
                        "standard)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("plan", help="print the shard plan of a config")
    _add_config_args(p)
    p.add_argument("--format", choices=["table", "json", "names"], default="table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("manifest", help="check a shard's images and write its manifest + refusals")
    _add_config_args(p)
    p.add_argument("--shard", required=True)
    p.add_argument("--out", type=Path, help="manifest parquet")
    p.add_argument("--rejected", type=Path, help="refused-images TSV")
    p.add_argument("--expect-digest", help="fail if the shard's rows no longer hash to this")
    p.set_defaults(func=cmd_manifest)

    p = _shard_verb(sub, "convert", "convert a shard to OME-Zarr (runs the manifest if missing)")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--manifest-rejected", type=Path)
    p.add_argument("--rejected", type=Path)
    p.add_argument("--summary", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_convert)

    p = _shard_verb(sub, "segment", "segment cells and nuclei of a converted shard (labels in the store)")
    p.add_argument("--qc", type=Path, help="per-image segmentation QC TSV")
    p.add_argument("--summary", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_segment)

    p = _shard_verb(sub, "measure", "per-cell table of a segmented shard")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--segment-qc", type=Path, help="qc/{shard}.segment.tsv (doubtful images)")
    p.add_argument("--out", type=Path, help="cells parquet")
    p.set_defaults(func=cmd_measure)

    p = _shard_verb(sub, "tiles", "packed cell tiles + whole-image inputs of a measured shard")
    p.add_argument("--cells", type=Path, help="cells parquet")
    p.add_argument("--out", type=Path, help="tile store (.zarr)")
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser("split", help="multilabel-stratified folds of all admitted images")
    _add_config_args(p)
    p.add_argument("--manifests", nargs="*", type=Path)
    p.add_argument("--rejected", nargs="*", type=Path, help="qc/{shard}.rejected.tsv: refused images are left out")
    p.add_argument("--segment-qc", nargs="*", type=Path,
                   help="qc/{shard}.segment.tsv: doubtful images get fold -2 (segmentation_qc.doubtful)")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train one configured model on one fold (resumes if interrupted)")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--splits", type=Path)
    p.add_argument("--tiles", nargs="*", type=Path, help="tile stores (default: every planned shard)")
    p.add_argument("--out", type=Path)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="per-cell / per-image probabilities of a model for one shard")
    _add_config_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--shard", required=True)
    p.add_argument("--models", nargs="*", type=Path, help="fold checkpoints (model.pt)")
    p.add_argument("--tiles", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--device")
    p.set_defaults(func=cmd_predict)

    _tables_verb(sub, "merge", "merge every shard into results/tables/{cells,images}.parquet", cmd_merge)

    p = _tables_verb(sub, "evaluate", "metrics of a run (image F1/AP; instance mAP@0.6 with per-cell truth)",
                     cmd_evaluate)
    p.add_argument("--baseline", type=Path, help="the baseline's cells.parquet (summary.json beside it)")
    p.add_argument("--out", type=Path, help="metrics JSON (default results/metrics.json)")

    p = sub.add_parser("report", help="results/report.html: figures, metrics deep vs baseline, provenance")
    _add_config_args(p)
    p.add_argument("--out", type=Path, help="default results/report.html")
    p.add_argument("--screenshot", type=Path, help="also render it in headless Chromium to this PNG")
    p.set_defaults(func=cmd_report)

    p = _tables_verb(sub, "baseline", "scikit-learn classifier on the hand-crafted cell features", cmd_baseline)
    p.add_argument("--out", type=Path, help="per-cell probabilities (default results/baseline/cells.parquet)")
    p.add_argument("--threads", type=int, help="cores to use (overrides baseline.n_jobs; Snakemake passes its grant)")

    p = sub.add_parser("submit", help="Kaggle submission: HPA 2021 (COCO RLE masks, from cell predictions) or, "
                                      "with --images, HPA 2018 (Id,Predicted per image)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cells", type=Path,
                     help="merged results/tables/cells.parquet: submits its fused_prob_* (what metrics.json scores)")
    src.add_argument("--predictions", nargs="+", type=Path, help="cell prediction parquet files (prob_*)")
    src.add_argument("--images", type=Path,
                     help="merged results/tables/images.parquet: the 2018 task's Id,Predicted (image labels)")
    p.add_argument("--stores", nargs="*", type=Path, default=[],
                   help="shard zarr stores with labels/cells (2021 format)")
    p.add_argument("--n-classes", type=int, default=19)
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("validate", help="check a zarr store (PATH) or the configured dataset")
    _add_config_args(p)
    p.add_argument("path", nargs="?", type=Path, help="shard store or image group")
    p.add_argument("--deep", action="store_true", help="also decode every level and check the pyramid")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("info", help="what a store (or image group) holds")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=10)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("qc", help="merge shard refusal tables and print the summary")
    p.add_argument("inputs", nargs="*", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_qc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpa-batch`` command."""
    args = build_parser().parse_args(argv)
    get_logger()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"hpa-batch: {exc}", file=sys.stderr)
        return 2
    except PlanError as exc:
        print(f"hpa-batch {args.verb}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
