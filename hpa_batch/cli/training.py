"""The model verbs of ``hpa-batch`` (split, train, predict, embed): each verb's parser beside the
function that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from hpa_batch.cli.common import R, add_config_args, config_of, shard_paths, writes
from hpa_batch.config import Config, check_unlabelled
from hpa_batch.convert.plan import PlanError
from hpa_batch.core.atomic import json_text
from hpa_batch.layout import (
    fold_files,
    predictions_file,
    result,
)
from hpa_batch.spec import ModelSpec


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
    write_splits(table, out, cfg.catalog)
    counts = table["fold"].value_counts().sort_index()
    if groups is not None:
        print(f"{table['group'].nunique()} groups by {sp.group_column!r}: images of a group share their fold")
    print(
        f"{len(table)} images -> {out}; images per fold: {counts.to_dict()} (-1 = always train, -2 = excluded: doubtful segmentation)"
    )
    return 0


def add_split(sub: argparse._SubParsersAction) -> None:
    """The ``split`` verb's arguments."""
    p = sub.add_parser("split", help="multilabel-stratified folds of all admitted images")
    add_config_args(p)
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
    p.add_argument("--out", type=Path, help=f"default {R['splits']}")
    p.set_defaults(func=cmd_split)


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
    print(json_text(summary))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    """The ``train`` verb's arguments."""
    p = sub.add_parser("train", help="train one configured model on one fold (resumes if interrupted)")
    add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--fold", type=int, required=True, help="the fold held out for validation")
    p.add_argument("--splits", type=Path, help=f"default {R['splits']}")
    p.add_argument(
        "--tiles",
        "--embeddings",
        dest="tiles",
        nargs="*",
        type=Path,
        help="tile stores, or for a head on an encoder (encoder: set) its embedding stores (default: every planned shard)",
    )
    p.add_argument("--out", type=Path, help=f"the fold's folder (default {R['fold_dir']})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_train)


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


def add_predict(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` verb's arguments."""
    p = sub.add_parser("predict", help="per-cell / per-image probabilities of a model for one shard")
    add_config_args(p)
    p.add_argument("--model", required=True, help="name of an entry of `models` in the config")
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003")
    p.add_argument("--models", nargs="*", type=Path, help="fold checkpoints (model.pt)")
    p.add_argument(
        "--tiles",
        "--embeddings",
        dest="tiles",
        type=Path,
        help=f"the shard's tile store (default {R['tiles']}) or, for a head, embedding store ({R['embeddings']})",
    )
    p.add_argument("--out", type=Path, help=f"default {R['predictions']}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_predict)


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
    print(json_text({k: v for k, v in summary.items() if k != "encoder"}))
    return 0


def add_embed(sub: argparse._SubParsersAction) -> None:
    """The ``embed`` verb's arguments."""
    p = sub.add_parser("embed", help="one frozen encoder's embedding of every cell of one shard")
    add_config_args(p)
    p.add_argument("--encoder", required=True, help="name of an entry of `encoders` in the config")
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003")
    p.add_argument("--tiles", type=Path, help=f"the shard's tile store (default {R['tiles']})")
    p.add_argument("--store", type=Path, help=f"crop.source image: the shard's store (default {R['store']})")
    p.add_argument("--cells", type=Path, help=f"crop.source image: the shard's cells table (default {R['cells']})")
    p.add_argument("--out", type=Path, help=f"default {R['embeddings']}")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(func=cmd_embed)


VERBS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_split,
    add_train,
    add_predict,
    add_embed,
)
"""This module's verbs, in the order ``hpa-batch --help`` lists them."""
