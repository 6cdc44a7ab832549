"""Adaptive batching: concurrent requests share one forward pass, whatever protocol they came by.

kserve batches V1 only (and outside the process); this batcher sits behind V1, V2 REST and V2
gRPC alike. Requests are validated before they are queued, so a bad request never joins a
batch; each caller gets its own slice of the result.

Policy: the worker takes what is queued the moment it is free. It waits up to
`max_delay_s` for more only when there is load (the previous batch held more than one request,
or more are already queued), so a lone request at low load never pays the delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Histogram

BATCH_SIZE = Histogram(
    "predictor_batch_size",
    "Images per forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_REQUESTS = Histogram(
    "predictor_batch_requests",
    "Requests sharing one forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_SECONDS = Histogram(
    "predictor_queue_seconds",
    "Time a request waited for its forward pass to start.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


@dataclass
class _Pending:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def kind(self) -> tuple[np.dtype, tuple[int, ...]]:
        return self.array.dtype, self.array.shape[1:]


class AdaptiveBatcher:
    """Gathers arrays [n, ...] into batches of at most `max_batch_size` rows for `run`."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_delay_s: float,
        executor: ThreadPoolExecutor,
    ) -> None:
        """`run` is called on `executor`, which must have one thread: torch parallelises inside
        a forward pass, passes run one at a time. The batcher shuts it down on close()."""
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._executor = executor
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending | None = None
        self._last_requests = 1

    async def submit(self, array: np.ndarray) -> np.ndarray:
        """Run `array` (at most max_batch_size rows) in some batch; returns its own rows."""
        if not 0 < array.shape[0] <= self.max_batch_size:
            raise ValueError(f"batch of {array.shape[0]} rows, limit {self.max_batch_size}")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        pending = _Pending(array, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        """Stop the worker and the forward thread."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        while True:
            batch = await self._gather()
            await self._execute(batch)

    async def _gather(self) -> list[_Pending]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.array.shape[0]
        loaded = self._last_requests > 1 or not self._queue.empty()
        deadline = time.perf_counter() + (self.max_delay_s if loaded else 0.0)
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item.kind != first.kind or rows + item.array.shape[0] > self.max_batch_size:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            rows += item.array.shape[0]
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away
        if not live:
            return
        started = time.perf_counter()
        for pending in live:
            QUEUE_SECONDS.observe(started - pending.queued_at)
        inputs = live[0].array if len(live) == 1 else np.concatenate([p.array for p in live])
        if not inputs.flags.writeable:
            inputs = inputs.copy()  # torch.from_numpy wants memory it may write to
        BATCH_SIZE.observe(inputs.shape[0])
        BATCH_REQUESTS.observe(len(live))
        self._last_requests = len(live)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        except Exception as exc:  # a failed forward pass fails exactly the requests in it
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in live:
            end = start + pending.array.shape[0]
            if not pending.future.done():
                pending.future.set_result(outputs[start:end])
            start = end
