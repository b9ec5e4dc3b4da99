"""envs/*.yaml (conda, used by the rules' conda: directives) agree with pyproject.toml."""

import re
import tomllib
from pathlib import Path

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
    pip = [
        d for d in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)) if not d.startswith("--editable")
    ]
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
