"""Server glue both components share: settings flags, request limits, the fast V2 REST route.

kserve 0.21 decodes REST binary tensors into Python lists (and cannot carry raw image bytes as
BYTES at all), so `install_v2_infer_route` puts a route in front of kserve's own that parses the
body with `common.codecs` and hands the same InferRequest to the same DataPlane. gRPC keeps
kserve's servicer, whose `raw_input_contents` path is already zero-copy.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import kserve
from fastapi import FastAPI, Request, Response
from kserve.errors import InvalidInput, ModelNotReady
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse

from . import codecs, kserve_compat, tracing
from .cli import DEFAULT_MODEL_NAME, positive_int
from .exposure import ExposurePolicy, install_grpc_policy, install_policy
from .logs import LOG_FORMATS
from .metrics import server_metrics

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser on top of kserve's own (ports, model name, predictor host, ...)."""
    parser = argparse.ArgumentParser(
        description=description,
        parents=[kserve_compat.server_parser()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME)
    parser.add_argument(
        "--max_request_bytes",
        type=positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="Largest request body (HTTP, answered with 413) and gRPC message accepted.",
    )
    parser.add_argument(
        "--log_format",
        choices=LOG_FORMATS,
        default="text",
        help="Log lines as text or one JSON object per line; both carry the request id.",
    )
    return parser


class BodyLimitMiddleware:
    """Answer 413 to any HTTP request whose body exceeds `max_bytes`, declared or streamed."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send, received)

    async def _reject(self, send: Send, size: int) -> None:
        body = codecs.json_response_body(
            {
                "error": f"request body of at least {size} bytes exceeds the limit of "
                f"{self.max_bytes} bytes (--max_request_bytes)"
            }
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def install_v2_infer_route(app: FastAPI, dataplane: DataPlane) -> None:
    """Serve POST /v2/models/{name}/infer with zero-copy parsing, ahead of kserve's route."""

    async def infer(request: Request, model_name: str) -> Response:
        if not await kserve_compat.ready_to_infer(dataplane, model_name):
            raise ModelNotReady(model_name)
        body = await request.body()
        headers = dict(request.headers)
        infer_request = codecs.parse_rest_request(
            body, headers.get(codecs.JSON_LENGTH_HEADER), model_name
        )
        result, extra_headers = await dataplane.infer(model_name, infer_request, headers)
        if not isinstance(result, InferResponse):
            raise InvalidInput(f"model {model_name!r} does not answer V2 requests")
        content, encoding_headers = codecs.encode_rest_response(result, infer_request)
        return Response(content=content, headers={**extra_headers, **encoding_headers})

    # Versioned paths stay kserve's, which answers 501 rather than serve another version.
    kserve_compat.add_route_first(app, "/v2/models/{model_name}/infer", infer, ["POST"])


def run_server(
    model: kserve.Model,
    args: argparse.Namespace,
    max_request_bytes: int,
    predictor_config: PredictorConfig | None = None,
    policy: ExposurePolicy | None = None,
    life: Lifecycle | None = None,
    *,
    component: str,
) -> None:
    """Start kserve's ModelServer for one ready model with our limits, REST route, exposure
    policy (common.exposure: which routes and RPCs are served, and keys), request ids and
    request metrics (`component` prefixes the metric names); serve until a signal (with
    `life`: the drain and request bounds of common.lifecycle), then release the model.

    Every setting reaches kserve as an explicit value: the constructor's arguments here, the
    rest through `kserve_compat.apply_global_flags`.
    """
    if args.workers != 1:
        raise SystemExit(
            f"--workers {args.workers}: this server keeps one process per replica (its batching "
            "and decode pool live in it); scale with replicas instead"
        )
    kserve_compat.check_import_time_flags(args)
    # --max_request_bytes bounds gRPC messages too, unless their own flags say otherwise.
    for key in ("grpc_max_receive_message_length", "grpc_max_send_message_length"):
        if getattr(args, key) == kserve_compat.DEFAULT_GRPC_MESSAGE_LENGTH:
            setattr(args, key, max_request_bytes)
    kserve_compat.apply_global_flags(args)
    app = kserve_compat.rest_app()
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    policy = policy or ExposurePolicy()
    install_policy(app, policy)  # added last, so it runs before the body limit
    # Outermost (added last), so the 413s and refusals above are counted and carry the
    # request id too.
    metrics = server_metrics(component)
    app.add_middleware(tracing.RequestMiddleware, metrics=metrics)
    kserve_compat.add_grpc_interceptor(tracing.GrpcRequestInterceptor(metrics))
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        # No predictor_config means a predictor: nothing to forward to.
        predictor_config=predictor_config or PredictorConfig(predictor_host=None),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        grace_period=life.settings.stop_grace_s if life else 30,
    )
    install_v2_infer_route(app, server.dataplane)
    kserve_compat.quiet_timing_logs(args.enable_latency_logging)
    kserve_compat.use_lean_grpc(args.enable_latency_logging)
    install_grpc_policy(policy)  # after: it guards whichever servicer is in place
    if life is not None:
        life.install(server, app)  # after both: it bounds the servicer in use
    try:
        server.start([model])
    finally:
        model.stop()
