"""Every founding study's preset runs `rule all` to the end on small synthetic data, with the CPU-sized
overrides kept here (tiny inputs, one epoch, random init): predictions, tables, a submission in the
catalog's format, metrics and a report."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import synth_config
from test_workflow import snakemake

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (REPO / "config" / "presets").glob("*.yaml"))
# smallest input each architecture accepts
INPUT = {"inception_resnet_v2": 80}


@pytest.fixture(scope="module")
def data_2018(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 384 px images in the 2018 set's layout (8-bit PNG, Id,Target, no cell-line column)."""
    from hpa_batch.synth import synthesize_dataset

    root = tmp_path_factory.mktemp("presets2018") / "data"
    return synthesize_dataset(root, 6, seed=21, sizes=(384,), catalog="hpa2018", depth=8, table="hpa2018").out


def cpu_sized(preset: dict) -> dict:
    """The preset with every model shrunk to a CPU smoke run (recipe keys kept)."""
    models = []
    for m in preset["models"]:
        models.append(
            {
                **m,
                "pretrained": None,
                "input_size": INPUT.get(m["arch"], 32),
                "epochs": 1,
                "batch_size": 4,
                "folds": [0],
                "num_workers": 0,
                "gpus": 0,
            }
        )
    tiles = {**preset.get("tiles", {}), "size": 64, "image_size": 96, "chunk_tiles": 16}
    return {**preset, "models": models, "tiles": tiles}


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_end_to_end(name, synth_data, data_2018, workflow_dir, tmp_path):
    preset = yaml.safe_load((REPO / "config" / "presets" / name).read_text())
    the_2018_task = preset.get("labels", {}).get("catalog") == "hpa2018"
    data = data_2018 if the_2018_task else synth_data
    cfg = {**synth_config(tmp_path, data), **cpu_sized(preset)}
    cfg["dataset"] = {**synth_config(tmp_path, data)["dataset"], **preset.get("dataset", {})}
    if the_2018_task:
        cfg["dataset"].update({"id_column": "Id", "label_column": "Target", "cell_line_column": None})
    cfg["splits"] = {"n_folds": 3, "min_combination": 1}
    cfg["evaluation"] = {"truth_dir": str(data / "truth")}
    wd = workflow_dir()
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    out = snakemake(wd, "--cores", "2", "--configfile", "run.yaml")
    assert "steps (100%) done" in out
    res = tmp_path / "results"
    for m in cfg["models"]:
        preds = list((res / "predictions" / m["name"]).glob("*.parquet"))
        assert preds and all(len(pd.read_parquet(p)) for p in preds), m["name"]
    n = 28 if the_2018_task else 19
    images = pd.read_parquet(res / "tables" / "images.parquet")
    assert len(images) == 6 and f"image_prob_{n - 1}" in images.columns
    header = (res / "submission.csv").read_text().splitlines()[0]
    assert header == ("Id,Predicted" if the_2018_task else "ID,ImageWidth,ImageHeight,PredictionString")
    metrics = json.loads((res / "metrics.json").read_text())
    assert 0 <= metrics["image_map"] <= 1 and metrics["images"] == 6
    print(
        f"\nPRESET {name}: {time.monotonic() - started:.0f} s, {len(cfg['models'])} model(s), image mAP "
        f"{metrics['image_map']:.3f}, image macro-F1 {metrics['image_macro_f1']:.3f}, cell mAP "
        f"{metrics['cell_map']:.3f}"
    )  # the closing notes quote these (pytest -s)
    assert (res / "report.html").stat().st_size > 10_000
