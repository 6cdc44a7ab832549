"""Hold the predictor's forward passes while a gate file exists: a busy predictor on demand;
and a faulty or slow one (FORWARD_FAIL_EVERY, FORWARD_SLOW_DOWN_S: see `faults`).

A test that needs requests waiting in the predictor's queue (to expire a deadline, say) makes
that condition itself instead of hoping the model is slow enough on this CPU. Put this
directory on the server's PYTHONPATH and name a gate file in HELD_FORWARD_GATE: while the file
exists, every forward pass waits before it runs, on the forward thread as a slow model would
(the event loop stays free), and `<gate>.held` appears once one does.
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
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

TARGET = "runtime.worker"
POLL_S = 0.01
FAIL_EVERY = "FORWARD_FAIL_EVERY"  # N: every Nth forward pass raises
SLOW_DOWN = "FORWARD_SLOW_DOWN_S"  # S: every pass then waits as long again as it ran, at least S


class _HeldEngine:
    """An engine whose passes wait, on the thread that runs them (the forward thread), while
    the gate exists: a model that takes that long, so the event loop must stay free."""

    def __init__(self, engine: Any, gate: Path) -> None:
        self._engine = engine
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)  # what the engine says of itself

    def run(self, batch: Any) -> Any:
        if self._gate.exists():
            self._gate.with_name(self._gate.name + ".held").touch()
            while self._gate.exists():
                time.sleep(POLL_S)
        return self._engine.run(batch)


def hold(module: ModuleType, gate: Path) -> None:
    """Make each ForwardWorker's engine wait, inside its forward pass, while `gate` exists."""
    worker = module.ForwardWorker
    original = worker.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.engine = _HeldEngine(self.engine, gate)

    worker.__init__ = __init__


def faults(module: ModuleType, fail_every: int, slow_down_s: float) -> None:
    """Wrap `module.ForwardWorker.run` so that every `fail_every`th pass raises RuntimeError (a
    model that fails on some batches) and each pass that returns first waits as long again as
    it ran, at least `slow_down_s` (a model at least twice as slow, on any CPU)."""
    worker = module.ForwardWorker
    original = worker.run
    passes = 0

    async def run(self: Any, batch: Any) -> Any:
        nonlocal passes
        passes += 1
        if fail_every and passes % fail_every == 0:
            raise RuntimeError(f"injected fault: forward pass {passes} fails ({FAIL_EVERY})")
        started = time.perf_counter()
        result = await original(self, batch)
        if slow_down_s:
            await asyncio.sleep(max(time.perf_counter() - started, slow_down_s))
        return result

    worker.run = run


class _HoldOnImport(importlib.abc.MetaPathFinder):
    """Finds TARGET as usual, then wraps it once its module has run."""

    def __init__(self, gate: Path | None, fail_every: int, slow_down_s: float) -> None:
        self.gate = gate
        self.fail_every = fail_every
        self.slow_down_s = slow_down_s

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
        finder = self

        def exec_module(module: ModuleType) -> None:
            execute(module)
            if finder.fail_every or finder.slow_down_s:
                faults(module, finder.fail_every, finder.slow_down_s)
            if finder.gate is not None:
                hold(module, finder.gate)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_gate = os.environ.get("HELD_FORWARD_GATE")
_fail_every = int(os.environ.get(FAIL_EVERY) or 0)
_slow_down_s = float(os.environ.get(SLOW_DOWN) or 0)
if _gate or _fail_every or _slow_down_s:
    sys.meta_path.insert(
        0, _HoldOnImport(Path(_gate) if _gate else None, _fail_every, _slow_down_s)
    )
