"""The data-stage verbs of ``hpa-batch`` (synth, plan, manifest, convert, segment, measure, tiles, qc):
each verb's parser beside the function that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from hpa_batch.cli.common import R, add_config_args, config_of, shard_paths, shard_verb, writes
from hpa_batch.config import Config
from hpa_batch.core.atomic import json_text
from hpa_batch.core.progress import get_logger


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
    write_manifest(manifest, out, rejected, cfg.catalog)
    get_logger().info(
        "manifest %s: %d admitted, %d refused (%s)",
        shard_name,
        len(manifest.admitted),
        len(manifest.rejected),
        rejected,
    )
    return 0


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


def add_synth(sub: argparse._SubParsersAction) -> None:
    """The ``synth`` verb's arguments."""
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


def cmd_plan(args: argparse.Namespace) -> int:
    from hpa_batch.convert.plan import plan_from_config

    shards = plan_from_config(config_of(args))
    if args.format == "json":
        print(json_text([s.__dict__ for s in shards]))
    elif args.format == "names":
        print("\n".join(s.name for s in shards))
    else:
        print(f"{'shard':<28}{'cell line':<20}{'images':>7}  digest")
        for s in shards:
            print(f"{s.name:<28}{s.cell_line:<20}{len(s.ids):>7}  {s.digest}")
        print(f"{len(shards)} shard(s), {sum(len(s.ids) for s in shards)} image(s)")
    return 0


def add_plan(sub: argparse._SubParsersAction) -> None:
    """The ``plan`` verb's arguments."""
    p = sub.add_parser("plan", help="print the shard plan of a config")
    add_config_args(p)
    p.add_argument(
        "--format", choices=["table", "json", "names"], default="table", help="a table, JSON, or one name per line"
    )
    p.set_defaults(func=cmd_plan)


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


def add_manifest(sub: argparse._SubParsersAction) -> None:
    """The ``manifest`` verb's arguments."""
    p = sub.add_parser("manifest", help="check a shard's images and write its manifest + refusals")
    add_config_args(p)
    p.add_argument("--shard", required=True, help="shard name, e.g. u-2-os-0003 (hpa-batch plan lists them)")
    p.add_argument("--out", type=Path, help="manifest parquet")
    p.add_argument("--rejected", type=Path, help="refused-images TSV")
    p.add_argument("--expect-digest", help="fail if the shard's rows no longer hash to this")
    p.set_defaults(func=cmd_manifest)


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


def add_convert(sub: argparse._SubParsersAction) -> None:
    """The ``convert`` verb's arguments."""
    p = shard_verb(sub, "convert", "convert a shard to OME-Zarr (runs the manifest if missing)")
    p.add_argument("--manifest", type=Path, help=f"the shard's manifest (default {R['manifest']}; made if missing)")
    p.add_argument("--manifest-rejected", type=Path, help=f"the manifest's refusals (default {R['manifest_rejected']})")
    p.add_argument("--rejected", type=Path, help=f"refusals of the shard (default {R['rejected']})")
    p.add_argument("--summary", type=Path, help=f"completion record (default {R['convert_summary']})")
    p.add_argument("--threads", type=int, default=1, help="images converted at once")
    p.set_defaults(func=cmd_convert)


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


def add_segment(sub: argparse._SubParsersAction) -> None:
    """The ``segment`` verb's arguments."""
    p = shard_verb(sub, "segment", "segment cells and nuclei of a converted shard (labels in the store)")
    p.add_argument("--qc", type=Path, help="per-image segmentation QC TSV")
    p.add_argument("--summary", type=Path, help=f"completion record (default {R['segment_summary']})")
    p.add_argument("--threads", type=int, default=1, help="images segmented at once")
    p.set_defaults(func=cmd_segment)


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


def add_measure(sub: argparse._SubParsersAction) -> None:
    """The ``measure`` verb's arguments."""
    p = shard_verb(sub, "measure", "per-cell table of a segmented shard")
    p.add_argument("--manifest", type=Path, help=f"the shard's manifest (default {R['manifest']})")
    p.add_argument("--segment-qc", type=Path, help="qc/{shard}.segment.tsv (doubtful images)")
    p.add_argument("--out", type=Path, help="cells parquet")
    p.set_defaults(func=cmd_measure)


def cmd_tiles(args: argparse.Namespace) -> int:
    from hpa_batch.cells.tiles import tiles_shard

    cfg = config_of(args)
    p = shard_paths(cfg, args.shard)
    writes(args, args.out or p["tiles"])
    tiles_shard(cfg, args.store or p["store"], args.cells or p["cells"], args.out or p["tiles"])
    return 0


def add_tiles(sub: argparse._SubParsersAction) -> None:
    """The ``tiles`` verb's arguments."""
    p = shard_verb(sub, "tiles", "packed cell tiles + whole-image inputs of a measured shard")
    p.add_argument("--cells", type=Path, help="cells parquet")
    p.add_argument("--out", type=Path, help="tile store (.zarr)")
    p.set_defaults(func=cmd_tiles)


def cmd_qc(args: argparse.Namespace) -> int:
    from hpa_batch.convert.qc import merge_rejected, summarise

    writes(args, args.out)
    merged = merge_rejected(args.inputs, args.out)
    print(summarise(merged))
    return 0


def add_qc(sub: argparse._SubParsersAction) -> None:
    """The ``qc`` verb's arguments."""
    p = sub.add_parser("qc", help="merge shard refusal tables and print the summary")
    p.add_argument("inputs", nargs="*", type=Path, help="qc/{shard}.rejected.tsv files")
    p.add_argument("--out", type=Path, required=True, help=f"merged table ({R['qc_table']})")
    p.set_defaults(func=cmd_qc)


VERBS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_synth,
    add_plan,
    add_manifest,
    add_convert,
    add_segment,
    add_measure,
    add_tiles,
    add_qc,
)
"""This module's verbs, in the order ``hpa-batch --help`` lists them."""
