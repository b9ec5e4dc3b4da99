"""``python -m hpa_batch.cli`` (how torchrun starts a multi-GPU training)."""

import sys

from hpa_batch.cli import main

if __name__ == "__main__":
    sys.exit(main())
