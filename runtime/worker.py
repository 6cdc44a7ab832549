"""The forward thread: the one thread a model engine is built, warmed up and run on.

Engines that parallelise inside a forward pass (torch with OpenMP, onnxruntime's intra-op
pool) want their passes run one at a time from one and the same thread: OpenMP keeps a thread
team per calling thread, and a second team (say, on the event loop's thread) made libgomp see
more threads than CPUs and throttle its spinning, which doubled the batch-1 forward time here.
`ForwardWorker` owns that thread; nothing else in the predictor knows it exists. Callers hand
it a builder (constructing and warming the engine, run on the forward thread) and then await
`run(batch)`. The thread runs at a lower priority than the event loop (common.cpus).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

from common.cpus import FORWARD_NICENESS, lower_thread_priority

from .tensors import Runner, Tensors

E = TypeVar("E", bound=Runner)


class ForwardWorker(Generic[E]):
    """Builds an engine on its own thread and runs every batch there, one at a time."""

    def __init__(self, build: Callable[[], E], name: str = "forward") -> None:
        """Start the thread and run `build` on it (blocking); re-raises what `build` raises."""
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=name,
            initializer=lower_thread_priority,
            initargs=(FORWARD_NICENESS,),
        )
        try:
            self.engine: E = self._executor.submit(build).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def run(self, batch: Mapping[str, np.ndarray]) -> Tensors:
        """The engine's outputs for `batch` (named tensors), computed on the forward thread.

        Raises what the engine raises, or RuntimeError once the worker is closed.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.engine.run, batch)

    def close(self) -> None:
        """Stop the thread once the pass in progress (if any) ends; later runs raise."""
        self._executor.shutdown(wait=False, cancel_futures=True)
