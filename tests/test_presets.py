"""Every founding study's preset runs `rule all` to the end on small synthetic data, with the CPU-sized
overrides kept here (tiny inputs, one epoch, random init): predictions, tables, a submission in the
catalog's format, metrics and a report."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import SYNTH_TILES, assert_upstream_reused
from test_workflow import snakemake

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (REPO / "config" / "presets").glob("*.yaml"))
# smallest input each architecture accepts
INPUT = {"inception_resnet_v2": 80}


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
    tiles = {**preset.get("tiles", {}), **SYNTH_TILES}  # the shared upstream's tiles
    return {**preset, "models": models, "tiles": tiles}


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_end_to_end(name, request, tmp_path):
    """Starts from the shared upstream of the preset's task (the presets differ from tiles on)."""
    preset = yaml.safe_load((REPO / "config" / "presets" / name).read_text())
    the_2018_task = preset.get("labels", {}).get("catalog") == "hpa2018"
    upstream = request.getfixturevalue("upstream_2018" if the_2018_task else "upstream_2021")
    data = upstream.data
    sized = cpu_sized(preset)
    dataset = {**upstream.config["dataset"], **preset.get("dataset", {})}
    assert dataset == upstream.config["dataset"], "the preset reads the data set differently from the fork"
    sized.pop("dataset", None)
    sized.update(splits={"n_folds": 3, "min_combination": 1}, evaluation={"truth_dir": str(data / "truth")})
    wd, cfg = upstream.fork(tmp_path, **sized)
    started = time.monotonic()
    out = snakemake(wd, "--cores", "2", "--configfile", "run.yaml")
    assert "steps (100%) done" in out
    assert_upstream_reused(out)
    res = wd / "results"
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
