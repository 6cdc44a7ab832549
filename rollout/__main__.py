"""Entry point for `python -m rollout` and the `image-classifier-rollout` console script."""

import sys

from rollout.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
