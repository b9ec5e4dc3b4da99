"""A PNG of the whole report page, rendered by a headless Chromium when one is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """Path of a headless-capable Chromium on ``PATH`` (``HPA_BATCH_BROWSER`` wins), else ``None``."""

    for name in (os.environ.get("HPA_BATCH_BROWSER"), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def screenshot(
    report: Path, png: Path, width: int = 1200, height: int = 16000, browser: str | None = None, timeout: float = 120
) -> Path:
    """Render ``report`` in headless Chromium and save a screenshot ``png`` of the whole page (a
    ``width`` x ``height`` window, cropped below the last non-white row).

    Raises
    ------
    FileNotFoundError
        No Chromium found (install Debian's ``chromium-headless-shell`` or set ``HPA_BATCH_BROWSER``).
    RuntimeError
        Chromium failed; the message carries its stderr.
    """
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(
            "no headless Chromium found: apt-get install chromium-headless-shell, "
            "or point HPA_BATCH_BROWSER at a Chrome/Chromium binary"
        )
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpa-batch-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            Path(report).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot of {report} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    img = Image.open(png).convert("RGB")
    ink = np.flatnonzero((np.asarray(img.convert("L")) < 250).any(axis=1))
    if len(ink):
        img.crop((0, 0, img.size[0], min(img.size[1], int(ink[-1]) + 20))).save(png)
    return png
