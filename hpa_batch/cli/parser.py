"""The argument parser of ``hpa-batch``: one sub-command per verb; each verb's arguments are declared
beside the function that runs it (:mod:`~hpa_batch.cli.stages`, :mod:`~hpa_batch.cli.training`,
:mod:`~hpa_batch.cli.tables`, :mod:`~hpa_batch.cli.stores`)."""

from __future__ import annotations

import argparse

from hpa_batch import __version__
from hpa_batch.cli import stages, stores, tables, training


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hpa-batch`` with all verbs."""
    parser = argparse.ArgumentParser(
        prog="hpa-batch",
        description="hpa-batch: one verb per pipeline stage; every stage runs with or without Snakemake.",
    )
    parser.add_argument("--version", action="version", version=f"hpa-batch {__version__}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug log lines, and a traceback on errors")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (stages, training, tables, stores):
        for add in group.VERBS:
            add(sub)
    return parser
