"""Driver-level reliability: one driver per directory, SIGTERM to the driver, failed-job logs."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
import zarr
from conftest import image_dirs, synth_config, tiny_model, tool_env

from hpa_batch.core.driver import DriverLockError, guard, holder_of, is_read_only
from hpa_batch.core.ngff import is_complete, labels_complete
from hpa_batch.models.train import HOLD_ENV


def start(wd, *args, env=None):
    """A driver in the background; its output goes to a file (an unread pipe could fill and block it)."""
    log = open(wd / f"driver-{len(list(wd.glob('driver-*.log')))}.log", "w+")  # noqa: SIM115 (the background driver writes it)
    proc = subprocess.Popen(
        ["snakemake", *args], cwd=wd, env=env or tool_env(), stdout=log, stderr=subprocess.STDOUT, text=True
    )
    proc.log = log
    return proc


def snake(wd, *args):
    """A snakemake run in ``wd`` to its end (output captured)."""
    return subprocess.run(["snakemake", *args], check=False, cwd=wd, env=tool_env(), capture_output=True, text=True)


def output(proc):
    proc.log.seek(0)
    return proc.log.read()


def config(wd, tmp_path, synth_data, **extra):
    cfg = synth_config(tmp_path, synth_data)
    cfg["splits"] = {"n_folds": 3, "min_combination": 1}
    cfg["models"] = [tiny_model()]
    cfg.update(extra)
    (wd / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "results"


def fork(upstream, tmp_path, **extra):
    """A private copy of the shared upstream run with the tiny cell model (``extra`` keys override);
    returns its working directory and results folder."""
    downstream = {"splits": {"n_folds": 3, "min_combination": 1}, "models": [tiny_model()], **extra}
    wd, _ = upstream.fork(tmp_path, **downstream)
    return wd, wd / "results"


def hold_env(hold):
    """The driver's environment with the trainer's hold hook armed (``hold`` is created): each training
    waits after its epoch checkpoint, saying so in ``<hold>.held``, until signalled or ``hold`` is removed."""
    hold.touch()
    return {**tool_env(), HOLD_ENV: str(hold)}


def held(hold):
    return hold.with_name(hold.name + ".held")


def wait_for(predicate, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _hold_lock_in_child(wd):
    """A child process that takes the driver lock of ``wd`` and keeps it until its stdin closes."""
    code = (
        "import sys; from hpa_batch.core.driver import acquire; acquire(sys.argv[1]); print('held', flush=True); "
        "sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(wd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_read_only_invocations_are_recognised():
    assert is_read_only(["snakemake", "-n", "tiles"])
    assert is_read_only(["snakemake", "--lint"])
    assert is_read_only(["snakemake", "--report", "report.zip"])  # writes only the file it is given
    assert is_read_only(["snakemake", "--dry-run=true"])
    assert not is_read_only(["snakemake", "--cores", "4", "tiles"])
    assert not is_read_only(["snakemake", "--profile", "slurm"])
    assert not is_read_only(["-n"])  # the program name itself is never a flag


def test_guard_refuses_a_run_but_lets_a_dry_run_through(tmp_path, capsys):
    child = _hold_lock_in_child(tmp_path)
    try:
        assert f'"pid": {child.pid}' in holder_of(tmp_path)
        with pytest.raises(DriverLockError, match="another snakemake driver is running"):
            guard(tmp_path, ["snakemake", "--cores", "2"])
        assert guard(tmp_path, ["snakemake", "-n"]) is None
        assert "read-only invocation" in capsys.readouterr().err
    finally:
        child.stdin.close()
        child.wait(30)
    assert holder_of(tmp_path) is None  # the kernel dropped the lock with the process
    assert guard(tmp_path, ["snakemake", "--cores", "2"]).is_file()


def _dead_driver(wd):
    """What a kill -9'd driver leaves: its record saying running, Snakemake's own locks."""
    (wd / ".snakemake" / "locks").mkdir(parents=True)
    (wd / ".snakemake" / "locks" / "0.input.lock").write_text("x")
    (wd / ".snakemake" / "hpa_batch.core.driver.lock").write_text(
        json.dumps({"pid": 999999, "host": "login1", "started": "2026-12-01 10:00:00", "state": "running"})
    )


def test_after_a_dead_driver_stale_snakemake_locks_are_removed(tmp_path, capsys):
    wd = tmp_path / "wd"
    _dead_driver(wd)
    guard(wd, ["snakemake", "--cores", "2"], results=wd / "results")
    assert not list((wd / ".snakemake" / "locks").glob("*.lock"))
    err = capsys.readouterr().err
    assert "pid 999999 on host login1" in err and "removed its 1 stale Snakemake lock" in err
    assert json.loads((wd / ".snakemake" / "hpa_batch.core.driver.lock").read_text())["state"] == "running"


def test_after_a_dead_driver_its_running_jobs_refuse_the_new_one(tmp_path):
    from core.test_locks import writer

    wd = tmp_path / "wd"
    _dead_driver(wd)
    fold = wd / "results" / "models" / "m" / "fold0"
    child = writer(fold, env={"SLURM_JOB_ID": "77"})
    try:
        with pytest.raises(DriverLockError) as err:
            guard(wd, ["snakemake", "--cores", "2"], results=wd / "results")
    finally:
        child.stdin.close()
        child.wait(30)
    msg = str(err.value)
    assert "died" in msg and str(fold) in msg and "scancel 77" in msg
    assert list((wd / ".snakemake" / "locks").glob("*.lock"))  # nothing removed while its jobs run
    assert holder_of(wd) is None  # the refused driver let go of the lock


def test_a_clean_exit_marks_the_record_finished(tmp_path):
    code = "import sys; from hpa_batch.core.driver import acquire; acquire(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=tool_env())
    rec = json.loads((tmp_path / ".snakemake" / "hpa_batch.core.driver.lock").read_text())
    assert rec["state"] == "finished" and rec["ended"]


@pytest.mark.slow
def test_second_driver_is_refused_even_without_snakemake_locks(upstream_2021, tmp_path):
    wd, _ = fork(upstream_2021, tmp_path, models=[tiny_model(epochs=2)])
    hold = tmp_path / "hold"
    first = start(wd, "--cores", "1", "train", "--configfile", "run.yaml", env=hold_env(hold))
    lock = wd / ".snakemake" / "hpa_batch.core.driver.lock"
    assert wait_for(lambda: lock.is_file() and str(first.pid) in lock.read_text())
    assert wait_for(held(hold).is_file, 300), output(first)[-3000:]  # the first driver is mid-run
    second = snake(wd, "--cores", "1", "--nolock", "--forcerun", "split", "split", "--configfile", "run.yaml")
    assert second.returncode != 0
    assert "another snakemake driver is running" in second.stdout + second.stderr
    assert f'"pid": {first.pid}' in second.stdout + second.stderr
    hold.unlink()  # the training goes on to its end
    assert first.wait(300) == 0, output(first)[-3000:]
    # once the first driver is gone, the directory is free again (the kernel dropped the lock)
    again = snake(wd, "--cores", "1", "train", "--configfile", "run.yaml")
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_sigterm_to_driver_leaves_nothing_falsely_complete(synth_data, workflow_dir, tmp_path):
    wd = workflow_dir()
    res = config(wd, tmp_path, synth_data)
    driver = start(wd, "--cores", "2", "tiles", "--configfile", "run.yaml")
    assert wait_for(lambda: any((res / "zarr").glob("*.segment.json")) if (res / "zarr").is_dir() else False)
    driver.send_signal(signal.SIGTERM)
    driver.wait(300)
    for marker in (res / "zarr").glob("*.convert.json"):
        store = res / "zarr" / marker.name.replace(".convert.json", ".zarr")
        images = json.loads(marker.read_text())["images"]
        assert images and all(is_complete(store / i) for i in images)
    for marker in (res / "zarr").glob("*.segment.json"):
        store = res / "zarr" / marker.name.replace(".segment.json", ".zarr")
        assert all(labels_complete(p, ("cells", "nuclei")) for p in image_dirs(store))
    for table in (res / "cells").glob("*.parquet") if (res / "cells").is_dir() else []:
        pd.read_parquet(table)  # readable: written under a temporary name, renamed when complete
    for tiles in (res / "tiles").glob("*.zarr") if (res / "tiles").is_dir() else []:
        assert zarr.open_group(tiles, mode="r").attrs["hpa_batch"]["complete"]
    rerun = snake(wd, "--cores", "2", "tiles", "--configfile", "run.yaml")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(list((res / "tiles").glob("*.zarr"))) == 3


@pytest.mark.slow
def test_failed_job_names_its_log_in_the_summary(upstream_2021, tmp_path):
    segmentation = {
        **upstream_2021.config["segmentation"],
        "backend": "hpacellseg",
        "options": {"nuclei_model": "/nonexistent/n.pth", "cell_model": "/nonexistent/c.pth"},
    }
    wd, _ = fork(upstream_2021, tmp_path, segmentation=segmentation)  # converted: the segmentation reruns
    proc = snake(wd, "--cores", "2", "segment", "--configfile", "run.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    log = wd / "logs" / "segment"
    failed = [p for p in log.glob("*.log") if "BackendUnavailable" in p.read_text()]
    assert failed and str(failed[0].relative_to(wd)) in out  # the summary points at the job's own log (logs_dir: logs)
    assert "/nonexistent/n.pth" in failed[0].read_text()


def _holder_pid(lock_path):
    try:
        return json.loads(lock_path.read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


#: Epochs of the trainings that are stopped by a signal: the hold hook stops them after the first.
EPOCHS = 3


def _training_driver(upstream, tmp_path):
    """A driver in the background training the tiny model for :data:`EPOCHS` epochs, returned once the
    trainer waits (the hold hook) after its first epoch's checkpoint: a signal sent now arrives at a
    known point. Returns the fold folder, the driver, its working directory and the hold file."""
    wd, res = fork(upstream, tmp_path, models=[tiny_model(epochs=EPOCHS, early_stopping_patience=0)])
    fold = res / "models" / "tiny" / "fold0"
    hold = tmp_path / "hold"
    driver = start(wd, "--cores", "2", "train", "--configfile", "run.yaml", env=hold_env(hold))
    assert wait_for(held(hold).is_file, 600), output(driver)[-3000:]
    assert (fold / "state" / "last.pt").is_file() and json.loads(held(hold).read_text())["epoch"] == 0
    return fold, driver, wd, hold


@pytest.mark.slow
def test_killed_driver_leaves_an_orphan_that_is_waited_out_then_recovered_without_unlock(upstream_2021, tmp_path):
    """kill -9 of the driver while it trains: the trainer goes on as an orphan writer. The rerun is refused
    while it runs (naming it and how to stop it); once it is stopped, the same command recovers by itself
    (no --unlock, no --rerun-incomplete on the command line) and the training resumes from its checkpoint."""
    from hpa_batch.core.locks import holder

    fold, driver, wd, hold = _training_driver(upstream_2021, tmp_path)
    orphan = _holder_pid(fold.parent / ".fold0.lock")
    assert orphan == json.loads(held(hold).read_text())["pid"]
    assert orphan is not None and holder(fold) is not None
    driver.kill()  # kill -9 of the driver alone: its running job goes on
    driver.wait(30)
    assert any((wd / ".snakemake" / "locks").glob("*.lock"))  # Snakemake's locks are left behind
    refused = snake(wd, "--cores", "2", "train", "--configfile", "run.yaml")
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "still running or queued" in said and str(fold.relative_to(wd)) in said and f"pid {orphan} " in said, said[
        -3000:
    ]
    assert f"kill {orphan}" in said
    assert holder(fold) is not None and not (fold / "model.pt").exists()  # the orphan was left alone
    # a second writer started by hand is refused too, naming the holder
    second = subprocess.run(
        ["hpa-batch", "train", "--config", "run.yaml", "--model", "tiny", "--fold", "0"],
        check=False,
        cwd=wd,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert second.returncode == 1 and f"pid {orphan} " in second.stderr and "being written" in second.stderr
    os.kill(orphan, signal.SIGTERM)  # what the message says to run; the trainer saves and exits 75
    hold.unlink()  # the resumed training does not wait
    assert wait_for(lambda: holder(fold) is None, 120)
    again = snake(wd, "--cores", "2", "train", "--configfile", "run.yaml")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert "stale Snakemake lock" in said
    assert (fold / "model.pt").is_file()
    assert not list((wd / ".snakemake" / "locks").glob("*.lock"))
    log = (wd / "logs" / "train").glob("*.log")
    assert any("resum" in p.read_text() for p in log)
    assert list(pd.read_csv(fold / "history.csv")["epoch"]) == list(range(EPOCHS))


@pytest.mark.slow
def test_a_signalled_local_training_is_not_retried_and_says_how_to_resume(upstream_2021, tmp_path):
    """Locally a signal to a training means the user (or the machine) wants it stopped: no retry. The
    trainer saves and exits 75, the run fails naming the stopped training and what to run, and rerunning
    the same command resumes it."""
    fold, driver, wd, hold = _training_driver(upstream_2021, tmp_path)
    os.kill(_holder_pid(fold.parent / ".fold0.lock"), signal.SIGTERM)
    hold.unlink()  # the resumed training does not wait
    assert driver.wait(120) != 0
    said = output(driver)
    assert "a signal stopped this training after it saved its state; rerun the same command" in said, said[-3000:]
    assert "tiny-fold0.log" in said and "Trying to restart" not in said
    again = snake(wd, "--cores", "2", "train", "--configfile", "run.yaml")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    attempts = (fold / "state" / "train.log").read_text()
    assert "exiting with 75" in attempts and "resuming tiny fold 0" in attempts
    assert list(pd.read_csv(fold / "history.csv")["epoch"]) == list(range(EPOCHS))


def test_a_second_driver_on_the_same_results_tree_is_refused_from_another_directory(tmp_path):
    """Two working directories whose configs name one results_dir: the second driver is refused, naming
    the first (its pid, host and working directory), before it could run the same jobs."""
    results = tmp_path / "shared results"
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    code = (
        "import sys; from hpa_batch.core.driver import acquire, DriverLockError\n"
        "acquire(sys.argv[1], sys.argv[2]); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(first), str(results)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DriverLockError) as err:
            guard(second, ["snakemake", "--cores", "1"], results=results)
        assert "writing the results tree" in str(err.value) and str(first.resolve()) in str(err.value)
        assert f'"pid": {holder.pid}' in str(err.value)
    finally:
        holder.communicate("")
    assert guard(second, ["snakemake", "--cores", "1"], results=results) is not None  # free once it ended
