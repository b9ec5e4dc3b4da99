"""The workflow on a real one-node SLURM (tests/slurm/harness.sh: munge + slurmctld + slurmd).

GPU rules run on CPU here through a command-line override of their resources (no GPU, CPU partition),
not through any code branch. Every job must have gone through SLURM (its job completion log), and the
outputs must equal a local run's.
"""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import REPO, synth_config, tool_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
HARNESS = REPO / "tests" / "slurm" / "harness.sh"
SLURM_DIR = Path(os.environ.get("HPA_SLURM_DIR", "/tmp/hpa-batch-slurm"))
CPU_OVERRIDE = [
    "--set-resources",
    "train_model:gpu=0",
    "predict_shard:gpu=0",
    "train_model:cpus_per_gpu=0",
    "predict_shard:cpus_per_gpu=0",
    "train_model:slurm_partition=cpu",
    "predict_shard:slurm_partition=cpu",
]


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


def completed_jobs() -> list[str]:
    log = SLURM_DIR / "jobcomp.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return [ln for ln in lines if "JobState=COMPLETED" in ln]


def run(wd, env, *args):
    proc = subprocess.run(["snakemake", *args], check=False, cwd=wd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_workflow_through_slurm_equals_local_run(slurm, synth_data, workflow_dir, tmp_path):
    wd = workflow_dir()
    models = [
        {
            "name": "tiny",
            "arch": "test_resnet",
            "input_size": 32,
            "epochs": 1,
            "batch_size": 16,
            "num_workers": 0,
            "folds": [0],
        }
    ]
    configs = {}
    for name in ("slurm", "local"):
        cfg = synth_config(tmp_path / name, synth_data)
        cfg["splits"] = {"n_folds": 3, "min_combination": 1}
        cfg["models"] = models
        configs[name] = wd / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))
    before = len(completed_jobs())
    out = run(
        wd,
        slurm,
        "--profile",
        "profiles/slurm",
        "--configfile",
        str(configs["slurm"]),
        *CPU_OVERRIDE,
        "--seconds-between-status-checks",
        "3",
    )
    n_jobs = int(next(ln.split()[-1] for ln in reversed(out.splitlines()) if ln.startswith("total")))
    submitted = [ln for ln in out.splitlines() if "Job " in ln and "has been submitted with SLURM jobid" in ln]
    target_only = n_jobs - len(submitted)
    assert target_only == 1, out[-3000:]  # only `all` runs on the login node; every real job went to SLURM
    assert len(completed_jobs()) - before == len(submitted) >= 20
    run(wd, slurm, "--cores", "2", "--configfile", str(configs["local"]))
    a, b = tmp_path / "slurm" / "results", tmp_path / "local" / "results"
    for sub in ("manifest", "cells"):
        for p in sorted((a / sub).glob("*.parquet")):
            pd.testing.assert_frame_equal(pd.read_parquet(p), pd.read_parquet(b / sub / p.name))
    for store in sorted((a / "tiles").glob("*.zarr")):
        ga, gb = zarr.open_group(store, mode="r"), zarr.open_group(b / "tiles" / store.name, mode="r")
        assert np.array_equal(ga["cells"][:], gb["cells"][:])
    for p in sorted((a / "predictions" / "tiny").glob("*.parquet")):
        pa_, pb = pd.read_parquet(p), pd.read_parquet(b / "predictions" / "tiny" / p.name)
        assert pa_[["image_id", "cell_id"]].equals(pb[["image_id", "cell_id"]])
        cols = [c for c in pa_.columns if c.startswith("prob_")]
        assert np.allclose(pa_[cols].to_numpy(), pb[cols].to_numpy(), atol=0.05)
