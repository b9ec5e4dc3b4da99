"""The workflow on a real one-node SLURM (tests/slurm/harness.sh: munge + slurmctld + slurmd).

GPU rules run on CPU here through a command-line override of their resources (no GPU, CPU partition),
not through any code branch. Every job must have gone through SLURM (its job completion log), and the
outputs must equal a local run's.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import REPO, assert_upstream_reused, tiny_model, tool_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one worker: jobs counted
HARNESS = REPO / "tests" / "slurm" / "harness.sh"
SLURM_DIR = Path(os.environ.get("HPA_SLURM_DIR", "/tmp/hpa-batch-slurm"))


def profile_resources(name: str, **extra: str) -> list[str]:
    """``--set-resources`` restating profile ``name``'s own ``set-resources`` plus ``extra``
    (``rule:resource`` -> value): a ``--set-resources`` on the command line replaces the profile's
    whole list instead of adding to it."""
    profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
    pairs = {f"{rule}:{k}": v for rule, res in profile["set-resources"].items() for k, v in res.items()}
    pairs.update(extra)
    return ["--set-resources", *(f"{k}={v}" for k, v in pairs.items())]


#: The CPU profile, but the test node has 24 GB and a retry of train_model would ask 2 x 16 GB.
TEST_NODE = profile_resources("slurm-cpu", **{"train_model:mem_mb": "4000"})
#: How often the driver asks squeue: the plugin waits its init seconds after a submission, then 10 s
#: more after every check that found nothing finished. The profile's 5 s would make each step of these
#: seconds-long jobs cost ~20 s; 1 s makes it ~12 s (on a real cluster the profile's value stands).
POLL = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    env = {**tool_env(), "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, env=env, capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    started = False
    if not cluster_up():
        if os.environ.get("HPA_BATCH_REQUIRE_SLURM"):
            pytest.fail("HPA_BATCH_REQUIRE_SLURM is set but no SLURM cluster answers")
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster (start it with tests/slurm/harness.sh start, as root)")
        subprocess.run(["bash", str(HARNESS), "start"], check=True)
        started = True
    yield {**tool_env(), "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    if started:
        subprocess.run(["bash", str(HARNESS), "stop"], check=True)


def completed_jobs(workdir: Path) -> list[str]:
    """The completed jobs submitted from ``workdir`` (other tests on other workers share the cluster's
    job-completion log, so a global count races with them)."""
    log = SLURM_DIR / "jobcomp.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [ln for ln in lines if "JobState=COMPLETED" in ln and f" WorkDir={workdir} " in ln]


def completed_or_failed() -> list[str]:
    log = SLURM_DIR / "jobcomp.log"
    return log.read_text().splitlines() if log.is_file() else []


def run(wd, env, *args):
    proc = subprocess.run(["snakemake", *args], check=False, cwd=wd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def local_run(upstream_2021, tmp_path_factory):
    """The local run the SLURM run is compared with: the shared upstream, then the tiny model trained and
    every shard predicted with ``--cores 2``. Returns its results folder."""
    wd, _ = upstream_2021.fork(tmp_path_factory.mktemp("local"), **DOWNSTREAM)
    out = run(wd, tool_env(), "--cores", "2", "predict", "--configfile", "run.yaml")
    assert_upstream_reused(out)
    return wd / "results"


#: The downstream config of both runs: three folds, the tiny cell model, and a random-init ViT encoder
#: (rule embed_shard: GPU resources and job arrays in the profile) with a linear head on its embeddings.
ENCODER = {"name": "vit", "arch": "vit_tiny_patch16_224", "crop": {"size": 32}, "batch_size": 32}
HEAD = {"name": "vit-linear", "encoder": "vit", "arch": "linear", "epochs": 2, "batch_size": 16, "num_workers": 0}
DOWNSTREAM = {
    "splits": {"n_folds": 3, "min_combination": 1},
    "models": [tiny_model(), HEAD],
    "encoders": [ENCODER],
}


def test_workflow_through_slurm_equals_local_run(slurm, upstream_2021, local_run, workflow_dir):
    """The whole workflow from the raw files through SLURM (per-shard rules as job arrays) gives the
    shared local run's manifests, cell tables, tiles and predictions."""
    wd = workflow_dir()
    (wd / "slurm.yaml").write_text(yaml.safe_dump({**upstream_2021.config, **DOWNSTREAM}))
    out = run(
        wd,
        slurm,
        "--profile",
        "profiles/slurm-cpu",  # the documented way to run every rule on a cluster without GPUs
        "--configfile",
        "slurm.yaml",
        *TEST_NODE,
        *POLL,
    )
    n_jobs = int(next(ln.split()[-1] for ln in reversed(out.splitlines()) if ln.startswith("total")))
    single = [ln for ln in out.splitlines() if "Job " in ln and "has been submitted with SLURM jobid" in ln]
    arrays = [ln for ln in out.splitlines() if ln.startswith("Submitted array job with Snakemake IDs")]
    in_arrays = sum(len(ln.split("Snakemake IDs ")[1].split(" and ")[0].split(",")) for ln in arrays)
    submitted = len(single) + in_arrays
    assert n_jobs - submitted == 1, out[-3000:]  # only `all` runs on the login node; every real job went to SLURM
    assert arrays and in_arrays > len(arrays), out[-3000:]  # the per-shard rules went as job arrays
    assert len(completed_jobs(wd)) == submitted >= 20  # every array task ran and completed
    a, b = wd / "results", local_run
    for sub in ("manifest", "cells"):
        names = sorted(p.name for p in (a / sub).glob("*.parquet"))
        assert names and names == sorted(p.name for p in (b / sub).glob("*.parquet"))
        for name in names:
            pd.testing.assert_frame_equal(pd.read_parquet(a / sub / name), pd.read_parquet(b / sub / name))
    for store in sorted((a / "tiles").glob("*.zarr")):
        ga, gb = zarr.open_group(store, mode="r"), zarr.open_group(b / "tiles" / store.name, mode="r")
        assert np.array_equal(ga["cells"][:], gb["cells"][:])
    predictions = sorted((a / "predictions" / "tiny").glob("*.parquet"))
    assert [p.name for p in predictions] == sorted(p.name for p in (b / "predictions" / "tiny").glob("*.parquet"))
    for p in predictions:
        pa_, pb = pd.read_parquet(p), pd.read_parquet(b / "predictions" / "tiny" / p.name)
        assert pa_[["image_id", "cell_id"]].equals(pb[["image_id", "cell_id"]])
        cols = [c for c in pa_.columns if c.startswith("prob_")]
        assert np.allclose(pa_[cols].to_numpy(), pb[cols].to_numpy(), atol=0.05)
    embeddings = sorted((a / "embeddings" / "vit").glob("*.zarr"))
    assert [p.name for p in embeddings] == [p.name for p in sorted((a / "tiles").glob("*.zarr"))]
    for store in embeddings:  # the encoder's arrays ran on SLURM and equal the local run's
        ea, eb = zarr.open_group(store, mode="r"), zarr.open_group(b / "embeddings" / "vit" / store.name, mode="r")
        np.testing.assert_allclose(ea["embedding"][:], eb["embedding"][:], atol=1e-4)
    assert sorted((a / "predictions" / "vit-linear").glob("*.parquet"))  # the head trained and predicted


def test_a_signalled_training_saves_exits_75_and_the_retry_resumes(slurm, upstream_2021, tmp_path):
    """SLURM's warning signal (what `--signal=USR1@600` sends before the time limit, sent here with
    `scancel --signal=USR1` while the trainer waits after its first epoch's checkpoint, the hold hook):
    the trainer saves after its next step and exits 75; the profile's retry resubmits it (attempt 2,
    more time) and it resumes from its checkpoint. Starts from the shared upstream."""
    from hpa_batch.core.locks import holder
    from hpa_batch.models.train import HOLD_ENV

    epochs = 3
    wd, _ = upstream_2021.fork(
        tmp_path,
        splits={"n_folds": 3, "min_combination": 1},
        models=[tiny_model(epochs=epochs, early_stopping_patience=0)],
    )
    fold = wd / "results" / "models" / "tiny" / "fold0"
    hold = tmp_path / "hold"
    hold.touch()
    log = open(wd / "driver.log", "w+")  # noqa: SIM115 (the background driver writes it)
    args = ["--profile", "profiles/slurm-cpu", "--configfile", "run.yaml", *TEST_NODE]
    driver = subprocess.Popen(
        ["snakemake", *args, *POLL, "train"],
        cwd=wd,
        env={**slurm, HOLD_ENV: str(hold)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    held = tmp_path / "hold.held"
    deadline = time.monotonic() + 600
    while not held.is_file() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert held.is_file(), log.read()
    record = json.loads(holder(fold) or "{}")
    assert record.get("slurm_job"), log.read()
    subprocess.run(["scancel", "--signal=USR1", record["slurm_job"]], check=True, env=slurm)
    hold.unlink()  # the retry does not wait
    assert driver.wait(900) == 0
    log.seek(0)
    out = log.read()
    said = (fold / "state" / "train.log").read_text()  # every attempt (the job log shows the last)
    assert "stop requested" in said and "exiting with 75" in said, out[-3000:] + said[-3000:]
    assert "resuming tiny fold 0" in said and said.count("train tiny fold 0: pid") == 2, said[-3000:]
    assert (fold / "model.pt").is_file()
    history = pd.read_csv(fold / "history.csv")
    assert list(history["epoch"]) == list(range(epochs))  # every epoch once: nothing lost, nothing repeated
    # the signalled job failed as a whole (its Snakemake ignored the signal and reported the exit 75);
    # its step ended with that exit status, not killed by the signal (that reads DerivedExitCode=0:10)
    job = next(ln for ln in completed_or_failed() if f"JobId={record['slurm_job']} " in ln)
    assert "JobState=FAILED" in job and "DerivedExitCode=1:0" in job, job
    assert "a signal stopped this training" not in out  # it was retried, not left to the user


def test_after_a_dead_driver_its_queued_slurm_jobs_refuse_the_rerun(slurm, tmp_path, monkeypatch):
    """A pending job of a dead driver holds no output lock yet: the queue tells (jobs submitted from
    this working directory), and the new driver refuses, naming it and its scancel."""
    from hpa_batch.core.driver import DriverLockError, guard

    wd = tmp_path / "wd"
    (wd / ".snakemake").mkdir(parents=True)
    (wd / ".snakemake" / "hpa_batch.core.driver.lock").write_text(
        json.dumps({"pid": 999999, "host": "login1", "started": "2026-12-01 10:00:00", "state": "running"})
    )
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            "-D",
            str(wd),
            "--comment",
            "rule_train_model_wildcards_m_0",
            "--wrap",
            "true",
        ],
        check=True,
        env=slurm,
        capture_output=True,
        text=True,
    )
    job = sub.stdout.strip().split(";")[0]
    try:
        with pytest.raises(DriverLockError) as err:
            guard(wd, ["snakemake", "--profile", "profiles/slurm"], results=wd / "results")
        msg = str(err.value)
        assert f"SLURM job {job} (PENDING, rule_train_model_wildcards_m_0)" in msg and f"scancel {job}" in msg
    finally:
        subprocess.run(["scancel", job], check=False, env=slurm)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], check=False, env=slurm, capture_output=True)
        if not state.stdout.strip() or b"PENDING" not in state.stdout:
            break
        time.sleep(1)
    assert guard(wd, ["snakemake", "--profile", "profiles/slurm"], results=wd / "results").is_file()
