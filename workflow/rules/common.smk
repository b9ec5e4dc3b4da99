# Planning only: which shards exist and what each job is handed. No processing happens here.
import shlex
from pathlib import Path

from hpa_batch.config import config_from_dict, stage_subset
from hpa_batch.plan import plan_from_config

CFG = config_from_dict(config)
RESULTS = str(CFG.results_dir)
LOGS = str(CFG.logs_dir)
# One CSV read at DAG-build time; a shard's membership depends only on its own cell line.
SHARDS = {shard.name: shard for shard in plan_from_config(CFG)}


wildcard_constraints:
    shard="[a-z0-9-]+-[0-9]{4}",


def shard_digest(wildcards):
    """Hash of the shard's metadata rows: the manifest reruns iff its rows change."""
    return SHARDS[wildcards.shard].digest


def stage_config(*keys):
    """Shell-quoted JSON of the config keys a stage reads (a param: reruns iff they change)."""
    return shlex.quote(stage_subset(config, keys))


def shard_files(pattern):
    """``pattern`` (with ``{shard}``) expanded over every planned shard."""
    return [pattern.format(shard=name) for name in SHARDS]


def print_qc_summary():
    """Show the run's refused images (written by rule qc) at the end of a successful run."""
    summary = Path(RESULTS) / "qc" / "summary.txt"
    if summary.is_file():
        print(summary.read_text())
