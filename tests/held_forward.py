"""A predictor whose forward passes a test can hold, fail or slow down: the environments and
the gate.

`env(gate)` is the environment for a server process (or `scripts/serve.py`, whose children
inherit it) that loads `tests/held/sitecustomize.py`; `holding(gate)` holds every forward pass
of those processes for the length of a `with` block. See `held/sitecustomize.py` for how.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HELD_DIR = Path(__file__).with_name("held")


def env(gate: Path) -> dict[str, str]:
    """This process's environment plus what makes a child's forward passes wait on `gate`."""
    return {**_with_held_dir(), "HELD_FORWARD_GATE": str(gate)}


def faulty_env(fail_every: int = 0, slow_down_s: float = 0.0) -> dict[str, str]:
    """This process's environment plus what makes every `fail_every`th forward pass of a child
    raise, and each pass take twice as long, at least `slow_down_s` more."""
    return {
        **_with_held_dir(),
        "FORWARD_FAIL_EVERY": str(fail_every),
        "FORWARD_SLOW_DOWN_S": str(slow_down_s),
    }


def _with_held_dir() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(HELD_DIR), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def holding(gate: Path) -> Iterator[None]:
    """Hold every forward pass (from the next one on) until the block ends."""
    held_marker(gate).unlink(missing_ok=True)
    gate.touch()
    try:
        yield
    finally:
        gate.unlink(missing_ok=True)


def held_marker(gate: Path) -> Path:
    """The file that appears once a pass waits on `gate`."""
    return gate.with_name(gate.name + ".held")


def wait_until_held(gate: Path, timeout_s: float = 30.0) -> None:
    """Return once a forward pass waits on `gate`; raises TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not held_marker(gate).exists():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no forward pass waited on {gate} within {timeout_s:.0f} s")
        time.sleep(0.01)
