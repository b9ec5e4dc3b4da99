"""One writer per output: the lock of an output refuses a second writer while the first lives."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tool_env

from hpa_batch.cli import main
from hpa_batch.core.locks import OutputLockError, held_locks, hold, holder, lock_file, output_of, release

HOLD = (
    "import sys; from hpa_batch.core.locks import hold\n"
    "for out in sys.argv[1:]: hold(out, what='test writer')\n"
    "print('held', flush=True); sys.stdin.read()"
)


def writer(*outputs, env=None):
    """A child process holding the locks of ``outputs`` until its stdin closes."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, *map(str, outputs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**tool_env(), **(env or {})},
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_file_sits_beside_its_output(tmp_path):
    out = tmp_path / "models" / "m" / "fold0"
    assert lock_file(out) == tmp_path / "models" / "m" / ".fold0.lock"
    assert output_of(lock_file(out)) == out


def test_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    out = tmp_path / "results" / "tiles" / "a-0000.zarr"
    child = writer(out, env={"SLURM_JOB_ID": "4242"})
    try:
        record = json.loads(holder(out))
        assert record["pid"] == child.pid and record["slurm_job"] == "4242"
        with pytest.raises(OutputLockError) as err:
            hold(out, what="me")
        msg = str(err.value)
        assert str(out) in msg and f"pid {child.pid} " in msg and "SLURM job 4242" in msg and "scancel 4242" in msg
    finally:
        child.kill()  # kill -9: the kernel drops the lock with the process
        child.wait(30)
    assert holder(out) is None
    assert hold(out, what="me") == lock_file(out)  # a dead holder never blocks
    assert holder(out) is None  # held by this process: not "another" holder
    release(out)
    assert not lock_file(out).exists()


def test_a_clean_exit_removes_the_lock_file(tmp_path):
    out = tmp_path / "cells.parquet"
    child = writer(out)
    assert lock_file(out).is_file()
    child.stdin.close()
    assert child.wait(30) == 0
    assert not lock_file(out).exists()


def test_held_locks_lists_live_holders_and_skips_store_interiors(tmp_path):
    res = tmp_path / "results"
    live, free = res / "models" / "m" / "fold0", res / "cells" / "a-0000.parquet"
    (res / "zarr" / "a-0000.zarr").mkdir(parents=True)
    (res / "zarr" / "a-0000.zarr" / ".x.lock").write_text("{}")  # inside a store: never looked at
    free.parent.mkdir(parents=True)
    lock_file(free).write_text(json.dumps({"pid": 1}))  # left by a dead writer: free
    child = writer(live)
    try:
        found = list(held_locks(res))
        assert [out for out, _ in found] == [live]
        assert json.loads(found[0][1])["pid"] == child.pid
    finally:
        child.stdin.close()
        child.wait(30)
    assert list(held_locks(res)) == []


@pytest.mark.parametrize(
    ("verb", "out_key"),
    [
        ("manifest", "manifest"),
        ("convert", "store"),
        ("segment", "store"),
        ("measure", "cells"),
        ("tiles", "tiles"),
    ],
)
def test_every_shard_verb_refuses_an_output_another_job_writes(dataset, verb, out_key, capsys):
    from hpa_batch.config import load_config
    from hpa_batch.layout import result

    dataset.add("a", cell_line="HeLa")
    cfg_path = dataset.config_file()
    cfg = load_config(cfg_path)
    shard = "hela-0000"
    target = result(cfg.results_dir, out_key, shard=shard)
    child = writer(target)
    try:
        rc = main([verb, "--config", str(cfg_path), "--shard", shard])
    finally:
        child.stdin.close()
        child.wait(30)
    err = capsys.readouterr().err
    assert rc == 1 and f"pid {child.pid} " in err and "being written by another job" in err
    assert not Path(target).exists()  # refused before writing anything


def test_global_verbs_refuse_their_output_too(dataset, tmp_path, capsys):
    dataset.add("a")
    cfg_path = dataset.config_file()
    out = tmp_path / "metrics.json"
    child = writer(out)
    try:
        for argv in (
            ["evaluate", "--config", str(cfg_path), "--out", str(out)],
            ["report", "--config", str(cfg_path), "--out", str(out)],
            ["submit", "--images", str(tmp_path / "images.parquet"), "--out", str(out)],
            ["split", "--config", str(cfg_path), "--out", str(out)],
        ):
            assert main(argv) == 1, argv
            assert "being written by another job" in capsys.readouterr().err
    finally:
        child.stdin.close()
        child.wait(30)


def test_ranks_past_zero_of_a_torchrun_job_take_no_lock(tmp_path, monkeypatch):
    from hpa_batch.cli.common import writes

    out = tmp_path / "fold0"
    child = writer(out)
    try:
        monkeypatch.setenv("RANK", "1")
        writes(type("A", (), {"verb": "train"})(), out)  # rank 1 of the same job: not a second writer
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(OutputLockError):
            writes(type("A", (), {"verb": "train"})(), out)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)


def test_a_verb_run_in_process_frees_its_outputs_when_it_returns(dataset):
    """main() run in a process that goes on (tests, notebooks) must not keep its job's locks."""
    from hpa_batch.config import load_config
    from hpa_batch.layout import result

    dataset.add("a")
    cfg = dataset.config_file()
    assert main(["manifest", "--config", str(cfg), "--shard", "hela-0000"]) == 0
    manifest = result(load_config(cfg).results_dir, "manifest", shard="hela-0000")
    assert not lock_file(manifest).exists()
    child = writer(manifest)  # another process can take it now
    child.stdin.close()
    assert child.wait(30) == 0
