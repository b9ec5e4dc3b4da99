"""The report's provenance: the resolved configuration, package versions, git revision, host, time."""

from __future__ import annotations

import html
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hpa_batch.results.report.markup import html_section, html_table

PACKAGES = (
    "hpa-batch",
    "numpy",
    "pandas",
    "pyarrow",
    "zarr",
    "numcodecs",
    "dask",
    "scikit-image",
    "scikit-learn",
    "torch",
    "torchvision",
    "timm",
    "snakemake",
    "pycocotools",
    "ome-zarr-models",
    "matplotlib",
)


def git_revision(workdir: Path) -> str:
    """``<sha>`` (``+dirty`` when the tree has changes) of the checkout at ``workdir``, or a reason."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance_section(config: dict[str, Any], workdir: Path) -> str:
    """Resolved configuration, package versions, git revision, host and time."""
    info = pd.DataFrame(
        {
            "item": ["git revision", "python", "host", "generated"],
            "value": [
                git_revision(workdir),
                platform.python_version(),
                socket.gethostname(),
                time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            ],
        }
    )
    versions = pd.DataFrame(sorted(package_versions().items()), columns=["package", "version"])
    cfg = html.escape(yaml.safe_dump(config, sort_keys=False))
    body = (
        html_table(info)
        + "<h3>Packages</h3>"
        + html_table(versions)
        + f"<h3>Resolved configuration</h3><pre>{cfg}</pre>"
    )
    return html_section("provenance", "Provenance", body)
