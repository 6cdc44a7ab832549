"""Command line: `python -m bench --model_dir model_repository --out bench-results [--quick]`."""

from __future__ import annotations

import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main())
