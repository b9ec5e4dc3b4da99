"""``hpa-batch repair`` touches only outputs of its own results tree: never through a link, never an
unmarked folder, ``/`` or home, never while a driver runs on the tree, never a running job's temporary;
it prints the command that redoes its removals as the workflow was run; ``--dry-run`` removes nothing."""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tool_env

from hpa_batch.core.tree import mark_tree, read_marker, tree_dir


def hpa(*args, cwd=None, env=None):
    proc = subprocess.run(
        ["hpa-batch", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env={**tool_env(), "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=cwd,
    )
    return proc.returncode, proc.stdout, proc.stderr


def garbage(path: Path, n: int = 4000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(len(str(path))).bytes(n))
    return path


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture
def tree(segmented, tmp_path):
    """A private copy of the segmented shared run (a results tree its stages marked) and an outside folder."""
    results = tmp_path / "proj" / "results"
    shutil.copytree(segmented["results"], results, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    return {"results": results, "outside": outside, "shards": segmented["shards"], "tmp": tmp_path}


def test_links_out_of_the_tree_are_never_followed_and_foreign_files_stay(tree):
    """A linked user folder holding damaged parquet, CSV, a hidden ``.tmp/`` folder and an image store, a
    hidden folder of the user in the tree, a link loop: repair removes only the tree's own damaged
    output, and through a link it removes the link alone."""
    res, outside = tree["results"], tree["outside"]
    garbage(outside / "cells" / "x.parquet")
    garbage(outside / "submission.csv")
    garbage(outside / ".tmp" / "notes.parquet")
    store = outside / "zarr" / "other.zarr"
    shutil.copytree(next((res / "zarr").glob("*.zarr")), store)
    garbage(next(p for p in sorted(store.rglob("*")) if p.is_file() and "/s0/c/" in str(p)))
    (res / "mine").symlink_to(outside, target_is_directory=True)
    (res / "zarr" / "linked.zarr").symlink_to(store, target_is_directory=True)  # a damaged store, linked
    (res / "loop").symlink_to(res, target_is_directory=True)
    garbage(res / ".tmp" / "keep.parquet")  # a user's hidden folder, not a temporary of an output
    victim = garbage(res / "manifest" / f"{tree['shards'][0]}.parquet")
    before_outside, before_tree = files(outside), files(res)

    code, out, err = hpa("repair", res)
    assert code == 0, err
    assert files(outside) == before_outside  # nothing outside touched
    assert not victim.exists() and files(res) == {p: b for p, b in before_tree.items() if p != victim}
    assert (res / "mine").is_symlink() and (res / "loop").is_symlink()
    assert not (res / "zarr" / "linked.zarr").exists() and "(the link only)" in out
    assert store.is_dir()


@pytest.mark.parametrize("where", ["unmarked", "project", "home", "root"])
def test_repair_refuses_what_is_not_a_results_tree(tree, where):
    """An unmarked folder, the project folder above the tree (``repair .``), home and ``/`` are
    refused with exit 2 and nothing removed."""
    res = tree["results"]
    victim = garbage(res / "manifest" / f"{tree['shards'][0]}.parquet")
    env = None
    if where == "unmarked":
        shutil.rmtree(tree_dir(res))
        path, cwd = res, None
    elif where == "project":
        path, cwd = Path("."), res.parent
    elif where == "home":
        env, path, cwd = {"HOME": str(res)}, res, None
    else:
        path, cwd = Path("/"), None
    code, out, err = hpa("repair", path, cwd=cwd, env=env)
    assert code == 2 and "refused" in err and victim.exists(), (out, err)


def test_the_config_results_dir_is_a_tree_even_unmarked(tree):
    res = tree["results"]
    shutil.rmtree(tree_dir(res))
    victim = garbage(res / "manifest" / f"{tree['shards'][0]}.parquet")
    config = tree["tmp"] / "run.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(res), "dataset": {"images_dirs": ["x"], "metadata": "x"}}))
    code, out, err = hpa("repair", "--config", config, res)
    assert code == 0 and not victim.exists(), err
    assert f"--configfile {config}" in out


def test_a_driver_on_the_tree_blocks_repair(tree):
    res = tree["results"]
    victim = garbage(res / "manifest" / f"{tree['shards'][0]}.parquet")
    lock = tree_dir(res) / "driver.lock"
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write('{"pid": 4242, "host": "login1"}')
        fh.flush()
        code, _, err = hpa("repair", res)
    assert code == 2 and "a snakemake driver is running" in err and "4242" in err and victim.exists()


def test_temporaries_of_running_processes_stay_and_dead_ones_go(tree):
    """``.{output}.{pid}.tmp`` of a live process is a job's write in progress; a dead one's is left over."""
    cells = tree["results"] / "cells"
    shard = tree["shards"][0]
    live = garbage(cells / f".{shard}.parquet.{os.getpid()}.tmp")
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead = garbage(cells / f".{shard}.parquet.{int(dead_pid.stdout)}.tmp")
    code, out, err = hpa("repair", tree["results"])
    assert code == 0, err
    assert live.exists() and f"process {os.getpid()}" in out and not dead.exists()


def test_dry_run_removes_nothing_and_says_what_would_go(tree):
    res = tree["results"]
    victim = garbage(res / "manifest" / f"{tree['shards'][0]}.parquet")
    before = files(res)
    code, out, _ = hpa("repair", "--dry-run", res)
    assert code == 0 and f"would remove {victim}" in out and files(res) == before
    assert "then run" in out


def test_the_printed_command_is_the_workflow_s_own(tmp_path, monkeypatch):
    """In the tree's working directory, with its config files, targets spelt as the config spells them."""
    from hpa_batch.repair import redo_command

    wd = tmp_path / "my project"
    (wd / "results" / "tables").mkdir(parents=True)
    monkeypatch.chdir(wd)
    mark_tree("results", configfiles=["config/my run.yaml"])
    assert read_marker("results").workdir == str(wd)
    target = Path("results/tables/cells.parquet")
    assert redo_command(Path("results"), [target]) == (
        "snakemake --cores all results/tables/cells.parquet all --configfile 'config/my run.yaml'"
    )
    monkeypatch.chdir(tmp_path)
    absolute = redo_command(wd / "results", [wd / target])
    assert absolute.startswith(f"cd '{wd}' && snakemake --cores all results/tables/cells.parquet all")


def test_a_long_submission_row_is_not_damage(tmp_path):
    """A submission's PredictionString can exceed the csv module's default field limit (131,072)."""
    from hpa_batch.integrity import check_output

    path = tmp_path / "submission.csv"
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,2048,2048," + "0 1 eNoLAA== " * 20_000 + "\n")
    assert check_output(path) is None
