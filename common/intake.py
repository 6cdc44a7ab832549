"""How an HTTP request gets in: connections, request heads and bodies, each under a bound.

One client must not be able to take a server down with idle connections or slow or large
bodies (Slowloris, slow POST), so, before a request reaches any route:

- **Connections** past `--max_connections` are answered 503 and closed at once.
- **Heads**: a connection must send a complete request head within `--header_timeout_seconds`
  of its first byte (or of connecting), in at most `MAX_HEADER_BYTES`; else it is closed (431
  when too large). Idle keep-alive connections are closed by uvicorn's `--timeout_keep_alive`.
- **Bodies** are read here, whole, before the request is admitted anywhere else, so requests
  still reading their bodies hold no in-flight slot (common.admission counts only requests
  with their body in hand). A body must arrive within `--body_timeout_seconds`, plus one
  second for every `--body_min_bytes_per_second` received (Apache's mod_reqtimeout scheme:
  a slow but steady upload is not cut off, a trickle is); else 408. Bodies over
  `--max_request_bytes` are answered 413 (by the declared Content-Length, before any byte is
  read), and bodies whose memory does not fit the budget (common.budget) 503 with Retry-After
  (by the declared size before any byte is read, else when the byte that does not fit comes).

Every refusal closes the connection (`Connection: close`), after a lingering close (see
`protocol_class`), so the rest of a refused body is read and dropped, never kept.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import admission, budget, codecs
from .admission import RETRY_AFTER_S
from .budget import REST_COPIES, RequestMemory
from .cli import positive_float, positive_int
from .ids import new_request_id
from .logs import Throttled
from .metrics import request_protocol

logger = logging.getLogger(__name__)
_refusals = Throttled(logger)

# A request head (request line and headers) is a few hundred bytes; browsers with many cookies
# send a few KiB. 64 KiB is twice what nginx accepts by default (4 x 8 KiB buffers) and four
# times Node's limit; it bounds what a connection holds before its request starts.
MAX_HEADER_BYTES = 64 * 1024
# A client on loopback or in the cluster sends a request head in milliseconds; 10 s leaves
# room for a slow mobile uplink and still frees a Slowloris connection quickly.
DEFAULT_HEADER_TIMEOUT_S = 10.0
# The body's grace period and the rate that extends it. 10 s carries any image request at
# cluster speeds; past it, a body must keep arriving at 64 KiB/s or more on average (a 16 MiB
# body then has 10 + 256 s at most). A 1-byte-per-second sender is cut off after 10 s.
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_BODY_MIN_RATE = 64 * 1024
# Connections one server holds at once. Each idle one costs a few KiB (the protocol object,
# its buffers); 1024 is nginx's usual worker_connections. Far above what the in-flight limits
# admit, so ordinary clients with connection pools never meet it.
DEFAULT_MAX_CONNECTIONS = 1024


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the connection, header and body bounds (both components take them)."""
    parser.add_argument(
        "--max_connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="Most HTTP connections held at once; past it a new one is answered 503 and closed.",
    )
    parser.add_argument(
        "--header_timeout_seconds",
        type=positive_float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="Longest time for a connection to send a complete request head; then it is closed.",
    )
    parser.add_argument(
        "--body_timeout_seconds",
        type=positive_float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="Time for a request body to arrive (extended by --body_min_bytes_per_second); "
        "past it the request is answered 408 and its connection closed.",
    )
    parser.add_argument(
        "--body_min_bytes_per_second",
        type=positive_int,
        default=DEFAULT_BODY_MIN_RATE,
        help="Each this many body bytes received extend --body_timeout_seconds by one second.",
    )


@dataclass(frozen=True)
class IntakeSettings:
    """The bounds on connections, request heads and bodies of one HTTP server."""

    max_request_bytes: int
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    body_min_rate: int = DEFAULT_BODY_MIN_RATE

    @classmethod
    def from_args(cls, args: argparse.Namespace, max_request_bytes: int) -> IntakeSettings:
        """The settings from parsed flags (see add_flags)."""
        return cls(
            max_request_bytes=max_request_bytes,
            max_connections=args.max_connections,
            header_timeout_s=args.header_timeout_seconds,
            body_timeout_s=args.body_timeout_seconds,
            body_min_rate=args.body_min_bytes_per_second,
        )


# --- the connection: uvicorn's httptools protocol with limits ---------------------------


def protocol_class(
    settings: IntakeSettings,
    overloaded: Callable[[], str | None] = lambda: None,
    refused: Callable[[str], None] = lambda protocol: None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools HTTP/1.1 protocol with the connection cap, the header bounds, the
    overload refusal and a lingering close.

    Overload: once an inference request's head is in, `overloaded()` says why it would be
    refused (None: it would not be); such a request is answered 503 + Retry-After right there,
    from bytes made here, before its body is read and before any ASGI machinery runs for it
    (a refusal must not wait behind the work it refuses: measured under a burst of 224 at once,
    the ASGI path took ~1 ms each and the last refusal of the burst ~300 ms). `refused(protocol)`
    is told of each (to count it). It comes before authentication: an overloaded server refuses
    everybody alike, and checking a key costs more than the refusal.

    uvicorn 0.55 has no header timeout and counts connections only when a request starts
    (`limit_concurrency`, which would also count requests in flight), so both are added here;
    uvicorn.Config takes a protocol class for its `http` setting. Lingering close: a refusal
    sent while the request's body is still arriving (413, 408, 503) closes the connection, and
    closing a socket with unread data resets it, so a client still sending (most write the
    whole body before they read) would see a reset instead of the answer. As nginx does, the
    connection is half-closed instead and what still arrives is read and dropped, for at most
    `LINGER_S`.
    """

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _own: _LingeringTransport
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _reading_head = True
        _body_pending = False
        _lingering = False
        _shed = False  # this request was refused for overload; its body is dropped unread

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._own = _LingeringTransport(transport, self)
            super().connection_made(cast(asyncio.Transport, self._own))
            if len(self.connections) > settings.max_connections:
                logger.warning(
                    "refused a connection: %d open (--max_connections %d)",
                    len(self.connections) - 1,
                    settings.max_connections,
                )
                self._refuse(
                    503,
                    f"{len(self.connections) - 1} connections open already (--max_connections "
                    f"{settings.max_connections}); retry in {RETRY_AFTER_S} s",
                    retry_after=True,
                )
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # a refused body's rest: dropped unread
            if self._reading_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._reading_head and self._head_bytes > MAX_HEADER_BYTES:
                self._refuse(431, f"request head over {MAX_HEADER_BYTES} bytes")

        def eof_received(self) -> bool | None:  # type: ignore[override]
            if self._lingering:
                self._own.close_now()
            return super().eof_received()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._reading_head:  # the next request on a kept-alive connection
                self._reading_head, self._head_bytes = True, 0
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._body_pending = True
            self._cancel_head_timer()
            if not self._shed_if_overloaded():
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._shed:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._body_pending = False
            if not self._shed:
                super().on_message_complete()

        def _shed_if_overloaded(self) -> bool:
            """Refuse an inference request for overload now; False if it is not one, or not
            refused."""
            method = self.parser.get_method().decode("latin-1")
            protocol = request_protocol(method, self.url.partition(b"?")[0].decode("latin-1"))
            if protocol is None:
                return False
            why = overloaded()
            if why is None:
                return False
            self._shed = True
            refused(protocol)
            _refusals.warning("503: %s", why)
            self._refuse(503, f"{why}; retry in {RETRY_AFTER_S} s", retry_after=True)
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def linger(self) -> bool:
            """Start a lingering close if a request body is still arriving; False if not."""
            if not self._body_pending or self._lingering:
                return self._lingering
            self._lingering = True
            self._cancel_head_timer()
            self.loop.call_later(LINGER_S, self._own.close_now)
            return True

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(settings.header_timeout_s, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self._reading_head and not self.transport.is_closing():
                # No request started, or one whose head is still arriving: nothing to answer.
                self._own.close_now()

        def _refuse(self, status: int, error: str, retry_after: bool = False) -> None:
            self._cancel_head_timer()
            self._reading_head = False
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, error, retry_after, new_request_id()))
                self.transport.close()

    return BoundedHttpToolsProtocol


# How long a refused request's remaining body is read and dropped before the connection is
# closed anyway (nginx's lingering_time is 30 s; a client at loopback or cluster speed sends
# the rest of a 16 MiB body in well under a second).
LINGER_S = 2.0


class _LingeringTransport:
    """The connection's transport, whose close() lingers while a request body still arrives:
    shuts the sending side (the answer is flushed first) and keeps reading (see
    protocol_class); close_now() closes at once."""

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        transport = self._transport
        if transport.is_closing() or not transport.can_write_eof():
            transport.close()
        elif self._protocol.linger():
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()

    def close_now(self) -> None:
        """Close without lingering."""
        self._transport.close()


_REASONS = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _raw_response(status: int, error: str, retry_after: bool, request_id: str) -> bytes:
    """A whole HTTP/1.1 response, for refusals made before any ASGI request exists.

    Raw bytes on purpose: these refusals (too many connections, a request head too large,
    overload) are made by the connection's protocol, before any ASGI scope or `send` exists for
    a JSONResponse to run on (admission.send_error answers the refusals made once there is
    one). They carry a request id as every answer does."""
    body = codecs.json_response_body({"error": error})
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"x-request-id: %s" % request_id.encode(),
    ]
    if retry_after:
        head.append(b"retry-after: %d" % RETRY_AFTER_S)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# --- the body: read whole, under a deadline and the memory budget -----------------------


class BodyIntakeMiddleware:
    """Reads every request body before the request goes on, within the size limit, the body
    deadline and the memory budget (see the module docstring); the app then receives the whole
    body as one message.

    Memory is charged for the bytes that have arrived, as they arrive, so connections that
    trickle hold next to nothing. A body whose declared size would not fit in what is left of
    the budget now is refused before it is read; one that stops fitting while it arrives
    (concurrent bodies racing for the same memory) is refused then.
    """

    def __init__(self, app: ASGIApp, settings: IntakeSettings, memory: RequestMemory) -> None:
        self.app = app
        self.settings = settings
        self.memory = memory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_headers(scope)
        if (declared is None and not chunked) or declared == 0:
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_request_bytes
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, 413, _too_large(declared, limit))
            return
        if declared is not None and not self.memory.fits(declared * REST_COPIES):
            refusal = self.memory.refusal(declared * REST_COPIES)
            await _refuse(scope, receive, send, 503, str(refusal), retry_after=True)
            return
        held = [0]
        status = 500  # what the client sees when the app raises before answering
        try:
            body = await self._read(scope, receive, send, held)
            if body is None:
                return
            delivered = False

            async def whole_body() -> Message:
                nonlocal delivered, body
                if delivered or body is None:
                    return await receive()  # after the body: the client's disconnect
                message: Message = {"type": "http.request", "body": body, "more_body": False}
                delivered, body = True, None  # the app holds the body now, not this closure
                return message

            async def send_noting_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            await self.app(scope, whole_body, send_noting_status)
        finally:
            if status >= 400 and held[0] >= budget.LARGE_REQUEST_BYTES:
                budget.collect_request_garbage()  # before its memory counts as free again
            self.memory.give_back(held[0])

    async def _read(
        self, scope: Scope, receive: Receive, send: Send, held: list[int]
    ) -> bytes | bytearray | None:
        """The whole body, charging REST_COPIES bytes of memory per byte as it arrives (added up
        in `held[0]`); None when the request was answered here or the client left.

        A body that arrives in pieces is gathered in one growing buffer (a block of its own
        once large, see memory.return_freed_memory), not kept as a list of chunks: chunks of
        64 KiB come from the heap, and heap memory freed by many requests' chunks stays with
        the process. The buffer is passed on as it is: ASGI says `bytes`, but everything here
        takes any bytes-like body (Starlette's `Request.body()` makes it bytes, the V2 route
        parses it in place), and copying it would hold the body twice.
        """
        loop = asyncio.get_running_loop()
        settings = self.settings
        started = loop.time()
        buffer = bytearray()
        received = 0
        while True:
            due = started + settings.body_timeout_s + received / settings.body_min_rate
            try:
                async with asyncio.timeout_at(due):
                    message = await receive()
            except TimeoutError:
                waited = loop.time() - started
                await _refuse(
                    scope,
                    receive,
                    send,
                    408,
                    f"request body incomplete after {waited:.1f} s ({received} bytes received; "
                    f"--body_timeout_seconds {settings.body_timeout_s:g}, then at least "
                    f"{settings.body_min_rate} bytes/s)",
                )
                return None
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return None
            chunk: bytes = message.get("body", b"")
            size = len(chunk)
            if received + size > settings.max_request_bytes:
                await _refuse(
                    scope,
                    receive,
                    send,
                    413,
                    _too_large(received + size, settings.max_request_bytes),
                )
                return None
            if chunk:
                if not self.memory.take(size * REST_COPIES):
                    refusal = self.memory.refusal((received + size) * REST_COPIES)
                    await _refuse(scope, receive, send, 503, str(refusal), retry_after=True)
                    return None
                held[0] += size * REST_COPIES
                if received == 0 and not message.get("more_body", False):
                    return chunk  # the whole body in one piece: passed on as it is
                buffer += chunk
            received += size
            if not message.get("more_body", False):
                return buffer


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The request's Content-Length (None if absent) and whether its body is chunked."""
    declared: int | None = None
    chunked = False
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            # The HTTP parser has already refused a Content-Length that is not a number.
            declared = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return declared, chunked


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of at least {size} bytes exceeds the limit of {limit} bytes "
        "(--max_request_bytes)"
    )


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, error: str, retry_after: bool = False
) -> None:
    """Answer with `status` and close the connection (the rest of the body is never kept)."""
    if status >= 500:
        _refusals.warning("%d: %s", status, error)
    headers = {"connection": "close"}
    if retry_after:
        headers["retry-after"] = str(RETRY_AFTER_S)
    await admission.send_error(scope, receive, send, status, error, headers)
