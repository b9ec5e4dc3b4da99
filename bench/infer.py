"""Inference throughput: ``hpa-batch predict``'s path (tile store -> batches -> model, no TTA) against
the model alone on synthetic tensors on the same device, same model / batch / AMP.

    python bench/infer.py [--arch resnet50] [--size 256] [--batch 128] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from train import make_store

from hpa_batch.cells.tiles import TileReader
from hpa_batch.models.factory import create_model
from hpa_batch.models.transforms import prepare


def run(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        return torch.sigmoid(model(x).float())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/out/train"))
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if dev.type == "cuda" else None
    model = create_model(args.arch, ["red", "green", "blue", "yellow"], 19).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    n = args.batch * (args.batches + 2)
    reader = TileReader(make_store(args.out / f"tiles-{args.size}-{n}.zarr", n, args.size))
    mean = torch.full((1, 4, 1, 1), 0.45, device=dev)
    std = torch.full((1, 4, 1, 1), 0.225, device=dev)
    x = torch.rand(args.batch, 4, args.size, args.size, device=dev)
    with torch.no_grad():
        for i in range(args.batches + 2):
            if i == 2:
                sync(dev)
                t0 = time.perf_counter()
            run(model, x, amp)
        sync(dev)
        alone = args.batches * args.batch / (time.perf_counter() - t0)
        for i in range(args.batches + 2):
            if i == 2:
                sync(dev)
                t0 = time.perf_counter()
            rows = torch.from_numpy(reader.read_rows(i * args.batch, (i + 1) * args.batch))
            xb = (prepare(rows.to(dev, non_blocking=True), args.size) - mean) / std
            run(model, xb, amp).cpu()
        sync(dev)
        full = args.batches * args.batch / (time.perf_counter() - t0)
    device = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "device": device,
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "model_alone_img_s": round(alone, 1),
                "pipeline_img_s": round(full, 1),
                "ratio": round(full / alone, 3),
            },
            indent=1,
        )
    )


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
