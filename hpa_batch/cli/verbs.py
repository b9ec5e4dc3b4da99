"""The verbs of ``hpa-batch``: each parses nothing, calls one stage function and prints its result;
the paths a verb is not given default to the contract under ``results_dir`` (:mod:`hpa_batch.layout`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hpa_batch.config import Config, check_unlabelled, load_config, restrict
from hpa_batch.convert.plan import PlanError
from hpa_batch.core.process import is_rank0
from hpa_batch.core.progress import get_logger
from hpa_batch.layout import (
    HISTORY_FILE,
    THRESHOLDS_FILE,
    fold_files,
    predictions_file,
    result,
    shard_of,
)
from hpa_batch.spec import Level, ModelSpec

#: The top-level config sections each stage verb reads: exactly what its rule passes as
#: ``--config-json`` (tests/test_cli.py checks the rules against this table; reading any other section
#: fails at run time, :func:`hpa_batch.config.restrict`).
READS: dict[str, tuple[str, ...]] = {
    "manifest": ("dataset", "labels", "qc", "shard_size"),
    "convert": ("conversion",),
    "segment": ("segmentation", "segmentation_qc", "conversion"),
    "measure": ("measure", "segmentation_qc"),
    "tiles": ("tiles", "measure"),
    "split": ("splits", "labels", "segmentation_qc"),
    "train": ("labels", "models"),
    "predict": ("labels", "models"),
    "embed": ("encoders", "tiles"),
    "merge": ("merge", "labels", "evaluation"),
    "h5ad": ("labels",),
    "spatialdata": ("labels",),
    "baseline": ("baseline", "labels"),
    "evaluate": ("evaluation", "labels", "dataset"),
    "report": ("report", "labels", "dataset", "merge"),
}
#: Sections a verb reads only in some configurations (its rule passes them then): grouped folds read
#: the metadata table's location and id column.
READS_WHEN: dict[str, tuple[str, ...]] = {"split": ("dataset",)}


def config_of(args: argparse.Namespace) -> Config:
    """The verb's config: a file (``--config``) with overrides, or a Snakemake rule's subset
    (``--config-json`` alone), of which only the sections given can be read (:func:`~hpa_batch.config.restrict`)."""
    cfg = load_config(args.config, args.config_json)
    if args.config is None and args.config_json:
        cfg = restrict(cfg, json.loads(args.config_json))
    return cfg


def writes(args: argparse.Namespace, *outputs: Path | str) -> None:
    """Take the exclusive lock of each output this verb writes (refused if another job holds one).

    Under torchrun only rank 0 takes them: every rank of one training is the same job.
    """
    from hpa_batch.core.locks import hold

    args.outputs_ = [*getattr(args, "outputs_", []), *map(Path, outputs)]  # named if the disk fills up
    if not is_rank0():
        return
    from hpa_batch.core.receipts import drop

    for out in outputs:
        _mark_tree_of(args, Path(out))
        hold(out, what=f"hpa-batch {args.verb}")
        if args.verb != "repair":
            drop(out)  # rewritten now: its receipt comes back when the verb succeeds (cli.errors.run_verb)


def _mark_tree_of(args: argparse.Namespace, out: Path) -> None:
    """Mark the results tree an output of the contract is written into (a stage run by hand; a workflow
    run marks it in its driver), so that ``repair`` recognises the tree."""
    from hpa_batch.core.tree import mark_tree
    from hpa_batch.integrity import results_root
    from hpa_batch.layout import result_key

    root = results_root(out)
    if result_key(root, out) is not None:
        config = getattr(args, "config", None)
        mark_tree(root, configfiles=[str(config)] if config else [], writer=f"hpa-batch {args.verb}")


def shard_paths(cfg: Config, shard: str) -> dict[str, Path]:
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

    shards = plan_from_config(config_of(args))
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
    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    writes(args, args.out or p["manifest"])
    return _run_manifest(
        cfg,
        args.shard,
        args.out or p["manifest"],
        args.rejected or p["manifest_rejected"],
        args.expect_digest,
    )


def cmd_convert(args: argparse.Namespace) -> int:
    from hpa_batch.convert.stage import convert_shard

    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    manifest = args.manifest or p["manifest"]
    manifest_rejected = args.manifest_rejected or p["manifest_rejected"]
    writes(args, args.store or p["store"])
    if not manifest.is_file():
        writes(args, manifest)
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

    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    writes(args, args.store or p["store"])
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

    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    writes(args, args.out or p["cells"])
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

    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    writes(args, args.out or p["tiles"])
    tiles_shard(cfg, args.store or p["store"], args.cells or p["cells"], args.out or p["tiles"])
    return 0


def _model_spec(cfg: Config, name: str) -> ModelSpec:
    try:
        return cfg.model(name)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None


def _input_stores(cfg: Config, given: list[Path] | None, spec: ModelSpec | None = None) -> list[Path]:
    """What a model reads, one store per planned shard (given, else from the layout): tile stores, or
    its encoder's embedding stores for a head on embeddings."""
    if given:
        return list(given)
    from hpa_batch.convert.plan import plan_from_config

    return [_input_store(cfg, s.name, spec) for s in plan_from_config(cfg)]


def _input_store(cfg: Config, shard: str, spec: ModelSpec | None) -> Path:
    if spec is not None and spec.encoder is not None:
        return result(cfg.results_dir, "embeddings", encoder=spec.encoder, shard=shard)
    return shard_paths(cfg, shard)["tiles"]


def cmd_split(args: argparse.Namespace) -> int:
    from hpa_batch.models.split import make_splits, read_groups, write_splits

    cfg = config_of(args)
    if args.manifests:
        manifests = list(args.manifests)
    else:
        from hpa_batch.convert.plan import plan_from_config

        manifests = [shard_paths(cfg, s.name)["manifest"] for s in plan_from_config(cfg)]
    out = args.out or result(cfg.results_dir, "splits")
    writes(args, out)
    sp = cfg.splits
    groups = None
    if sp.group_column:
        metadata = args.metadata or cfg.dataset.metadata
        groups = read_groups(metadata, cfg.dataset.id_column, sp.group_column)
    table = make_splits(
        manifests,
        cfg.catalog,
        sp.n_folds,
        sp.seed,
        sp.min_combination,
        rejected=args.rejected,
        segment_qc=args.segment_qc,
        doubtful=cfg.segmentation_qc.doubtful,
        groups=groups,
    )
    write_splits(table, out)
    counts = table["fold"].value_counts().sort_index()
    if groups is not None:
        print(f"{table['group'].nunique()} groups by {sp.group_column!r}: images of a group share their fold")
    print(
        f"{len(table)} images -> {out}; images per fold: {counts.to_dict()} (-1 = always train, -2 = excluded: doubtful segmentation)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hpa_batch.models.train import train_model

    cfg = config_of(args)
    spec = _model_spec(cfg, args.model)
    if cfg.passed is None:  # a config file (a rule's subset was checked when the workflow was planned)
        check_unlabelled(cfg)
    if spec.external:
        raise PlanError(
            f"model {args.model!r} was trained by another run (trained: {spec.trained_as_given}): "
            "it is only applied here; remove trained: to train it in this run"
        )
    out = args.out or result(cfg.results_dir, "fold_dir", model=args.model, fold=args.fold)
    writes(args, out)
    splits = args.splits or result(cfg.results_dir, "splits")
    summary = train_model(
        spec, args.fold, _input_stores(cfg, args.tiles, spec), splits, cfg.catalog, out=out, device=args.device
    )
    print(json.dumps(summary, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpa_batch.models.predict import predict_shard

    cfg = config_of(args)
    spec = _model_spec(cfg, args.model)
    models = args.models or fold_files(cfg.results_dir, spec)
    tiles = args.tiles or _input_store(cfg, args.shard, spec)
    out = args.out or predictions_file(cfg.results_dir, args.model, args.shard)
    writes(args, out)
    predict_shard(models, tiles, out, cfg.catalog, args.model, device=args.device, level=spec.level)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from hpa_batch.models.embed import embed_shard

    cfg = config_of(args)
    try:
        spec = cfg.encoder(args.encoder)
    except KeyError as exc:
        raise PlanError(exc.args[0]) from None
    paths = shard_paths(cfg, args.shard)
    out = args.out or result(cfg.results_dir, "embeddings", encoder=args.encoder, shard=args.shard)
    image = spec.crop.source == "image"
    writes(args, out)
    summary = embed_shard(
        spec,
        tiles=args.tiles or paths["tiles"],
        out=out,
        tiles_cfg=cfg.tiles,
        store=(args.store or paths["store"]) if image else None,
        cells=(args.cells or paths["cells"]) if image else None,
        device=args.device,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "encoder"}, indent=1))
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


def _held_out_of(cfg: Config, args: argparse.Namespace) -> tuple[list[int], bool]:
    """Trained folds and all-unseen flag: as given (``--trained-folds``), else from the config."""

    if args.trained_folds is not None:
        return list(args.trained_folds), bool(args.all_unseen)
    return cfg.trained_folds()


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
    print(json.dumps({k: v for k, v in summary.items() if k not in ("features", "thresholds")}, indent=1))
    return 0


def _existing(path: Path) -> Path | None:
    return path if Path(path).is_file() else None


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


def _compared(cfg: Config, given: list[Path] | None) -> list[Path]:
    """Prediction files of the models compared on the same cells: given (``[]`` = none), else every
    cell-level model's, every shard, when the run has two or more (:func:`compared_models`)."""
    if given is not None:
        return list(given)
    from hpa_batch.convert.plan import plan_from_config

    shards = [s.name for s in plan_from_config(cfg)]
    return [predictions_file(cfg.results_dir, m.name, s) for m in cfg.compared_models() for s in shards]


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
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=1))
    return 0


def _encoder_stores(cfg: Config, given: list[Path] | None) -> dict[str, dict[str, Path]] | None:
    """Encoder -> shard -> embedding store, from given store paths (``results/embeddings/{encoder}/
    {shard}.zarr``, their folder names the encoder)."""
    if not given:
        return None
    out: dict[str, dict[str, Path]] = {}
    for path in given:
        out.setdefault(Path(path).parent.name, {})[shard_of(path)] = Path(path)
    return out


def cmd_h5ad(args: argparse.Namespace) -> int:
    from hpa_batch.results.h5ad import write_cells_h5ad

    cfg = config_of(args)
    out = args.out or result(cfg.results_dir, "cells_h5ad")
    writes(args, out)
    n = write_cells_h5ad(
        args.cells or result(cfg.results_dir, "cells_table"),
        out,
        cfg.catalog,
        embeddings={shard_of(p): p for p in args.embeddings} if args.embeddings else None,
        embedding_key=args.embedding_key,
        encoders=_encoder_stores(cfg, args.encoder_stores),
    )
    print(f"{n} cells -> {out}")
    return 0


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
        embeddings=(args.embedding_key, args.embeddings) if args.embeddings else None,
    )
    print(f"{counts['images']} images, {counts['cells']} cells -> {out}")
    return 0


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


def cmd_qc(args: argparse.Namespace) -> int:
    from hpa_batch.convert.qc import merge_rejected, summarise

    writes(args, args.out)
    merged = merge_rejected(args.inputs, args.out)
    print(summarise(merged))
    return 0
