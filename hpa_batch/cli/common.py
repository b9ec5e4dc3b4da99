"""What every verb of ``hpa-batch`` shares: the config sections each reads (:data:`READS`), the config
it runs with, the outputs it writes (locked, recorded), the default paths of a shard, and the argument
helpers of the verb parsers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hpa_batch.config import Config, load_config, restrict
from hpa_batch.core.process import is_rank0
from hpa_batch.layout import (
    RESULTS,
    result,
)

R = {k: f"results/{v}" for k, v in RESULTS.items()}
"""Every output's default path, for help texts."""

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
    "h5ad": ("labels", "h5ad"),
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


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (e.g. config/config.yaml)")
    p.add_argument("--config-json", help="JSON object merged over --config (used by Snakemake rules)")


def tables_verb(sub: argparse._SubParsersAction, name: str, help_: str, func: object) -> argparse.ArgumentParser:
    """A verb reading (or writing) the merged tables: config options, ``--cells``, ``--images``."""
    p = sub.add_parser(name, help=help_)
    add_config_args(p)
    p.add_argument("--cells", type=Path, help=f"default {R['cells_table']}")
    p.add_argument("--images", type=Path, help=f"default {R['images_table']}")
    p.set_defaults(func=func)
    return p


def shard_verb(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    """A per-shard stage verb: config arguments, ``--shard`` and ``--store``."""
    p = sub.add_parser(name, help=help_)
    add_config_args(p)
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003 (hpa-batch plan lists them)")
    p.add_argument("--store", type=Path, help=f"the shard's zarr store (default: {R['store']})")
    return p


def held_out_args(p: argparse.ArgumentParser) -> None:
    """``--trained-folds`` / ``--all-unseen``: which images no model of the run trained on."""
    p.add_argument(
        "--trained-folds",
        nargs="*",
        type=int,
        help="folds trained in this run by the models feeding the tables (default: from the config)",
    )
    p.add_argument("--all-unseen", action="store_true", help="every such model was trained by another run")
