"""The store verbs of ``hpa-batch``: ``validate`` (the dataset, a results tree, a store or a file),
``repair`` (removes exactly the damaged outputs and prints what redoes them) and ``info``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from hpa_batch.cli.common import add_config_args, config_of, writes
from hpa_batch.core.atomic import json_text
from hpa_batch.core.errors import printable
from hpa_batch.core.ngff import count_files, image_groups, multiscale_datasets, read_group_attrs
from hpa_batch.core.stamps import stamp_dict


def cmd_validate(args: argparse.Namespace) -> int:
    from hpa_batch.convert.manifest import validate_dataset

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

    info = describe_store(args.path)
    if args.json:
        print(json_text(info))
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


def add_validate(sub: argparse._SubParsersAction) -> None:
    """The ``validate`` verb's arguments."""
    p = sub.add_parser(
        "validate",
        help="check outputs (PATH: the results folder, walked whole, or one store / table / checkpoint) or, "
        "without PATH, the configured dataset",
    )
    add_config_args(p)
    p.add_argument("path", nargs="?", type=Path, help="results folder, a store, an image group or one output file")
    p.add_argument(
        "--deep", action="store_true", help="decode everything: every chunk, parquet page, pyramid level, checkpoint"
    )
    p.set_defaults(func=cmd_validate)


def add_repair(sub: argparse._SubParsersAction) -> None:
    """The ``repair`` verb's arguments."""
    p = sub.add_parser(
        "repair",
        help="remove what validate --deep finds damaged under PATH (a results folder, a store or a file; in an "
        "image store only the damaged images / labels and the stage outputs that claim them done) and print the "
        "command that redoes exactly those and what follows",
    )
    add_config_args(p)  # the config's results_dir is a results tree even before a workflow marked it
    p.add_argument("path", type=Path, help="results folder, results/zarr/{shard}.zarr, a tile store or one file")
    p.add_argument("--dry-run", "-n", action="store_true", help="list what would be removed; remove nothing")
    p.set_defaults(func=cmd_repair)


def add_info(sub: argparse._SubParsersAction) -> None:
    """The ``info`` verb's arguments."""
    p = sub.add_parser("info", help="what a store (or image group) holds")
    p.add_argument("path", type=Path, help="a shard store (results/zarr/<shard>.zarr) or one image group in it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=10, help="images listed at most")
    p.set_defaults(func=cmd_info)


VERBS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_validate,
    add_repair,
    add_info,
)
"""This module's verbs, in the order ``hpa-batch --help`` lists them."""


def describe_image(path: Path) -> dict[str, Any]:
    """What one image group holds: levels, shapes, chunking, codec, bytes, files."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    levels = []
    for ds in multiscale_datasets(attrs):
        arr = group[ds["path"]]
        levels.append(
            {
                "path": ds["path"],
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "chunks": list(arr.chunks),
                "shards": list(arr.shards) if arr.shards else None,
                "compressors": [c.to_dict() for c in arr.compressors],
            }
        )
    stamp = stamp_dict(attrs)
    return {
        "image": Path(path).name,
        "path": str(path),  # an OME-Zarr image: what napari, ome-zarr-py, bioio and ome-zarr-models open
        "labels": describe_labels(Path(path)),
        "complete": bool(stamp.get("complete")),
        "channels": [c["label"] for c in attrs["ome"].get("omero", {}).get("channels", [])],
        "levels": levels,
        "bytes": stamp.get("bytes"),
        "files": count_files(path),
        "source_dtype": stamp.get("source_dtype"),
    }


def describe_labels(image: Path) -> list[dict[str, Any]]:
    """The label images of an image group: name, label values (colours listed), the level they were
    made at, whether they are stamped complete."""
    labels = image / "labels"
    if not (labels / "zarr.json").is_file():
        return []
    attrs = read_group_attrs(labels)
    stamp = stamp_dict(attrs)
    out = []
    for name in attrs.get("ome", {}).get("labels", []):
        block = (
            read_group_attrs(labels / name).get("ome", {}).get("image-label", {}) if (labels / name).is_dir() else {}
        )
        out.append(
            {
                "name": name,
                "values": len(block["colors"]) - 1 if block.get("colors") else None,  # None: written without colours
                "made_at_level": stamp.get("level"),
                "complete": bool(stamp.get("complete")),
            }
        )
    return out


def describe_store(path: Path) -> dict[str, Any]:
    """Summary of a shard store (or one image): images, levels, bytes, files per image."""
    images = [describe_image(p) for p in image_groups(Path(path))]
    return {
        "store": str(path),
        "n_images": len(images),
        "n_complete": sum(i["complete"] for i in images),
        "bytes": sum(i["bytes"] or 0 for i in images),
        "files_per_image": sorted({i["files"] for i in images}),
        "images": images,
    }
