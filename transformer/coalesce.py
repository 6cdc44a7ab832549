"""Coalescing: concurrent client requests share one predictor call; each gets its own rows back.

The predictor batches across its callers, but every call still costs both servers a gRPC round
trip in Python, and with a model that costs nothing (a GPU) those calls are the limit. So the
transformer gathers the pixels of concurrent requests into one call and splits the logits.

Policy, as the predictor's batcher: a request that finds no call to the predictor in flight is
sent at once (no delay at low load). Under load (a call in flight, or others already waiting)
it waits at most `max_delay_s` for more, and a batch leaves as soon as it holds `max_images`.
A failed call fails exactly the requests in it; a caller that went away is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np


class Rows(Protocol):
    """An answer whose rows can be sliced: an array, or an array with what came with it."""

    def __getitem__(self, rows: slice, /) -> Self: ...


A = TypeVar("A", bound=Rows)
# send(pixels, tags): one call for the rows of every request in it; `tags` holds what each
# request's caller passed to submit (its request id and headers, say), in row order.
Send = Callable[[np.ndarray, Sequence[Any]], Awaitable[A]]


@dataclass
class _Waiting(Generic[A]):
    pixels: np.ndarray
    tag: Any
    future: asyncio.Future[A]


class Coalescer(Generic[A]):
    """Gathers arrays [n, ...] into calls of at most `max_images` rows to `send`, whose answer
    (an array, or anything sliced by rows) is split among the requests."""

    def __init__(self, send: Send[A], max_images: int, max_delay_s: float) -> None:
        """`send` takes [N, ...] and the requests' tags and answers [N, ...]; it may run
        several calls at once."""
        if max_images < 1 or max_delay_s < 0:
            raise ValueError(
                f"max_images {max_images} must be >= 1 and max_delay_s {max_delay_s} >= 0"
            )
        self._send = send
        self.max_images = max_images
        self.max_delay_s = max_delay_s
        self._waiting: list[_Waiting[A]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Calls to the predictor not yet answered."""
        return self._in_flight

    async def submit(self, pixels: np.ndarray, tag: Any = None) -> A:
        """Send `pixels` (1 to max_images rows) in some call; returns their own rows of the
        answer. Raises what `send` raised for that call, or ValueError for a bad row count."""
        rows = pixels.shape[0]
        if not 0 < rows <= self.max_images:
            raise ValueError(f"{rows} rows, expected 1 to {self.max_images}")
        if self._in_flight == 0 and not self._waiting:
            return await self._call(pixels, [tag])  # low load: no waiting, no copy
        if self._rows + rows > self.max_images:
            self._flush()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(pixels, tag, future))
        self._rows += rows
        if self._rows >= self.max_images or self.max_delay_s == 0:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self._flush)
        return await future

    async def _call(self, pixels: np.ndarray, tags: Sequence[Any]) -> A:
        self._in_flight += 1
        try:
            return await self._send(pixels, tags)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._waiting:
                self._flush()  # no call left to wait behind: keep the predictor busy

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting, self._rows = self._waiting, [], 0
        live = [w for w in batch if not w.future.done()]
        if live:
            task = asyncio.get_running_loop().create_task(self._answer(live))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, batch: list[_Waiting[A]]) -> None:
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([w.pixels for w in batch])
        try:
            answer = await self._call(pixels, [w.tag for w in batch])
        except Exception as exc:  # the call failed: so did every request in it
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        start = 0
        for waiting in batch:
            end = start + waiting.pixels.shape[0]
            if not waiting.future.done():
                waiting.future.set_result(answer[start:end])
            start = end
