"""The batch command line: `python -m batch SOURCE ...` runs a job (batch.job); `python -m batch
labels ...` and `python -m batch evaluate ...` are ground truth (batch.ground_truth)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

GROUND_TRUTH_COMMANDS = ("labels", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch on the first argument; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in GROUND_TRUTH_COMMANDS:
        from .ground_truth import main as ground_truth

        return ground_truth(args)
    from .job import main as job

    return job(args)
