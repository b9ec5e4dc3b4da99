"""envs/*.yaml (conda, used by the rules' conda: directives) agree with pyproject.toml."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def norm(spec: str) -> str:
    spec = spec.strip().replace(" ", "")
    name = re.split(r"[<>=!\[]", spec, maxsplit=1)[0].lower().replace("_", "-")
    version = spec[len(re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", spec).group(0)) :]
    return f"{'dask' if name == 'dask' else name}{version}"


def env_specs(name):
    env = yaml.safe_load((REPO / "envs" / name).read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python", "pip"))]
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
    return {norm(s) for s in conda}, {norm(s) for s in pip}


def test_cpu_env_matches_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda, pip = env_specs("cpu.yaml")
    assert conda == {norm(s) for s in project["dependencies"]}
    assert pip == set()


def test_gpu_env_is_cpu_env_plus_gpu_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda, pip = env_specs("gpu.yaml")
    assert conda == {norm(s) for s in project["dependencies"]}
    assert pip == {norm(s) for s in project["optional-dependencies"]["gpu"]}


def test_every_rule_uses_a_project_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().parent == REPO / "envs", (smk, env)
            assert (smk.parent / env).resolve().is_file()


def test_env_files_name_no_path():
    """Conda may read an env file from a copy (a remote or cached workflow): no entry may be a path or a
    pip option; this checkout's package comes from the post-deploy script."""
    for env_file in (REPO / "envs").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict)), [])
        for entry in [d for d in env["dependencies"] if isinstance(d, str)] + pip:
            assert not entry.startswith(("-", ".", "/")) and "/" not in entry, (env_file.name, entry)
        assert (REPO / "envs" / f"{env_file.stem}.post-deploy.sh").is_file(), env_file.name


@pytest.mark.slow
def test_post_deploy_script_installs_the_checkout_from_anywhere(tmp_path):
    """What Snakemake does after creating an env: run the script (from a copy, in the working directory)
    with the env's python first on PATH. Here a fresh venv stands in for the conda env."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    copy = tmp_path / "conda" / "abc123.post-deploy.sh"
    copy.parent.mkdir()
    shutil.copy(REPO / "envs" / "cpu.post-deploy.sh", copy)
    run_env = {**os.environ, "PATH": f"{env / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    run_env.pop("HPA_BATCH_SOURCE", None)
    missing = subprocess.run(
        ["bash", str(copy)], check=False, cwd=tmp_path, env=run_env, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "HPA_BATCH_SOURCE is not set" in missing.stderr
    run_env["HPA_BATCH_SOURCE"] = str(REPO)
    done = subprocess.run(["bash", str(copy)], check=False, cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (env / "bin" / "hpa-batch").is_file()
    show = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "show", "hpa-batch"], check=False, capture_output=True, text=True
    )
    assert f"Editable project location: {REPO}" in show.stdout, show.stdout


def test_the_snakefile_exports_the_checkout_for_the_post_deploy_scripts():
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'os.environ.setdefault("HPA_BATCH_SOURCE", str(Path(workflow.basedir).resolve()))' in common
    assert (REPO / "pyproject.toml").is_file()  # workflow.basedir (the Snakefile's folder) is installable


GPU_RULES = ("train_model", "predict_shard", "embed_shard")


def test_the_cpu_slurm_profile_is_the_slurm_profile_without_gpus():
    """``profiles/slurm-cpu`` (a cluster without GPUs) says everything ``profiles/slurm`` says, except that
    the rules that ask for a GPU ask for none and run on the CPU partition; a rule that asks for a GPU
    in the Snakefile is one of them."""
    gpu, cpu = (
        yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text()) for name in ("slurm", "slurm-cpu")
    )
    assert {k: v for k, v in gpu.items() if k != "set-resources"} == {
        k: v for k, v in cpu.items() if k != "set-resources"
    }
    assert set(gpu["set-resources"]) == set(cpu["set-resources"]) == set(GPU_RULES)
    partition = cpu["default-resources"]["slurm_partition"]
    for rule in GPU_RULES:
        res = cpu["set-resources"][rule]
        assert (
            res["gpu"] == 0 and res["slurm_partition"] == partition and not any("gpu" in k for k in res if k != "gpu")
        )
        # what is not about GPUs stays as the GPU profile has it (the training's warning signal)
        same = {k: v for k, v in gpu["set-resources"][rule].items() if "gpu" not in k and k != "slurm_partition"}
        assert same.items() <= res.items()
    asking = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rule = None
        for line in smk.read_text().splitlines():
            if line.startswith("rule "):
                rule = line.split()[1].rstrip(":")
            elif line.strip().startswith("gpu=") and rule:
                asking.add(rule)
    assert asking == set(GPU_RULES)
