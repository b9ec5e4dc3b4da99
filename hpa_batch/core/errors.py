"""Ground-floor errors: a damaged file named where it is read, an unsafe checkpoint, printable text.

:class:`DamagedFileError` is the one error a stage raises for a damaged input: one line naming the
file, the reason and the repair command. :func:`reading` turns a decode failure inside a read into
it. This module imports nothing of the package (``tests/test_layers.py``), so every floor may use it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DamagedFileError", "UnsafeCheckpointError", "is_decode_error", "printable", "reading", "reason_of"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): an id or a reason printed
    into a log or a summary can never start a line of its own or drive the terminal."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))


class DamagedFileError(Exception):
    """A stage's input cannot be decoded: ``<file> is damaged (<reason>): run hpa-batch repair <file>``."""

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:  # re-raised from its message (a DataLoader worker's exception)
            super().__init__(str(path))
            self.path, self.reason = Path(), ""
            return
        self.path, self.reason = Path(path), printable(reason)
        super().__init__(
            f"{printable(self.path)} is damaged ({self.reason}): run hpa-batch repair {printable(shlex.quote(str(self.path)))}"
            " (it removes the damaged file and prints the command that redoes it)"
        )

    @staticmethod
    def line_of(exc: BaseException) -> str | None:
        """The one "<file> is damaged (...)" line in ``exc``'s message (a worker's wraps it), or None."""
        for line in reversed(str(exc).splitlines()):
            if " is damaged (" in line:
                return line.split("DamagedFileError: ")[-1].strip()
        return None


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle refers to code (a global outside torch's safe list): never loaded;
    the message is "<file> is not a safe checkpoint (<global>)"."""


def reason_of(exc: BaseException) -> str:
    """``exc``'s message on one line, at most 200 characters (its type name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def is_decode_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a decoder raises on bytes that are not what they should be (a missing
    file, a permission or a system error is not damage)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, MemoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # a system error (disk full, I/O) is reported as such, not as damage
    return isinstance(exc, Exception)


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a decode failure of ``path`` inside the block into :class:`DamagedFileError` (a missing or
    unreadable file and system errors pass through unchanged)."""
    try:
        yield
    except DamagedFileError:
        raise
    except Exception as exc:
        if not is_decode_error(exc):
            raise
        raise DamagedFileError(path, reason_of(exc)) from exc
