import subprocess
import sys

import pytest

from hpa_batch.cli import build_parser, main

VERBS = [
    "synth",
    "plan",
    "manifest",
    "convert",
    "segment",
    "measure",
    "tiles",
    "split",
    "train",
    "predict",
    "merge",
    "evaluate",
    "submit",
    "validate",
    "info",
    "qc",
]


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "hpa_batch.cli", "--help"], check=False, capture_output=True, text=True)
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([verb, "--help"])
    assert exc.value.code == 0 and "usage: hpa-batch " + verb in capsys.readouterr().out


def test_plan_validate_info_on_a_small_dataset(dataset, capsys):
    dataset.add("x1")
    dataset.add("x2", cell_line="A549")
    dataset.add("x3", channels=("red",))
    cfg = str(dataset.config_file())
    assert main(["plan", "--config", cfg, "--format", "names"]) == 0
    assert capsys.readouterr().out.split() == ["a549-0000", "hela-0000"]
    assert main(["validate", "--config", cfg]) == 1  # x3 has a problem
    assert "x3: missing green channel" in capsys.readouterr().out
    assert main(["convert", "--config", cfg, "--shard", "hela-0000"]) == 0
    store = dataset.root / "results" / "zarr" / "hela-0000.zarr"
    assert main(["validate", "--deep", str(store)]) == 0
    assert "1 image(s) checked, 0 problem(s)" in capsys.readouterr().out
    assert main(["info", str(store)]) == 0
    assert "x1: 3 levels [4x300x280 4x150x140 4x75x70] uint16" in capsys.readouterr().out


def test_clear_errors(dataset, capsys):
    dataset.add("x1")
    cfg = str(dataset.config_file())
    assert main(["manifest", "--config", cfg, "--shard", "nope-0000"]) == 1
    assert "no shard named 'nope-0000'" in capsys.readouterr().err
    assert main(["plan", "--config-json", '{"shard_size": -1}']) == 2
    assert "shard_size" in capsys.readouterr().err
