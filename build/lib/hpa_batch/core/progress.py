"""Progress lines for long steps: items done / total, rate, throughput and ETA, thread-safe."""

from __future__ import annotations

import logging
import sys
import threading
import time


def get_logger(name: str = "hpa_batch") -> logging.Logger:
    """The package logger, writing ``time level message`` lines to stderr once configured."""
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return logger


class Progress:
    """Counts finished items and logs a line at most every ``every_s`` seconds and at the end.

    Parameters
    ----------
    total : int
        Items expected.
    label : str
        Prefix of every line, e.g. ``"convert u-2-os-0000"``.
    """

    def __init__(self, total: int, label: str, every_s: float = 10.0, logger: logging.Logger | None = None):
        self.total, self.label, self.every_s = total, label, every_s
        self.logger = logger or get_logger()
        self.done, self.nbytes = 0, 0
        self.start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        """Record ``n`` more items (and ``nbytes`` processed); log if due."""
        with self._lock:
            self.done += n
            self.nbytes += nbytes
            now = time.monotonic()
            if now - self._last >= self.every_s or self.done >= self.total:
                self._last = now
                self.logger.info(self.line())

    def line(self) -> str:
        """The current progress line."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.label}: {self.done}/{self.total} images, {rate:.2f} img/s, "
            f"{self.nbytes / elapsed / 1e6:.1f} MB/s, elapsed {elapsed:.0f}s, eta {eta:.0f}s"
        )
