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


def test_every_option_of_every_verb_has_help_text():
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{verb} {a.option_strings or a.dest}"
        for verb, p in sub.choices.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "/nonexistent/a.zarr"],
        ["submit", "--cells", "/nonexistent/cells.parquet", "--stores", "/nonexistent/s.zarr", "--out", "x.csv"],
        ["measure", "--shard", "a-0000", "--manifest", "/nonexistent/m.parquet", "--store", "/nonexistent/s.zarr"],
    ],
    ids=["info", "submit", "measure"],
)
def test_a_wrong_path_is_one_line_naming_it(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "hpa_batch.cli", *argv], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(err) == 1 and "/nonexistent/" in err[0] and err[0].startswith(f"hpa-batch {argv[0]}: error:"), err
    verbose = subprocess.run(
        [sys.executable, "-m", "hpa_batch.cli", "-v", *argv], check=False, capture_output=True, text=True, cwd=tmp_path
    )
    assert "Traceback" in verbose.stderr  # -v shows where it came from


def test_validate_says_when_a_zarr_group_is_not_an_image_store(tmp_path, capsys):
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["x"] = 1
    assert main(["validate", str(tmp_path / "other.zarr")]) == 1
    assert "not an image store" in capsys.readouterr().out


def test_train_without_torch_names_the_extra_to_install(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
        "from hpa_batch.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--model", "m", "--fold", "0", "--out", str(tmp_path / "f")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "torch is not installed" in proc.stderr and "hpa-batch[gpu]" in proc.stderr


def test_quiet_and_verbose_set_the_log_level(dataset, capsys):
    import logging

    from hpa_batch.core.progress import get_logger

    dataset.add("a")
    cfg = dataset.config_file()
    assert main(["-q", "plan", "--config", str(cfg)]) == 0
    assert get_logger().level == logging.WARNING
    assert main(["-v", "plan", "--config", str(cfg)]) == 0
    assert get_logger().level == logging.DEBUG
    assert main(["plan", "--config", str(cfg)]) == 0
    assert get_logger().level == logging.INFO


def test_every_rule_passes_exactly_the_config_sections_its_verb_reads():
    """Each rule's ``--config-json`` (``stage_config(...)`` / ``model_config``) names exactly the sections
    its verb reads (``cli.common.READS``): one more would rerun the job for nothing on an edit, one less
    fails the job (a stage reading an unpassed section raises, config.restrict)."""
    import re
    from pathlib import Path

    from hpa_batch.cli.common import READS, READS_WHEN

    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    seen = {}
    for smk in sorted(rules.glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.MULTILINE)[1:]:
            verb = re.search(r'"(?:hpa-batch|\{params\.launcher\}) ([a-z0-9]+) ', block)
            if not verb or verb.group(1) not in READS:
                continue
            if "model_config(" in block:
                passed, optional = {"labels", "models"}, set()
            elif "encoder_config(" in block:  # the one encoder entry and the tiles' settings
                passed, optional = {"encoders", "tiles"}, set()
            else:
                call = re.search(r"stage_config\(([^)]*)\)", block)
                assert call, f"{smk.name}: rule {block.split(':')[0]} passes no stage_config"
                passed = {k.split(".")[0] for k in re.findall(r'"([a-z0-9_.]+)"', call.group(1))}
                optional = set(READS_WHEN.get(verb.group(1), ())) if "*" in call.group(1) else set()
            seen[verb.group(1)] = passed
            assert passed == set(READS[verb.group(1)]), (smk.name, verb.group(1), passed)
            assert optional <= set(READS_WHEN.get(verb.group(1), ())), verb.group(1)
    assert set(seen) == set(READS), set(READS) - set(seen)  # every stage verb has its rule


def test_a_reader_that_goes_away_gets_no_traceback(dataset):
    """`hpa-batch plan --format names | head -1` (the Makefile's demo line): when the reader closes the
    pipe first, the verb ends with status 1 and prints nothing on stderr."""
    import subprocess
    import sys

    dataset.add("x1")
    cfg = str(dataset.config_file())
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpa_batch.cli", "plan", "--config", cfg, "--format", "names"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the interpreter has started: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
