"""Adaptive batching: concurrent requests share one forward pass, whatever protocol they came by.

kserve batches V1 only (and outside the process); this batcher sits behind V1, V2 REST and V2
gRPC alike. A request is named tensors (`{name: array}`, batch dimension first, one batch size),
validated against the model's contract before it is queued, so a bad request never joins a
batch. A pass concatenates every named input of its requests and splits every named output by
each request's rows (as PyTriton's `@batch` does); requests whose tensors differ in datatype or
in any dimension past the batch never share a pass.

Policy: the worker takes what is queued the moment it is free. It waits up to
`max_delay_s` for more only when there is load (the previous batch held more than one request,
or more are already queued), so a lone request at low load never pays the delay.

Bounds, both checked before a request is queued (past either `submit` raises QueueFull at once,
never queues without limit): the expected wait, the images ahead of a request (queued and in
the pass running) over the images per second of forward-pass time measured recently
(common.pacing), must be within `max_wait`, so the bound means the same time on every engine
and CPU; and at most `max_queue_size` images wait (a memory bound). A request whose caller has
gone or whose deadline passed leaves the queue without running. A failure anywhere in a batch
fails exactly that batch's requests and the worker carries on; `close()` fails whatever is still
queued.

With tracing on (common.telemetry), each request's wait in the queue is a span of its own, and
each forward pass one span, child of its first request's and linked to every request it served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from prometheus_client import Histogram

from common import ids, telemetry
from common.pacing import BusyClock, Throughput, WaitTarget
from runtime.tensors import Tensors, rows_of, split_rows

logger = logging.getLogger(__name__)

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


class QueueFull(Exception):
    """The queue is full (by its expected wait or its images): the request was refused, not
    queued."""


class DeadlineExpired(Exception):
    """The request's deadline passed while it waited: it left the queue without running."""


class BatcherClosed(Exception):
    """The batcher is shutting down: the request was not (or will not be) run."""


class BatchFailed(RuntimeError):
    """The batch this request was in failed outside the model (a wrong result, say)."""


Run = Callable[[Tensors], Awaitable[Tensors]]
Kind = tuple[tuple[str, np.dtype, tuple[int, ...]], ...]


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    future: asyncio.Future[Tensors]
    deadline: float | None  # time.monotonic() seconds
    queued_at: float = field(default_factory=time.monotonic)
    queued: bool = True  # counted in the queue's images until taken or finished
    timer: asyncio.TimerHandle | None = None
    trace: Any = None  # the submitter's trace context, with tracing on
    request_id: str | None = None  # likewise
    queued_ns: int = 0  # likewise: when it was queued, in wall-clock ns

    @cached_property
    def kind(self) -> Kind:
        """What must match for two requests to share a pass: names, datatypes, dims."""
        return tuple(
            (name, array.dtype, array.shape[1:]) for name, array in sorted(self.inputs.items())
        )


class AdaptiveBatcher:
    """Gathers named-tensor requests into batches of at most `max_batch_size` rows for `run`."""

    def __init__(
        self,
        run: Run | Sequence[Run],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int | None = None,
        max_wait: WaitTarget | None = None,
        span_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """`run` computes one batch (a ForwardWorker's `run`, say); the batcher awaits one call
        of it at a time. Several (model instances, Triton's `instance_group count`) run batches
        at once: each takes the next batch when it is free, so a batch goes to a free instance,
        the least loaded. `max_queue_size` images may wait (None: no bound; it must hold at
        least one full batch); `max_wait` bounds the expected wait in seconds (None: no time bound).
        `span_attributes` go on every forward pass's span (the model, its version, the engine).
        Raises ValueError for impossible sizes."""
        if max_queue_size is not None and max_queue_size < max_batch_size:
            raise ValueError(
                f"max_queue_size {max_queue_size} is below max_batch_size {max_batch_size}: "
                "a full request could never be queued"
            )
        self._runs = list(run) if isinstance(run, Sequence) else [run]
        if not self._runs:
            raise ValueError("no model instance to run batches on")
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.max_wait = max_wait
        self.throughput = Throughput()  # images per second of forward-pass time
        self._busy = BusyClock()  # overlapping passes of several instances count once
        self._running_rows = 0
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._last_requests = 1
        self.span_attributes = dict(span_attributes or {})

    @property
    def queued_images(self) -> int:
        """Images waiting for a forward pass now."""
        return self._queued_rows

    def refusal(self, rows: int = 1) -> str | None:
        """Why a request of `rows` images would be refused now (its expected wait, or the
        queue's images), or None when it would be queued."""
        if self.max_wait is not None:
            queued = self._queued_rows + self._running_rows
            reason = self.max_wait.refusal(queued, rows, self.throughput)
            if reason is not None:
                return reason
        if self.max_queue_size is not None and self._queued_rows + rows > self.max_queue_size:
            return (
                f"{self._queued_rows} images already wait for a forward pass "
                f"(--max_queue_size {self.max_queue_size})"
            )
        return None

    async def submit(
        self, inputs: Tensors, deadline: float | None = None, admitted: bool = False
    ) -> Tensors:
        """Run `inputs` (named tensors of one batch size, at most max_batch_size rows) in some
        batch; returns its own rows of every output.

        `deadline` is a time.monotonic() value; `admitted` says the caller has checked
        `refusal()` for a whole request of which this is a part (it is then not refused). Raises
        ValueError (bad size, or tensors whose batch sizes differ), QueueFull, DeadlineExpired,
        BatcherClosed, BatchFailed, or what `run` raised for its batch.
        """
        rows = rows_of(inputs)
        if not 0 < rows <= self.max_batch_size:
            raise ValueError(f"batch of {rows} rows, limit {self.max_batch_size}")
        if self._closed:
            raise BatcherClosed("the batcher is closed: the server is shutting down")
        refused = None if admitted else self.refusal(rows)
        if refused is not None:
            raise QueueFull(refused)
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        pending = _Pending(dict(inputs), rows, loop.create_future(), deadline)
        if telemetry.enabled():
            pending.trace, pending.request_id = telemetry.current(), ids.current_request_id()
            pending.queued_ns = telemetry.now_ns()
        if deadline is not None:
            pending.timer = loop.call_at(
                loop.time() + (deadline - time.monotonic()), self._expire, pending
            )
        pending.future.add_done_callback(lambda _: self._dequeue(pending))
        self._queue.append(pending)
        self._queued_rows += rows
        self._arrived.set()
        return await pending.future

    def close(self) -> None:
        """Stop the worker; fail every queued request (and the batch in progress) with
        BatcherClosed."""
        self._closed = True
        error = BatcherClosed("the server is shutting down")
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(error)
        for worker in self._workers:
            worker.cancel()

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._workers and not any(w.done() for w in self._workers):
            return
        if self._workers:  # one ended: never expected, so say so and start them again
            logger.error("batcher worker ended unexpectedly; restarting the workers")
            for worker in self._workers:
                worker.cancel()
        self._arrived = asyncio.Event()  # bound to this loop on first use
        self._workers = [loop.create_task(self._serve(run)) for run in self._runs]

    def _dequeue(self, pending: _Pending) -> None:
        """Stop counting `pending` in the queue (taken into a batch, finished or cancelled)."""
        if pending.queued:
            pending.queued = False
            self._queued_rows -= pending.rows
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _expire(self, pending: _Pending) -> None:
        if pending.queued and not pending.future.done():
            waited = time.monotonic() - pending.queued_at
            pending.future.set_exception(
                DeadlineExpired(f"deadline passed after {waited:.3f} s waiting in the queue")
            )

    async def _serve(self, run: Run) -> None:
        while True:
            batch = await self._gather()
            try:
                await self._execute(batch, run)
            except Exception as exc:  # a bug outside the forward pass: fail this batch only
                logger.exception("batch of %d requests failed", len(batch))
                self._fail(batch, BatchFailed(f"the batch failed: {type(exc).__name__}: {exc}"))

    def _pop_live(self) -> _Pending | None:
        """The first queued request still wanted, or None; drops the cancelled and expired."""
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # cancelled by its caller, or expired
                continue
            if pending.deadline is not None and time.monotonic() >= pending.deadline:
                self._expire(pending)
                continue
            self._dequeue(pending)
            return pending
        return None

    async def _next(self) -> _Pending:
        """The next live request, waiting as long as it takes."""
        while True:
            pending = self._pop_live()
            if pending is not None:
                return pending
            self._arrived.clear()
            await self._arrived.wait()

    async def _next_within(self, timeout: float) -> _Pending | None:
        """The next live request if one arrives within `timeout` seconds, else None."""
        end = time.monotonic() + timeout
        while True:
            pending = self._pop_live()
            remaining = end - time.monotonic()
            if pending is not None or remaining <= 0:
                return pending
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return self._pop_live()

    async def _gather(self) -> list[_Pending]:
        first = await self._next()
        batch, rows = [first], first.rows
        loaded = self._last_requests > 1 or bool(self._queue)
        deadline = time.monotonic() + (self.max_delay_s if loaded else 0.0)
        while rows < self.max_batch_size:
            item = await self._next_within(deadline - time.monotonic())
            if item is None:
                break
            if item.kind != first.kind or rows + item.rows > self.max_batch_size:
                self._requeue(item)  # starts the next batch
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _requeue(self, pending: _Pending) -> None:
        pending.queued = True
        self._queued_rows += pending.rows
        self._queue.appendleft(pending)

    async def _execute(self, batch: list[_Pending], run: Run) -> None:
        live = [p for p in batch if not p.future.done()]  # callers may have gone away
        if not live:
            return
        started = time.monotonic()
        for pending in live:
            QUEUE_SECONDS.observe(started - pending.queued_at)
        traced = telemetry.enabled()
        if traced:
            started_ns = telemetry.now_ns()
            for pending in live:
                telemetry.record_span(
                    "queue",
                    pending.trace,
                    pending.queued_ns or started_ns,
                    started_ns,
                    {telemetry.IMAGES: pending.rows},
                )
        inputs = live[0].inputs if len(live) == 1 else _concatenate([p.inputs for p in live])
        # torch.from_numpy wants memory it may write to (a request's buffer may be read-only).
        inputs = {n: a if a.flags.writeable else a.copy() for n, a in inputs.items()}
        rows = sum(p.rows for p in live)
        BATCH_SIZE.observe(rows)
        BATCH_REQUESTS.observe(len(live))
        self._last_requests = len(live)
        self._running_rows += rows
        self._busy.start()
        try:
            if traced:
                outputs = await self._traced(run, inputs, live, rows)
            else:
                outputs = await run(inputs)
        except asyncio.CancelledError:
            self._fail(live, BatcherClosed("the server is shutting down"))
            raise
        except Exception as exc:  # a failed forward pass fails exactly the requests in it
            self._fail(live, exc)
            return
        finally:
            self._running_rows -= rows
            busy = self._busy.finish()
        self.throughput.record(rows, busy)
        wrong = _wrong_rows(outputs, rows)
        if wrong is not None:
            self._fail(
                live,
                BatchFailed(
                    f"the model returned {wrong} for a batch of {rows} rows: "
                    "expected one result row per input row"
                ),
            )
            return
        for pending, part in zip(live, split_rows(outputs, [p.rows for p in live]), strict=True):
            if not pending.future.done():
                pending.future.set_result(part)

    async def _traced(self, run: Run, inputs: Tensors, live: list[_Pending], rows: int) -> Tensors:
        """`run(inputs)` inside the forward pass's span, linked to every request in it."""
        attributes = {
            **self.span_attributes,
            telemetry.BATCH_SIZE: rows,
            telemetry.BATCH_REQUESTS: len(live),
            telemetry.REQUEST_IDS: [p.request_id or "" for p in live],
        }
        with telemetry.shared_span(
            "forward", telemetry.SpanKind.INTERNAL, [p.trace for p in live], attributes
        ):
            return await run(inputs)

    @staticmethod
    def _fail(batch: list[_Pending], error: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)


def _concatenate(requests: list[Tensors]) -> Tensors:
    """One batch of every named input, the requests' rows in order."""
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def _wrong_rows(outputs: object, rows: int) -> str | None:
    """What is wrong with a pass's outputs for `rows` input rows, or None when each output is
    an array of `rows` rows."""
    if not isinstance(outputs, dict) or not outputs:
        return f"{type(outputs).__name__}, not named arrays"
    shapes = {
        name: list(array.shape) if isinstance(array, np.ndarray) else type(array).__name__
        for name, array in outputs.items()
    }
    if all(isinstance(a, np.ndarray) and a.ndim and a.shape[0] == rows for a in outputs.values()):
        return None
    return str(shapes)
