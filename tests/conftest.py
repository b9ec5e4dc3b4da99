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
from scipy import ndimage as ndi

from hpa_batch import CHANNELS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: OpenMP threads that spin while they wait (libgomp's default) then slow
    # each other down many times over (a ResNet-50 step beside a second such process: 1.3 s spinning,
    # 0.29 s passive, 0.18 s alone). Set before torch or scikit-learn load OpenMP; jobs inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
        return copy_workflow(tmp_path / "wf")

    return make


def copy_workflow(wd: Path) -> Path:
    """The workflow's files (Snakefile, rules, schemas, config, profiles, envs) copied into ``wd``."""
    wd.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", wd)
    for d in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPO / d, wd / d, dirs_exist_ok=True)
    return wd


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


#: Cell tiles of 64 px and image inputs of 128 px: every test run's tile settings (the presets' too).
SYNTH_TILES = {"size": 64, "image_size": 128, "chunk_tiles": 16}


def synth_config(root: Path, data: Path, **extra: object) -> dict:
    """Config for a synthetic dataset at ``data`` with results under ``root``."""
    cfg = {
        "results_dir": str(root / "results"),
        "logs_dir": str(root / "logs"),
        "dataset": {"images_dirs": [str(data / "images")], "metadata": str(data / "train.csv")},
        "shard_size": 4,
        "conversion": {"min_level_size": 128, "chunk": 128},
        "segmentation": SMALL_SEGMENTATION,
        "tiles": dict(SYNTH_TILES),
        # UMAP compiles its numba kernels in every process (~16 s): on only where a test checks the map
        "report": {"umap_cells": 0},
        "h5ad": {"umap_cells": 0},
    }
    cfg.update(extra)
    return cfg


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` fills once per test run, then read-only for every test.

    Under pytest-xdist each worker is a session of its own: the first worker to ask builds the folder
    (under the run's common temporary folder) while the others wait on a file lock, then all reuse it.
    A build that failed leaves no completion mark, so the next worker to ask builds it again."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # common to the run's workers
    folder = base / f"shared-{name}"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 384 px synthetic HPA images (3 cell lines) with ground truth, made once per test run."""
    from hpa_batch.synth import synthesize_dataset

    def build(folder: Path) -> None:
        synthesize_dataset(folder / "data", 6, seed=11, sizes=(384,))

    return shared_folder(tmp_path_factory, "synth", build) / "data"


@pytest.fixture(scope="session")
def segmented(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> dict:
    """The synthetic set converted, segmented, measured and tiled (library calls, one shard per cell
    line), once per test run."""
    from hpa_batch.cli import main
    from hpa_batch.config import load_config
    from hpa_batch.convert.plan import plan_from_config

    def build(root: Path) -> None:
        cfg_path = root / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(synth_config(root, synth_data, shard_size=10)))
        for shard in plan_from_config(load_config(cfg_path)):
            for verb in ("convert", "segment", "measure", "tiles"):
                assert main([verb, "--config", str(cfg_path), "--shard", shard.name]) == 0

    root = shared_folder(tmp_path_factory, "segmented", build)
    cfg_path = root / "config.yaml"
    shards = [shard.name for shard in plan_from_config(load_config(cfg_path))]
    return {"root": root, "config": cfg_path, "results": root / "results", "shards": shards, "data": synth_data}


@pytest.fixture(scope="session")
def data_2018(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 384 px images in the 2018 set's layout (8-bit PNG, ``Id,Target``, no cell-line column)."""
    from hpa_batch.synth import synthesize_dataset

    def build(folder: Path) -> None:
        synthesize_dataset(folder / "data", 6, seed=21, sizes=(384,), catalog="hpa2018", depth=8, table="hpa2018")

    return shared_folder(tmp_path_factory, "data2018", build) / "data"


# ----------------------------------------------------------------------------- shared upstream
#: The 2018 task as distributed: ``train.csv`` with ``Id,Target`` (space-separated), no cell-line column.
DATASET_2018 = {"id_column": "Id", "label_column": "Target", "cell_line_column": None, "label_separator": " "}


def upstream_config(data: Path, layout: str) -> dict:
    """Every config key the stages manifest -> tiles read, for a synthetic set in ``layout``
    (``hpa2021`` or ``hpa2018``). Results and logs are relative to the working directory, so a copy of
    that directory is a whole run: its outputs and Snakemake's records of them (.snakemake/metadata)."""
    cfg = synth_config(Path("."), data, results_dir="results", logs_dir="logs")
    if layout == "hpa2018":
        cfg["dataset"].update(DATASET_2018)
        cfg["labels"] = {"catalog": "hpa2018"}
    return cfg


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a workflow directory with its results, logs and Snakemake records (times kept, so Snakemake
    sees the outputs as up to date); locks are left behind. Returns ``dst``."""

    def skip(folder: str, names: list[str]) -> set[str]:
        if Path(folder).name == ".snakemake":
            return {n for n in names if n in ("locks", "incomplete", "log") or n.startswith("hpa_batch.core.driver")}
        return set()

    shutil.copytree(src, dst, symlinks=True, ignore=skip, dirs_exist_ok=True)
    return dst


class Upstream:
    """A workflow directory where ``snakemake tiles convert`` ran once per test run (manifest, convert,
    segment, measure, tiles, QC). Tests that check what comes after tiles start from a copy of it."""

    def __init__(self, wd: Path, config: dict, data: Path) -> None:
        self.wd, self.config, self.data = wd, config, data

    def fork(self, dst: Path, **downstream: object) -> tuple[Path, dict]:
        """A private copy of the run in ``dst/wf`` with ``downstream`` config keys added (they must not
        change what the upstream stages read, or those stages rerun); its ``run.yaml`` is written."""
        wd = copy_run(self.wd, dst / "wf")
        cfg = {**self.config, **downstream}
        (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
        return wd, cfg


#: The rules of the shared upstream; a test started from a fork runs none of them.
UPSTREAM_RULES = ("manifest", "convert_shard", "segment_shard", "measure_shard", "tiles_shard")


def planned_jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, shard-or-None) of every job Snakemake ran or, for a dry run, planned, read from the
    ``rule X:`` / ``localrule X:`` lines it prints for each job, sorted."""
    import re

    jobs: list[list] = []
    for line in output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            jobs.append([m.group(1), None])
        m = re.search(r"wildcards: shard=([\w-]+)", line)
        if m and jobs:
            jobs[-1][1] = m.group(1)
    return sorted((rule, shard) for rule, shard in jobs)


def assert_upstream_reused(output: str) -> None:
    """Fail if a run started from the shared upstream redid any upstream stage (its config changed what
    they read: the test would still pass, only slower, so say so)."""
    redone = {rule for rule, _ in planned_jobs(output)} & set(UPSTREAM_RULES)
    assert not redone, f"a fork of the shared upstream reran {sorted(redone)}: keep its upstream config keys"


def run_upstream(root: Path, data: Path, layout: str) -> Upstream:
    """``snakemake --cores 2 tiles convert`` on ``data`` in a fresh workflow copy ``root/wf``."""
    import subprocess

    wd = copy_workflow(root / "wf")
    cfg = upstream_config(data, layout)
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    cmd = ["snakemake", "--cores", "2", "tiles", "convert", "--configfile", "run.yaml"]
    proc = subprocess.run(cmd, check=False, cwd=wd, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"shared upstream ({layout}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return Upstream(wd, cfg, data)


def shared_upstream(tmp_path_factory: pytest.TempPathFactory, data: Path, layout: str) -> Upstream:
    """:func:`run_upstream` once per test run (:func:`shared_folder`)."""
    root = shared_folder(tmp_path_factory, f"upstream-{layout}", lambda folder: run_upstream(folder, data, layout))
    return Upstream(root / "wf", yaml.safe_load((root / "wf" / "run.yaml").read_text()), data)


@pytest.fixture(scope="session")
def upstream_2021(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> Upstream:
    """The 2021 synthetic set (``synth_data``) through tiles, once per test run."""
    return shared_upstream(tmp_path_factory, synth_data, "hpa2021")


@pytest.fixture(scope="session")
def upstream_2018(tmp_path_factory: pytest.TempPathFactory, data_2018: Path) -> Upstream:
    """The 2018 synthetic set (``data_2018``) through tiles, once per test run."""
    return shared_upstream(tmp_path_factory, data_2018, "hpa2018")


def touching_pair(ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two touching cells on a 1024^2 working level, the left ``ratio`` x brighter in the reference
    channels, their cytoplasm even (no dimmer gap where they meet), nuclei off-centre: the left one
    near the shared boundary, the right one far from it (so distance alone puts the boundary ~60 px
    into the dim cell). Returns ``(4, h, w)`` uint16 and the ``(h, w)`` truth (1 = bright, 2 = dim)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:1024, :1024]
    body = ((yy - 512) / 95.0) ** 2 + ((xx - 512) / 185.0) ** 2 < 1
    truth = np.where(body, np.where(xx < 522, 1, 2), 0)
    nuc1 = ((yy - 512) / 30.0) ** 2 + ((xx - 477) / 26.0) ** 2 < 1
    nuc2 = ((yy - 504) / 30.0) ** 2 + ((xx - 642) / 26.0) ** 2 < 1
    img = np.zeros((4, 1024, 1024), np.float32)
    for c in (0, 3):  # red, yellow: cell bodies, dark over the nuclei
        img[c] = np.select([truth == 1, truth == 2], [3000.0, 3000.0 / ratio], 0.0)
        img[c][nuc1 | nuc2] *= 0.3
    img[2][nuc1 | nuc2] = 8000
    for c in range(4):
        img[c] = ndi.gaussian_filter(img[c], 1.2) + 400 + rng.normal(0, 12, img[c].shape)
    return np.clip(img, 0, 65535).astype(np.uint16), truth


#: The scverse tools' own environment (``make scverse-env``: spatialdata needs an older dask and
#: ome-zarr than the pipeline) and the script that reads the outputs with them.
SCVERSE_PYTHON = Path(os.environ.get("HPA_BATCH_SCVERSE_PYTHON", REPO / ".venv-scverse" / "bin" / "python"))
SCVERSE_CHECK = REPO / "tests" / "scverse" / "check.py"


def scverse_check(*args: object) -> str:
    """Run ``tests/scverse/check.py args`` with the scverse environment's python; its output.
    Without that environment the test is skipped, or fails where HPA_BATCH_REQUIRE_SCVERSE is set (CI)."""
    import subprocess

    if not SCVERSE_PYTHON.is_file():
        reason = f"no scverse environment at {SCVERSE_PYTHON} (make scverse-env)"
        if os.environ.get("HPA_BATCH_REQUIRE_SCVERSE"):
            pytest.fail(reason)
        pytest.skip(reason)
    cmd = [str(SCVERSE_PYTHON), str(SCVERSE_CHECK), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def image_dirs(store: Path) -> list[Path]:
    """The image folders of a shard store, sorted (every folder but the collection's ``OME``), found by
    name only, so a test that damaged an image's metadata still finds it."""
    from hpa_batch.core.ngff import COLLECTION_GROUP

    return sorted(p for p in Path(store).iterdir() if p.is_dir() and p.name != COLLECTION_GROUP)
