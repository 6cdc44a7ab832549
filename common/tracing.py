"""Request ids and request-level metrics at the edge of both servers, REST and gRPC alike.

Every inference request gets an id: the client's `x-request-id` header (gRPC metadata), else
the V2 request `id`, else a new one. It lives in a context variable for the request's task, so
log lines (see `common.logs`) and the transformer's call to the predictor carry it, and it goes
back to the client as the `x-request-id` response header (over gRPC, trailing metadata).

The same edge counts requests by protocol and outcome, times them and tracks how many are in
flight (`common.metrics.ServerMetrics`): an ASGI middleware for HTTP, a gRPC server interceptor
for `ModelInfer` (installed in kserve's gRPC server by `kserve_compat.add_grpc_interceptor`).
It also writes the access log (`common.access_log`): one line per request, with its id,
status and duration, none for health probes and metrics scrapes; and, with tracing on
(`common.telemetry`), opens each inference request's server span, continuing the client's
`traceparent`, and ends it with the status and message the client got.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import access_log, telemetry
from .ids import CURRENT_REQUEST as _CURRENT
from .ids import RequestContext, new_request_id
from .metrics import V2_GRPC, ServerMetrics, request_protocol

REQUEST_ID_HEADER = "x-request-id"
# What the predictor accepts from the transformer: the ids of a shared call, comma-separated.
_VALID_IDS = re.compile(r"[A-Za-z0-9._:/+=@,-]{1,8192}")
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# What a trace context travels in (W3C trace context and baggage): the only headers read for it.
_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")
_TRACE_KEYS = tuple(h.decode() for h in _TRACE_HEADERS)


def join_ids(tags: Sequence[Sequence[Any]]) -> str:
    """The id of a predictor call shared by several requests: their ids (each tag's first
    item), comma-separated."""
    return ",".join(tag[0] for tag in tags)


def _client_id(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if value and _VALID_IDS.fullmatch(value) else None


class RequestMiddleware:
    """ASGI middleware: request id in and out, and the request-level metrics of inference routes.

    Install it outermost, so that answers from other middleware (413 for large bodies) are
    counted and carry the id too.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, access_log: bool = True):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode())
        client_id = _client_id(header)
        context = RequestContext(client_id or new_request_id(), client_id is not None)
        token = _CURRENT.set(context)
        protocol = request_protocol(scope.get("method", ""), scope.get("path", ""))
        status = 500  # what the client sees when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", context.request_id.encode()))
                message["headers"] = headers
            await send(message)

        method, path = scope.get("method", ""), scope.get("path", "")
        started = time.perf_counter()
        if protocol is None:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                if access_log.is_probe(method, path):
                    access_log.probe_answered(path, status)
                elif self.access_log:
                    access_log.access(method, path, status, seconds)
                _CURRENT.reset(token)
            return
        server_span = (
            _http_server_span(scope, method, path, context.request_id)
            if telemetry.enabled()
            else None
        )
        error_body = bytearray()

        async def send_traced(message: Message) -> None:
            # The error answer's body, for the span's status message.
            if message["type"] == "http.response.body" and status >= 400:
                error_body.extend(message.get("body", b"")[: telemetry.ERROR_MESSAGE_CHARS * 4])
            await send_with_id(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_traced if server_span else send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self.metrics.observe(protocol, seconds)
            self.metrics.count(protocol, str(status))
            if self.access_log:
                access_log.access(method, path, status, seconds)
            if server_span is not None:
                server_span.set("http.response.status_code", status)
                server_span.set(telemetry.REQUEST_ID, context.request_id)
                server_span.end(
                    telemetry.error_message(bytes(error_body)) if status >= 400 else None
                )
            _CURRENT.reset(token)


def _http_server_span(
    scope: Scope, method: str, path: str, request_id: str
) -> telemetry.ServerSpan | None:
    carrier = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope.get("headers") or ()
        if key in _TRACE_HEADERS
    }
    return telemetry.start_server_span(
        f"{method} {path}",
        carrier,
        {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scope.get("scheme", "http"),
            telemetry.REQUEST_ID: request_id,
        },
    )


# gRPC core's deadline timer fires up to a millisecond early (seen here: cancelled with 0.45 ms
# left), so a call cancelled that close to its deadline was cancelled by it.
GRPC_TIMER_SLACK_S = 0.002
# rpc.grpc.status_code is the number (semantic conventions); 2 is UNKNOWN.
_STATUS_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}


def _grpc_outcome(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status code name a failed call ended with. grpc.aio cancels the handler, setting no
    code, when the client's deadline passes or the client goes: name those for what they are."""
    status = context.code()
    if isinstance(status, grpc.StatusCode):
        return status.name
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= GRPC_TIMER_SLACK_S
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
    return "UNKNOWN"


class _Metadatum(NamedTuple):
    """A (key, value) metadata pair that also reads as `.key` and `.value`, as grpc's own
    invocation metadata does: kserve reads a call's trailers with its headers that way."""

    key: str
    value: str


class GrpcRequestInterceptor(grpc.aio.ServerInterceptor):
    """gRPC server interceptor: request id in and out, and the metrics of `ModelInfer` calls."""

    def __init__(self, metrics: ServerMetrics, access_log: bool = True) -> None:
        self.metrics = metrics
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = dict(handler_call_details.invocation_metadata or ())
        header_id = _client_id(metadata.get(REQUEST_ID_HEADER))
        if header_id is not None:
            # Already here, so kserve's own interceptor logs the call with the id.
            _CURRENT.set(RequestContext(header_id, True))
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method != _MODEL_INFER
            or handler.unary_unary is None
        ):
            return handler
        behavior = handler.unary_unary
        metrics = self.metrics
        log_access = self.access_log

        async def model_infer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            body_id = _client_id(getattr(request, "id", None))
            request_id = header_id or body_id or new_request_id()
            token = _CURRENT.set(RequestContext(request_id, bool(header_id or body_id)))
            # The id goes back in the trailers, sent with the status whatever the outcome (an
            # error's status is sent from inside the handler): no message of its own, as
            # initial metadata sent ahead of the answer is (0.15 ms a call, measured).
            context.set_trailing_metadata((_Metadatum(REQUEST_ID_HEADER, request_id),))
            server_span = (
                telemetry.start_server_span(
                    _MODEL_INFER[1:],
                    {k: metadata[k] for k in _TRACE_KEYS if isinstance(metadata.get(k), str)},
                    {
                        "rpc.system": "grpc",
                        "rpc.service": "inference.GRPCInferenceService",
                        "rpc.method": "ModelInfer",
                        telemetry.REQUEST_ID: request_id,
                    },
                )
                if telemetry.enabled()
                else None
            )
            metrics.in_flight.inc()
            started = time.perf_counter()
            code, error = "OK", None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                code = _grpc_outcome(exc, context)
                error = context.details() or str(exc) or code
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.in_flight.dec()
                metrics.observe(V2_GRPC, seconds)
                metrics.count(V2_GRPC, code)
                if log_access:
                    access_log.access("gRPC", _MODEL_INFER, code, seconds)
                if server_span is not None:
                    server_span.set("rpc.grpc.status_code", _STATUS_NUMBERS.get(code, 2))
                    server_span.end(error)
                _CURRENT.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            model_infer,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
