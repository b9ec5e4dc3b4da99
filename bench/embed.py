"""Embedding throughput: ``hpa-batch embed``'s whole path (tile store -> crops -> encoder -> chunked
embedding store) against the encoder alone on synthetic tensors already on the device, same encoder,
batch and precision, measured in the same run; and the price of the full HPA set at that rate.

    python bench/embed.py [--arch vit_base_patch16_224] [--size 224] [--batch 64] [--cells 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from train import make_store, sync

from hpa_batch.config import config_from_dict
from hpa_batch.models.embed import autocast_for, embed_shard
from hpa_batch.models.encoders import create_encoder

#: The full set: 82,500 images x ~25 segmented cells (DESIGN.md's scale).
FULL_SET_CELLS = 82_500 * 25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16_224")
    ap.add_argument("--size", type=int, default=224, help="encoder input side (px)")
    ap.add_argument("--tile", type=int, default=128, help="tile side in the store (px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cells", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("bench/out/embed"))
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    entry = {"name": "bench", "arch": args.arch, "crop": {"size": args.size}, "batch_size": args.batch}
    spec = config_from_dict({"encoders": [entry]}).encoders[0]
    tiles = make_store(args.out / f"tiles-{args.tile}-{args.cells}.zarr", args.cells, args.tile)

    encoder = create_encoder(spec).to(dev)
    x = torch.rand(args.batch, 4, args.size, args.size, device=dev)
    steps = max(args.cells // args.batch, 1)
    with torch.no_grad(), autocast_for(dev, spec.precision):
        encoder(x)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            encoder(x).float().cpu()
        sync(dev)
    alone = steps * args.batch / (time.perf_counter() - t0)

    cfg = config_from_dict({})
    out = args.out / "embeddings.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    embed_shard(spec, tiles=tiles, out=out, tiles_cfg=cfg.tiles, device=dev.type)
    sync(dev)
    stage = args.cells / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        json.dumps(
            {
                "device": name,
                "arch": args.arch,
                "size": args.size,
                "precision": "fp16 autocast" if dev.type == "cuda" else "fp32",
                "encoder_alone_cells_per_s": round(alone, 1),
                "embed_stage_cells_per_s": round(stage, 1),
                "ratio_stage_to_alone": round(stage / alone, 3),
                "full_set_cells": FULL_SET_CELLS,
                "full_set_device_hours_at_stage_rate": round(FULL_SET_CELLS / stage / 3600, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
