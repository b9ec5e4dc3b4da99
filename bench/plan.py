"""Planning at full scale: DAG build time and job count for an 82,500-row metadata table over 17 cell
lines (no images needed), at the default shard size. Peer: the time to read the table and compute the
shard plan alone (the part of the DAG build that is ours), in the same run.

    python bench/plan.py [--rows 82500] [--shard-size 250]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CELL_LINES = [
    "U-2 OS",
    "A-431",
    "U-251 MG",
    "HeLa",
    "A549",
    "MCF7",
    "RT4",
    "SH-SY5Y",
    "HEK 293",
    "CACO-2",
    "PC-3",
    "Hep G2",
    "SiHa",
    "RH-30",
    "HEL",
    "BJ",
    "HaCaT",
]


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """A metadata CSV in the HPA layout with ``rows`` images over the 17 cell lines."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("ID,Label,Cell_line\n")
        for i in range(rows):
            labels = "|".join(map(str, sorted(set(rng.integers(0, 18, rng.integers(1, 4))))))
            f.write(f"{uuid.UUID(bytes=rng.bytes(16), version=4)},{labels},{CELL_LINES[i % 17]}\n")


def workdir(out: Path, rows: int, shard_size: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile",):
        shutil.copy(REPO / name, out)
    for d in ("workflow", "config", "profiles", "envs"):
        shutil.copytree(REPO / d, out / d, dirs_exist_ok=True)
    if not (out / "meta.csv").is_file():
        write_table(out / "meta.csv", rows)
    (out / "images").mkdir(exist_ok=True)  # planning reads no image, but the directory must exist
    (out / "scale.yaml").write_text(
        yaml.safe_dump({"dataset": {"images_dirs": ["images"], "metadata": "meta.csv"}, "shard_size": shard_size})
    )
    return out


def dry_run(wd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "scale.yaml"],
        cwd=wd,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - t0
    total = int(re.search(r"^total\s+(\d+)", proc.stdout, re.MULTILINE).group(1))
    return seconds, total, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=82_500)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--out", type=Path, default=Path("bench/out/plan"))
    args = ap.parse_args()
    wd = workdir(args.out.resolve(), args.rows, args.shard_size)
    sys.path.insert(0, str(REPO))
    from hpa_batch.config import load_config
    from hpa_batch.convert.plan import plan_from_config

    t0 = time.perf_counter()
    shards = plan_from_config(
        load_config(wd / "scale.yaml", json.dumps({"dataset": {"metadata": str(wd / "meta.csv")}}))
    )
    plan_s = time.perf_counter() - t0
    seconds, jobs, _ = dry_run(wd)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "cell_lines": 17,
                "shard_size": args.shard_size,
                "shards": len(shards),
                "jobs": jobs,
                "dag_build_s": round(seconds, 2),
                "shard_plan_s": round(plan_s, 3),
                "plan_share_of_dag_build": round(plan_s / seconds, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
