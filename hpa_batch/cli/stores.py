"""The store verbs of ``hpa-batch``: ``validate`` (the dataset, a results tree, a store or a file),
``repair`` (removes exactly the damaged outputs and prints what redoes them) and ``info``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hpa_batch.cli.verbs import config_of, writes
from hpa_batch.core.errors import printable


def cmd_validate(args: argparse.Namespace) -> int:
    from hpa_batch.convert.validate import validate_dataset

    if args.path is None:
        report, _ = validate_dataset(config_of(args))
        for problem in report.problems:
            print(f"PROBLEM {printable(problem)}")
        print(f"dataset: {report.checked} image(s) checked, {len(report.problems)} problem(s)")
        return 0 if report.ok else 1
    if _image_store(args.path):
        return _validate_store(args.path, deep=args.deep)
    from hpa_batch.integrity import find_damaged

    checked, damaged = find_damaged(args.path, deep=args.deep)
    for item in damaged:
        print(f"DAMAGED {item}")
    what = "output" if checked == 1 else "outputs"
    print(f"{printable(args.path)}: {checked} {what} checked{' (deep)' if args.deep else ''}, {len(damaged)} damaged")
    if damaged:
        print(f"hpa-batch repair {shlex.quote(str(args.path))} removes exactly these and prints what redoes them")
    return 1 if damaged else 0


def _image_store(path: Path) -> bool:
    """True for a zarr group that is not another stage's store (a shard store, an image group, a stray
    group); tile, embedding and SpatialData stores are checked as outputs (:func:`is_image_store`)."""
    from hpa_batch.integrity import is_image_store

    return path.is_dir() and (path / "zarr.json").is_file() and is_image_store(path)


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
    from hpa_batch.repair import RepairRefused, redo_command, repair

    configured = config_of(args).results_dir if args.config is not None else None
    try:
        done = repair(
            args.path, hold=lambda output: writes(args, output), dry_run=args.dry_run, config_results=configured
        )
    except RepairRefused as exc:
        print(f"hpa-batch repair: refused: {exc}", file=sys.stderr)
        return 2
    for line in done.lines:
        print(line)
    if not done.damaged:
        print(f"{printable(args.path)}: nothing damaged")
    elif done.targets and done.root is not None:
        what = "then run" if args.dry_run else "now run"
        print(
            f"{what} (or with --profile slurm instead of --cores all):\n  {redo_command(done.root, done.targets, configfile=args.config)}\n"
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
