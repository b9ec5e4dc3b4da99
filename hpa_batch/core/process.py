"""The process's place in a distributed job (torchrun's ``RANK`` / ``LOCAL_RANK``; 0 when run alone).

The one reader of those variables: receipts, locks, test hooks and logging act on rank 0 only, as
every rank of one training is the same job.
"""

from __future__ import annotations

import os


def rank() -> int:
    """Global rank of this process (``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank of this process on its node (``LOCAL_RANK``; 0 outside torchrun): its GPU index."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank0() -> bool:
    """Whether this process is rank 0 (the one that records, locks and reports)."""
    return rank() == 0
