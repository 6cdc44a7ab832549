"""Per-request bounds both servers share: the in-flight limit, deadlines, and the errors they give.

Overload and faults get a clear answer fast: `Unavailable` (and `Overloaded`, when a limit is
full) is a 503 with `Retry-After` over REST and `UNAVAILABLE` over gRPC; a request that outlives
its deadline is a 504 / `DEADLINE_EXCEEDED`. Each inference request gets a deadline: the gRPC
client's own deadline, else `--request_timeout_seconds` from its arrival (REST requests are
answered 504 when it passes). The deadline lives in a context variable for the request's
task, so code further down (the batcher's queue, the transformer's call to the predictor) can
honour it without every signature carrying it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi import Request
from fastapi.responses import JSONResponse
from kserve.errors import ServerNotReady
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import pacing
from .logs import Throttled

logger = logging.getLogger(__name__)
_unavailable = Throttled(logger)

RETRY_AFTER_S = 1  # what a refused client is told to wait: about one queue's worth of work

# time.monotonic() by which the current request must be answered; None outside a request.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "request_deadline", default=None
)


class Unavailable(ServerNotReady):
    """This request cannot be served now (a component is down or shutting down): 503, retry."""

    def __init__(self, detail: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(detail)
        self.error_msg = detail  # kserve prefixes "Server is not ready."; the detail says more
        self.retry_after_s = retry_after_s

    @property
    def reason(self) -> str:
        """The message (kserve's gRPC error mapping reads `reason`)."""
        return self.error_msg


class Overloaded(Unavailable):
    """A limit is full (the batch queue, the requests in flight): refused at once, not queued."""


class DeadlinePassed(Exception):
    """The request's deadline passed before it was answered: 504 / DEADLINE_EXCEEDED."""


def deadline() -> float | None:
    """The current request's deadline (time.monotonic() seconds), or None outside a request."""
    return _DEADLINE.get()


def remaining(default: float) -> float:
    """Seconds left before the current request's deadline (at most `default`; `default` outside
    a request); never below zero."""
    due = _DEADLINE.get()
    if due is None:
        return default
    return max(0.0, min(default, due - time.monotonic()))


@contextmanager
def request_deadline(timeout_s: float, client_timeout_s: float | None = None) -> Iterator[float]:
    """Set the current request's deadline: the client's, capped at `timeout_s` from now."""
    budget = timeout_s if client_timeout_s is None else min(timeout_s, client_timeout_s)
    due = time.monotonic() + budget
    token = _DEADLINE.set(due)
    try:
        yield due
    finally:
        _DEADLINE.reset(token)


class InflightLimit:
    """The inference requests being served: at most `limit` at once (None: no count bound), and,
    with a `wait` target, none admitted whose expected wait (the requests in flight and itself,
    at the rate they have completed recently; common.pacing) is past it."""

    def __init__(self, limit: int | None, wait: pacing.WaitTarget | None = None) -> None:
        self.limit = limit
        self.wait = wait
        self.throughput = pacing.Throughput()
        self._busy = pacing.BusyClock()

    @property
    def current(self) -> int:
        """Requests in flight now."""
        return self._busy.active

    def overloaded(self) -> str | None:
        """Why one more request would be refused now, or None if it would be let in."""
        if self.limit is not None and self.current >= self.limit:
            return (
                f"{self.current} requests in flight already (--max_inflight_requests {self.limit})"
            )
        return None if self.wait is None else self.wait.refusal(self.current, 1, self.throughput)

    def acquire(self) -> None:
        """Take one slot; raises Overloaded at once when overloaded() says why not."""
        why = self.overloaded()
        if why is not None:
            raise Overloaded(f"{why}; retry in {RETRY_AFTER_S} s")
        self._busy.start()

    def release(self) -> None:
        """Give back a slot taken by acquire(): one request completed, and the busy time."""
        self.throughput.record(1, self._busy.finish())

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one slot for the block; raises Overloaded at once when all are taken."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


def is_inference(scope: Scope) -> bool:
    """Whether an HTTP request is an inference call (V1 :predict/:explain, V2 /infer)."""
    path: str = scope.get("path", "")
    return scope.get("method") == "POST" and (
        path.endswith("/infer") or path.endswith(":predict") or path.endswith(":explain")
    )


class RequestBoundsMiddleware:
    """For REST inference calls: the in-flight limit, the deadline, and a 504 when it passes."""

    def __init__(
        self,
        app: ASGIApp,
        inflight: InflightLimit,
        timeout_s: float,
    ) -> None:
        self.app = app
        self.inflight = inflight
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope):
            await self.app(scope, receive, send)
            return
        try:
            self.inflight.acquire()
        except Overloaded as exc:
            await send_error(
                scope, receive, send, 503, str(exc), {"retry-after": str(exc.retry_after_s)}
            )
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            with request_deadline(self.timeout_s):
                async with asyncio.timeout(self.timeout_s):
                    await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not started:
                await send_error(
                    scope,
                    receive,
                    send,
                    504,
                    f"no answer within {self.timeout_s:g} s (--request_timeout_seconds)",
                )
        finally:
            self.inflight.release()


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    error: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer an ASGI request with `status`, {"error": `error`} and `headers`, from middleware
    (before or outside any route, where no exception handler can answer): the same
    JSONResponse the routes' handlers return, run as an ASGI app."""
    await JSONResponse({"error": error}, status, headers)(scope, receive, send)


async def unavailable_handler(_: Request, exc: Exception) -> JSONResponse:
    """REST answer for Unavailable / Overloaded: 503 with Retry-After, no traceback logged."""
    retry_after = getattr(exc, "retry_after_s", RETRY_AFTER_S)
    _unavailable.warning("503: %s", exc)
    return JSONResponse(
        status_code=503, content={"error": str(exc)}, headers={"Retry-After": str(retry_after)}
    )


async def deadline_handler(_: Request, exc: Exception) -> JSONResponse:
    """REST answer for DeadlinePassed: 504."""
    logger.warning("504: %s", exc)
    return JSONResponse(status_code=504, content={"error": str(exc)})
