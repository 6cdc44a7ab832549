"""Hold the predictor's forward passes while a gate file exists: a busy predictor on demand.

A test that needs requests waiting in the predictor's queue (to expire a deadline, say) makes
that condition itself instead of hoping the model is slow enough on this CPU. Put this
directory on the server's PYTHONPATH and name a gate file in HELD_FORWARD_GATE: while the file
exists, every forward pass waits before it runs, and `<gate>.held` appears once one does.
Delete the gate and the passes run. Without HELD_FORWARD_GATE this does nothing.

(Python imports `sitecustomize` at start from the path, so the servers' own processes, and
the children `scripts/serve.py` starts, pick it up with no change to the product.)
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

TARGET = "runtime.worker"
POLL_S = 0.01


def hold(module: ModuleType, gate: Path) -> None:
    """Wrap `module.ForwardWorker.run` so that each pass waits while `gate` exists."""
    worker = module.ForwardWorker
    original = worker.run

    async def run(self: Any, batch: Any) -> Any:
        if gate.exists():
            gate.with_name(gate.name + ".held").touch()
            while gate.exists():
                await asyncio.sleep(POLL_S)
        return await original(self, batch)

    worker.run = run


class _HoldOnImport(importlib.abc.MetaPathFinder):
    """Finds TARGET as usual, then wraps it once its module has run."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        execute = loader.exec_module
        gate = self.gate

        def exec_module(module: ModuleType) -> None:
            execute(module)
            hold(module, gate)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("HELD_FORWARD_GATE"):
    sys.meta_path.insert(0, _HoldOnImport(Path(os.environ["HELD_FORWARD_GATE"])))
