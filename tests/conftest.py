"""Shared fixtures: tiny HPA-layout datasets written on the fly (no data is committed)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import yaml

from hpa_batch import CHANNELS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_channel(path: Path, arr: np.ndarray) -> None:
    """Write one channel file in the format its suffix names."""
    ext = path.suffix.lstrip(".")
    if ext == "png":
        path.write_bytes(imagecodecs.png_encode(arr))
    elif ext in ("tif", "tiff"):
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        path.write_bytes(imagecodecs.jpeg8_encode(arr, level=95))


def random_image(rng: np.random.Generator, shape: tuple[int, int], dtype: str = "uint16") -> np.ndarray:
    """A smooth-plus-noise channel (compresses like a real one, unlike pure noise)."""
    hi = 4000 if dtype == "uint16" else 200
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = (np.sin(x / 17.0) + np.cos(y / 23.0) + 2) * hi / 5
    return (base + rng.integers(0, hi // 10, shape)).astype(dtype)


class DatasetBuilder:
    """Writes ``{ID}_{channel}.{ext}`` files and a metadata CSV under a root directory."""

    def __init__(self, root: Path, seed: int = 0):
        self.root = root
        self.images = root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple[str, str, str]] = []
        self.rng = np.random.default_rng(seed)

    def add(
        self,
        image_id: str,
        cell_line: str = "HeLa",
        label: str = "0|16",
        shape: tuple[int, int] = (300, 280),
        ext: str = "png",
        dtype: str = "uint16",
        channels: tuple[str, ...] = CHANNELS,
    ) -> None:
        for c in channels:
            write_channel(self.images / f"{image_id}_{c}.{ext}", random_image(self.rng, shape, dtype))
        self.rows.append((image_id, label, cell_line))

    def path(self, image_id: str, channel: str, ext: str = "png") -> Path:
        return self.images / f"{image_id}_{channel}.{ext}"

    def write_metadata(self) -> Path:
        lines = ["ID,Label,Cell_line"] + [",".join(r) for r in self.rows]
        path = self.root / "train.csv"
        path.write_text("\n".join(lines) + "\n")
        return path

    def config(self, **extra: object) -> dict:
        cfg = {
            "results_dir": str(self.root / "results"),
            "logs_dir": str(self.root / "logs"),
            "dataset": {"images_dirs": [str(self.images)], "metadata": str(self.write_metadata())},
            "shard_size": 3,
            "conversion": {"min_level_size": 128, "chunk": 128},
        }
        for key, value in extra.items():
            cfg[key] = value
        return cfg

    def config_file(self, **extra: object) -> Path:
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(self.config(**extra)))
        return path


@pytest.fixture
def dataset(tmp_path: Path) -> DatasetBuilder:
    """An empty dataset builder in a temp dir."""
    return DatasetBuilder(tmp_path / "ds")


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Callable[[], Path]:
    """A copy of the workflow (Snakefile, rules, schemas, config, profiles, envs) to run in."""

    def make() -> Path:
        wd = tmp_path / "wf"
        wd.mkdir(exist_ok=True)
        shutil.copy(REPO / "Snakefile", wd)
        for d in ("workflow", "config", "profiles", "envs"):
            shutil.copytree(REPO / d, wd / d, dirs_exist_ok=True)
        return wd

    return make


def tool_env() -> dict[str, str]:
    """Environment with this interpreter's bin dir first on PATH (snakemake, hpa-batch)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


#: Segmentation of the 384 px synthetic images of the tests: the backend takes its scales from the
#: image, so only the area floor (full-resolution px^2) is scaled.
SMALL_SEGMENTATION = {
    "max_size": 512,
    "min_cell_area": 60,
}


def tiny_model(**overrides: object) -> dict:
    """The tests' small cell model spec (timm's test_resnet, 32 px, one epoch, fold 0), with overrides."""
    return {
        "name": "tiny",
        "arch": "test_resnet",
        "input_size": 32,
        "epochs": 1,
        "batch_size": 16,
        "num_workers": 0,
        "folds": [0],
        **overrides,
    }


def synth_config(root: Path, data: Path, **extra: object) -> dict:
    """Config for a synthetic dataset at ``data`` with results under ``root``."""
    cfg = {
        "results_dir": str(root / "results"),
        "logs_dir": str(root / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": 4,
        "conversion": {"min_level_size": 128, "chunk": 128},
        "segmentation": SMALL_SEGMENTATION,
        "tiles": {"size": 64, "image_size": 128, "chunk_tiles": 16},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 384 px synthetic HPA images (3 cell lines) with ground truth, made once per session."""
    from hpa_batch.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize_dataset(out, 6, seed=11, sizes=(384,))
    return out


@pytest.fixture(scope="session")
def segmented(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> dict:
    """The synthetic set converted, segmented, measured and tiled (library calls, one shard)."""
    from hpa_batch.cli import main

    root = tmp_path_factory.mktemp("segmented")
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(synth_config(root, synth_data, shard_size=10)))
    shards = []
    from hpa_batch.config import load_config
    from hpa_batch.convert.plan import plan_from_config

    for shard in plan_from_config(load_config(cfg_path)):
        for verb in ("convert", "segment", "measure", "tiles"):
            assert main([verb, "--config", str(cfg_path), "--shard", shard.name]) == 0
        shards.append(shard.name)
    return {"root": root, "config": cfg_path, "results": root / "results", "shards": shards, "data": synth_data}
