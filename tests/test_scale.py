"""Planning at 82,500 images (no images needed): job count and per-shard membership."""

import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(__import__("conftest").REPO / "bench"))
from conftest import tool_env
from plan import CELL_LINES, workdir


@pytest.mark.slow
def test_dag_at_82500_images_is_sharded_and_small(tmp_path):
    wd = workdir(tmp_path / "scale", 82_500, 250)
    proc = subprocess.run(
        ["snakemake", "-n", "--configfile", "scale.yaml"],
        check=False,
        cwd=wd,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE))
    shards = sum(-(-(82_500 // 17 + (1 if k < 82_500 % 17 else 0)) // 250) for k in range(17))
    for rule in ("manifest", "convert_shard", "segment_shard", "measure_shard", "tiles_shard", "predict_shard"):
        assert int(counts[rule]) == shards  # one job per shard, never per image
    assert int(counts["total"]) < 3000 and len(CELL_LINES) == 17
