"""Training throughput: the full pipeline (tile store -> loader -> augmentation -> model step) against
the model alone on synthetic tensors already on the device, same model / batch / AMP / device.

Prints images/s of both and the ratio pipeline / model-alone (goal >= 0.9). On a GPU use the defaults
(resnet50, 256 px, bf16, channels_last); on CPU pass a small model, e.g. ``--arch resnet18 --size 64``.

    python bench/train.py [--arch resnet50] [--size 256] [--batch 64] [--steps 30] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from zarr.codecs import BloscCodec

from hpa_batch.core.labels import CATALOGS
from hpa_batch.models.train import Trainer

N_CLASSES = 19


def make_store(path: Path, n: int, size: int) -> Path:
    """A tile store of ``n`` random-texture tiles with a splits table (fold 0 = 10 %)."""
    if (path / "zarr.json").is_file():
        return path
    rng = np.random.default_rng(0)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    cells = root.create_array(
        "cells",
        shape=(n, 4, size, size),
        dtype="uint8",
        chunks=(64, 4, size, size),
        compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    )
    base = rng.integers(0, 255, (64, 4, size, size), dtype=np.uint8)
    for s in range(0, n, 64):
        cells[s : s + 64] = np.roll(base, s, axis=0)[: min(64, n - s)]
    ids = np.array([f"img{i // 20:05d}" for i in range(n)], dtype=object)
    root.create_array("cell_image", shape=(n,), dtype=str, chunks=(n,))[:] = ids
    root.create_array("cell_id", shape=(n,), dtype="int32", chunks=(n,))[:] = np.arange(n) % 20 + 1
    return path


def splits_for(n: int) -> pd.DataFrame:
    images = sorted({f"img{i // 20:05d}" for i in range(n)})
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "image_id": images,
            "labels": [[int(rng.integers(0, N_CLASSES))] for _ in images],
            "fold": [0 if k % 10 == 0 else 1 for k in range(len(images))],
        }
    )


def spec_for(args: argparse.Namespace) -> dict:
    return {
        "name": "bench",
        "level": "cell",
        "arch": args.arch,
        "pretrained": None,
        "channels": ["red", "green", "blue", "yellow"],
        "input_size": args.size,
        "folds": [0],
        "epochs": 1,
        "batch_size": args.batch,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "dropout": 0.0,
        "schedule": {"kind": "constant", "lr": 1e-3},
        "loss": {"kind": "bce", "class_weights": "none", "unweighted_classes": [], "gamma": 2.0},
        "single_label_only": False,
        "negative_oversample": 1,
        "augment": {"flips": True, "rot90": True, "brightness": 0.1},
        "amp": "auto",
        "channels_last": True,
        "compile": False,
        "early_stopping_patience": 0,
        "buffer_chunks": 16,
        "num_workers": args.workers,
        "tta": False,
        "embeddings": False,
        "seed": 0,
        "gpus": 1,
    }


def model_alone(t: Trainer, steps: int, batch: int, size: int) -> float:
    x = torch.rand(batch, 4, size, size, device=t.device)
    y = (torch.rand(batch, N_CLASSES, device=t.device) < 0.1).float()
    for i in range(steps + 3):
        if i == 3:
            sync(t.device)
            t0 = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(t._forward(x).float(), y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
    sync(t.device)
    return steps * batch / (time.perf_counter() - t0)


def pipeline(t: Trainer, steps: int) -> float:
    t.stop.at_step = 3 + steps
    t.state.global_step = 0
    t0 = None
    orig = t.stop.due

    def due(step: int) -> bool:
        nonlocal t0
        if step == 3:
            sync(t.device)
            t0 = time.perf_counter()
        return orig(step)

    t.stop.due = due
    t.save_state = lambda: None
    t.train_epoch(0)
    sync(t.device)
    return steps * t.spec["batch_size"] / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("bench/out/train"))
    args = ap.parse_args()
    n = args.batch * (args.steps + 8)
    store = make_store(args.out / f"tiles-{args.size}-{n}.zarr", n, args.size)
    t = Trainer(spec_for(args), 0, [store], splits_for(n), CATALOGS["hpa2021"], out=args.out / "run")
    t.net.train()
    alone = model_alone(t, args.steps, args.batch, args.size)
    full = pipeline(t, args.steps)
    device = torch.cuda.get_device_name() if t.device.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "device": device,
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "amp": str(t.amp),
                "workers": args.workers,
                "model_alone_img_s": round(alone, 1),
                "pipeline_img_s": round(full, 1),
                "ratio": round(full / alone, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
