"""``hpa-batch``: one verb per pipeline stage; every stage runs with or without Snakemake.

Stage verbs take ``--config FILE`` (the YAML the user edits) and/or ``--config-json STR`` (a partial
config merged on top; Snakemake rules pass the config subset the stage reads so a job reruns exactly
when that subset changes). Paths not given default to the contract under ``results_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hpa_batch.cli.errors import run_verb
from hpa_batch.cli.parser import build_parser
from hpa_batch.core.driver import default_signals
from hpa_batch.core.locks import release_all
from hpa_batch.core.progress import get_logger


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpa-batch`` command."""
    args = build_parser().parse_args(argv)
    default_signals()  # a SLURM job's Snakemake ignores them for its command (core.driver.ignore_job_signals)
    get_logger().setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return run_verb(args)
    finally:
        release_all()  # the job is over: its outputs are free (in a process that goes on, e.g. tests)


__all__ = ["build_parser", "main"]
