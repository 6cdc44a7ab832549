"""Server glue both components share: settings flags, request limits, the fast V2 REST route.

kserve 0.21 decodes REST binary tensors into Python lists (and cannot carry raw image bytes as
BYTES at all), so `install_v2_infer_route` puts a route in front of kserve's own that parses the
body with `common.codecs` and hands the same InferRequest to the same DataPlane. gRPC keeps
kserve's servicer (common.lean_grpc), fed by common.grpc_intake without copying raw contents.
How requests get in (connections, bodies, the memory budget) is common.intake's, common.budget's
and common.grpc_intake's.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

import grpc
import kserve
from fastapi import FastAPI, Request, Response
from kserve.errors import InvalidInput, ModelNotReady
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse

from . import budget, codecs, events, intake, kserve_compat, lean_grpc, memory, telemetry, tracing
from .cli import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MODEL_NAME, positive_int
from .exposure import ExposurePolicy, install_grpc_policy, install_policy
from .grpc_intake import MODEL_INFER, SERVER_OPTIONS, GrpcIntakeInterceptor
from .logs import LOG_FORMATS
from .metrics import V2_GRPC, server_metrics

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

logger = logging.getLogger(__name__)


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser on top of kserve's own (ports, model name, predictor host, ...)."""
    parser = argparse.ArgumentParser(
        description=description,
        parents=[kserve_compat.server_parser()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # kserve logs two latency lines per request by default (and times every request for
    # them): a log bill in a busy cluster. The flag still turns them on.
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME, enable_latency_logging=False)
    parser.add_argument(
        "--max_request_bytes",
        type=positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="Largest request body (HTTP, answered with 413) and gRPC message accepted.",
    )
    parser.add_argument(
        "--request_memory_budget_bytes",
        type=positive_int,
        default=None,
        help="Memory the data of requests in flight may hold (each is charged "
        f"{budget.REST_COPIES}x its size over REST, {budget.GRPC_COPIES}x over gRPC: the copies "
        "it makes); past it "
        "requests are refused at once with 503 / RESOURCE_EXHAUSTED. Default: half of what the "
        "container's memory limit leaves after start-up, or "
        f"{budget.DEFAULT_BUDGET_BYTES // 2**20} MiB without a limit.",
    )
    intake.add_flags(parser)
    parser.add_argument(
        "--access_log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="One log line per request (id, status, duration); none for probes and scrapes. "
        "--no-access_log where traces and metrics suffice.",
    )
    parser.add_argument(
        "--log_format",
        choices=LOG_FORMATS,
        default="text",
        help="Log lines as text or one JSON object per line; both carry the request id.",
    )
    return parser


def install_v2_infer_route(app: FastAPI, dataplane: DataPlane) -> None:
    """Serve POST /v2/models/{name}/infer with zero-copy parsing, ahead of kserve's route."""

    async def infer(request: Request, model_name: str) -> Response:
        if not await kserve_compat.ready_to_infer(dataplane, model_name):
            raise ModelNotReady(model_name)
        # common.intake passes the body on in one piece; taken as it is (Request.body() would
        # copy a bytearray into bytes).
        pieces = [piece async for piece in request.stream()]
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
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
    metric_labels: dict[str, str] | None = None,
    cloudevents: bool = False,
) -> None:
    """Start kserve's ModelServer for one ready model with our limits, REST route, exposure
    policy (common.exposure: which routes and RPCs are served, and keys), request ids and
    request metrics (`component` prefixes the metric names, `metric_labels` label every
    request series: common.metrics.ServerMetrics); serve until a signal (with
    `life`: the drain and request bounds of common.lifecycle), then release the model.
    `cloudevents` serves CloudEvents on the REST inference routes (common.events).

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
    largest_charge = args.grpc_max_receive_message_length * budget.GRPC_COPIES
    try:
        requests_memory = budget.ProcessMemory.split(
            args.request_memory_budget_bytes
            or budget.default_budget(
                memory.container_memory_limit(), memory.status_bytes() or 0, largest_charge
            ),
            largest_charge,
        )
    except ValueError as exc:
        raise SystemExit(f"--request_memory_budget_bytes: {exc}") from None
    intake_settings = intake.IntakeSettings.from_args(args, max_request_bytes)
    try:
        tracing_settings = telemetry.TelemetrySettings.from_env(
            os.environ, f"{args.model_name}-{component}"
        )
    except telemetry.TelemetryError as exc:
        raise SystemExit(f"tracing: {exc}") from None
    telemetry.configure(tracing_settings)
    logger.info(
        "request memory budget %d MiB; at most %d connections, bodies within %g s "
        "(then %d bytes/s)",
        requests_memory.budget_bytes // 2**20,
        intake_settings.max_connections,
        intake_settings.body_timeout_s,
        intake_settings.body_min_rate,
    )
    app = kserve_compat.rest_app()
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
    policy = policy or ExposurePolicy()
    # The repository extension is listed only where it is served (common.exposure).
    served = ["model_repository_extension"] if policy.control_plane else []
    kserve_compat.describe_truthfully(server.dataplane, served)
    kserve_compat.timing_only_when_logged(args.enable_latency_logging)
    lean_grpc.use_lean_grpc(args.enable_latency_logging)
    install_grpc_policy(policy)  # after: it guards whichever servicer is in place
    # REST middleware, innermost first (Starlette runs the last added first): the request
    # bounds of `life` (in-flight limit, deadline) see only requests whose body is complete;
    # the intake reads bodies under their bounds; the exposure policy refuses unserved routes
    # and missing keys before any body is read; the request metrics and ids are outermost, so
    # every refusal is counted and carries an id. CloudEvents are unwrapped innermost: with
    # the whole body in hand, the request id set, and inside the request bounds.
    if cloudevents:
        app.add_middleware(events.CloudEventsMiddleware)
    if life is not None:
        life.install(server, app)  # after the servicer changes above: it bounds the one in use
    app.add_middleware(
        intake.BodyIntakeMiddleware, settings=intake_settings, memory=requests_memory.data
    )
    install_policy(app, policy)
    metrics = server_metrics(component, metric_labels)
    metrics.initialise()
    metrics.memory_budget.set(requests_memory.budget_bytes)
    metrics.memory_held.set_function(lambda: requests_memory.held)
    app.add_middleware(tracing.RequestMiddleware, metrics=metrics, access_log=args.access_log)
    overloaded = life.overloaded if life is not None else lambda: None
    kserve_compat.use_http_protocol(
        intake.protocol_class(
            intake_settings,
            overloaded,
            lambda protocol: metrics.count(protocol, "503"),
        )
    )

    # gRPC interceptors, outermost first: the message intake (it reads each call's message, so
    # it comes before anything that looks at the request), then request ids and metrics.
    def grpc_refused(method: str, code: grpc.StatusCode) -> None:
        if method == MODEL_INFER:
            metrics.count(V2_GRPC, code.name)

    kserve_compat.add_grpc_interceptor(
        GrpcIntakeInterceptor(
            requests_memory,
            intake_settings.body_timeout_s,
            refused=grpc_refused,
            overloaded=overloaded,
        )
    )
    kserve_compat.add_grpc_interceptor(tracing.GrpcRequestInterceptor(metrics, args.access_log))
    kserve_compat.add_grpc_server_options(SERVER_OPTIONS)
    budget.freeze_startup_objects()
    try:
        server.start([model])
    finally:
        model.stop()
        telemetry.shutdown()  # export the spans still buffered
