"""Every seam between this project and kserve's internals, in one place (written for kserve 0.21).

kserve's public API does not cover everything the servers need: some settings are read only from
the arguments kserve parses from `sys.argv` at import, the REST server serves a module-level
FastAPI app, and binary tensor data lives in private attributes. Each function below works
around one such behaviour; the comment above it names the kserve version and the behaviour.
`tests/test_kserve_compat.py` holds one test per workaround that fails when a kserve upgrade
changes that behaviour, so an upgrade starts there. Nothing else in the project reads a private
kserve attribute or changes a kserve global.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import kserve
import kserve.model_server
import kserve.protocol.grpc.server as kserve_grpc_server
from fastapi import FastAPI
from grpc_interceptor.exceptions import GrpcException, Unauthenticated, Unimplemented
from kserve.errors import InferenceError
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest
from kserve.protocol.rest.server import RESTServer
from starlette.routing import BaseRoute
from timing_asgi import TimingMiddleware

from . import admission

# The kserve release these workarounds were written against (pyproject.toml pins it).
KSERVE_VERSION = "0.21.0"

# kserve 0.21: the gRPC message limit kserve's flags default to (8 MiB).
DEFAULT_GRPC_MESSAGE_LENGTH: int = kserve.model_server.MAX_GRPC_MESSAGE_LENGTH

# kserve 0.21: settings that ModelServer's constructor does not take. ModelServer.__init__ reads
# configure_logging and log_config_file from `kserve.model_server.args` (the namespace kserve
# parsed from sys.argv at import), and ModelServer.start hands `vars(args)` to GRPCServer, which
# reads its message limits from it. Flags parsed any other way (`main(argv)`, a test) would be
# silently ignored, so `apply_global_flags` copies ours into that namespace.
GLOBAL_ONLY_FLAGS = (
    "configure_logging",
    "log_config_file",
    "grpc_max_send_message_length",
    "grpc_max_receive_message_length",
)


def server_parser() -> argparse.ArgumentParser:
    """kserve's ModelServer flags, to use as a parent parser.

    kserve 0.21 exposes them only as the module-level `kserve.model_server.parser`
    (kserve's own sklearnserver extends it the same way).
    """
    return kserve.model_server.parser


def apply_global_flags(args: argparse.Namespace) -> None:
    """Copy the flags kserve reads only from its import-time namespace (GLOBAL_ONLY_FLAGS)."""
    kserve_args = kserve.model_server.args
    for key in GLOBAL_ONLY_FLAGS:
        setattr(kserve_args, key, getattr(args, key))


def check_import_time_flags(args: argparse.Namespace) -> None:
    """Refuse flags that kserve fixed at import and cannot change now; raises SystemExit.

    kserve 0.21 builds its FastAPI app when `kserve.model_server` is imported, with
    `docs_url` from the sys.argv of that moment; `--enable_docs_url` passed any other way
    would be ignored without a word.
    """
    built_with_docs = rest_app().docs_url is not None
    if bool(args.enable_docs_url) != built_with_docs:
        raise SystemExit(
            f"--enable_docs_url {args.enable_docs_url}: kserve {KSERVE_VERSION} reads this flag "
            "from the process command line at import only; pass it there"
        )


# --- the REST app ------------------------------------------------------------------------


def rest_app() -> FastAPI:
    """The FastAPI app kserve's REST server will serve.

    kserve 0.21's RESTServer imports its app by the string "kserve.model_server:app", the
    module-level app; routes and middleware must be added to that object before
    ModelServer.start().
    """
    return kserve.model_server.app


def add_route_first(
    app: FastAPI, path: str, endpoint: Callable[..., Any], methods: Sequence[str]
) -> None:
    """Add a route that takes precedence over any route already registered for the same path.

    Starlette matches routes in list order. kserve 0.21 registers its own routes (including
    POST /v2/models/{model_name}/infer) when the REST server starts, after ours; routes other
    code registered earlier are moved behind ours here.
    """
    app.router.add_api_route(path, endpoint, methods=list(methods), include_in_schema=False)
    app.router.routes[:] = app.router.routes[-1:] + app.router.routes[:-1]


def add_routes_first(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Put ready-made routes ahead of every route registered so far, in the order given.

    For routes `add_route_first` cannot express (a Starlette Route subclass that matches only
    some requests and lets the rest fall through to kserve's own route for the same path).
    kserve 0.21 registers its routes when the REST server starts, behind these
    (tests/test_demo.py checks `GET /` falling through to kserve's liveness answer).
    """
    app.router.routes[:0] = list(routes)


def timing_only_when_logged(enable_latency_logging: bool) -> None:
    """Leave out kserve's per-request timing middleware unless latency logging is on.

    kserve 0.21's RESTServer always installs timing_asgi's TimingMiddleware, whatever
    --enable_latency_logging says: two log lines on `kserve.trace` per request, a getrusage()
    call before and after it, and a walk of every route to name it. Measured under overload
    (py-spy, 256 clients): 14% of the transformer's event-loop time, most of it getrusage
    summing the threads of a busy process. Our request metrics (common.metrics) time every
    request anyway. Patches RESTServer's `_add_middlewares` so that the middleware is gone
    from the app it builds; call before ModelServer.start().
    """
    if enable_latency_logging:
        return
    original = RESTServer._add_middlewares
    if getattr(original, "without_timing", False):
        return

    def add_middlewares(self: RESTServer, app: FastAPI) -> None:
        original(self, app)
        app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]

    add_middlewares.without_timing = True  # type: ignore[attr-defined]
    RESTServer._add_middlewares = add_middlewares


# --- the gRPC server ---------------------------------------------------------------------


def add_grpc_interceptor(interceptor: grpc.aio.ServerInterceptor) -> None:
    """Make kserve's gRPC server run `interceptor` ahead of kserve's own two (interceptors
    added earlier run first).

    kserve 0.21's GRPCServer.start builds its server with `aio.server(interceptors=(Logging,
    ExceptionToStatus), options=...)` from its module's `aio` name and takes no interceptors
    or options of its own; that name is replaced with grpc.aio whose `server` prepends ours
    (and adds the options of `add_grpc_server_options`). Call before ModelServer.start().
    """
    _GRPC_INTERCEPTORS.append(interceptor)
    kserve_grpc_server.aio = _AioWithOurs()


def add_grpc_server_options(options: Sequence[tuple[str, int]]) -> None:
    """Give kserve's gRPC server these channel arguments too (keepalive, stream limits); those
    kserve sets itself (message sizes) stay kserve's. Call before ModelServer.start()."""
    _GRPC_OPTIONS.extend(options)
    kserve_grpc_server.aio = _AioWithOurs()


_GRPC_INTERCEPTORS: list[grpc.aio.ServerInterceptor] = []
_GRPC_OPTIONS: list[tuple[str, int]] = []


class _AioWithOurs:
    """grpc.aio, whose `server` also takes our interceptors (first) and options."""

    def __getattr__(self, name: str) -> Any:
        return getattr(grpc.aio, name)

    @staticmethod
    def server(
        *args: Any, interceptors: Any = (), options: Any = None, **kwargs: Any
    ) -> grpc.aio.Server:
        theirs = list(options or ())
        taken = {key for key, _ in theirs}
        ours = [(key, value) for key, value in _GRPC_OPTIONS if key not in taken]
        return grpc.aio.server(
            *args,
            interceptors=(*_GRPC_INTERCEPTORS, *interceptors),
            options=theirs + ours,
            **kwargs,
        )


# --- the REST server's connections --------------------------------------------------------


def use_http_protocol(protocol: type[asyncio.Protocol]) -> None:
    """Make kserve's REST server speak HTTP/1.1 through `protocol` (a uvicorn protocol class).

    kserve 0.21's RESTServer builds its `uvicorn.Config` inside ModelServer.start() with no
    `http` argument (uvicorn then picks its own class); the name `uvicorn` in
    `kserve.protocol.rest.server` is replaced with the uvicorn module whose Config sets it.
    Call before ModelServer.start().
    """
    import kserve.protocol.rest.server as kserve_rest_server
    import uvicorn

    class _UvicornWithProtocol:
        def __getattr__(self, name: str) -> Any:
            return getattr(uvicorn, name)

        @staticmethod
        def Config(*args: Any, **kwargs: Any) -> uvicorn.Config:
            return uvicorn.Config(*args, **{**kwargs, "http": protocol})

    kserve_rest_server.uvicorn = _UvicornWithProtocol()


# --- the data plane ----------------------------------------------------------------------


async def ready_to_infer(dataplane: DataPlane, model_name: str) -> bool:
    """Whether `model_name` is ready, without a round trip to the predictor.

    kserve 0.21's DataPlane.model_ready probes a transformer's predictor on every call unless
    `disable_predictor_health_check` is set; its own infer route sets it (positionally), and so
    do we, by name. Raises ModelNotFound for an unknown model.
    """
    return await dataplane.model_ready(model_name, disable_predictor_health_check=True)


def describe_truthfully(dataplane: DataPlane, extensions: Sequence[str]) -> None:
    """Make model metadata state each model's `platform` and `versions` attributes, and server
    metadata only the protocol `extensions` given (the ones this server really serves).

    kserve 0.21's DataPlane.model_metadata answers `platform: ""` and no versions (its REST
    response then says `"versions": null`, which the protocol does not allow), and
    DataPlane.metadata always lists `model_repository_extension`. Both answer REST and gRPC
    alike; kserve's gRPC ModelMetadata drops the versions (common.lean_grpc passes them on).
    """
    model_metadata, metadata = dataplane.model_metadata, dataplane.metadata

    async def truthful_model_metadata(model_name: str) -> dict[str, Any]:
        answer = dict(await model_metadata(model_name))
        model = dataplane.get_model_from_registry(model_name)
        answer["platform"] = str(getattr(model, "platform", "") or "")
        versions = list(getattr(model, "versions", None) or [])
        if versions:
            answer["versions"] = versions
        else:
            answer.pop("versions", None)
        return answer

    def truthful_metadata() -> dict[str, Any]:
        return {**metadata(), "extensions": list(extensions)}

    dataplane.model_metadata = truthful_model_metadata
    dataplane.metadata = truthful_metadata


# --- tensors -----------------------------------------------------------------------------


def raw_data(tensor: InferInput | InferOutput) -> bytes | memoryview | None:
    """The binary payload of a tensor (REST binary extension, gRPC raw contents), or None.

    kserve 0.21 keeps it in the private `_raw_data` attribute and offers no public reader
    other than `as_numpy()`, which copies and cannot report a size mismatch as the client's
    error.
    """
    return tensor._raw_data


def set_raw_data(tensor: InferInput, data: bytes | memoryview) -> None:
    """Attach a binary payload to a request input without copying it.

    kserve 0.21 has no public setter: `set_data_from_numpy` copies (`tobytes()`) and
    InferRequest's `raw_inputs` argument assigns `_raw_data` by position, as this does.
    `InferRequest.to_grpc` sends what is here as raw_input_contents (bytes only: a memoryview,
    which the REST parser attaches, is for reading in this process).
    """
    tensor._raw_data = data


def infer_request_from_grpc(message: Any, raw: Sequence[memoryview]) -> InferRequest:
    """The InferRequest of a ModelInferRequest whose raw contents are given apart (views).

    kserve 0.21's `InferRequest.from_grpc` copies `raw_input_contents` out of the message and
    marks the request for raw outputs (private `_use_raw_outputs`) when there are any, as a
    gRPC client sending raw inputs expects raw outputs back; this does the same with views.
    """
    request = InferRequest.from_grpc(message)
    if raw:
        for tensor, view in zip(request.inputs, raw, strict=True):
            tensor._raw_data = view
        request._use_raw_outputs = True
    return request


# --- the gRPC servicer -------------------------------------------------------------------

# kserve 0.21's ExceptionToStatusInterceptor turns these grpc_interceptor exceptions into their
# status code and message; any other exception from a servicer becomes INTERNAL.
GrpcUnimplemented = Unimplemented
GrpcUnauthenticated = Unauthenticated


def grpc_rpc_names() -> list[str]:
    """The RPCs of kserve's generated GRPCInferenceService (its servicer base's methods)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as generated

    return [n for n in vars(generated.GRPCInferenceServiceServicer) if not n.startswith("_")]


def replace_grpc_servicer(subclass: Callable[[type], type]) -> None:
    """Make kserve's gRPC server use `subclass(<the servicer in place>)` as its servicer
    (kserve's InferenceServicer, or lean_grpc.use_lean_grpc's subclass of it when that ran first).

    kserve 0.21's GRPCServer.start builds the servicer from the module-global name
    `kserve.protocol.grpc.server.InferenceServicer` and takes no interceptors of ours, so the
    subclass replaces that name (before ModelServer.start).
    """
    import kserve.protocol.grpc.server as grpc_server

    grpc_server.InferenceServicer = subclass(grpc_server.InferenceServicer)


def repository_rpcs() -> dict[str, Callable[..., Any]]:
    """RepositoryModelLoad/Unload handlers that answer, for a servicer subclass.

    kserve 0.21's servicer reads `response["name"]` from ModelRepositoryExtension.load/unload,
    which return None: the model is (un)loaded, then the call fails with INTERNAL. These make the
    same calls on the extension (the servicer's private `_mode_repository_extension`, sic) and
    build the response from the request.
    """
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    async def load(self: Any, request: Any, context: Any) -> Any:
        await self._mode_repository_extension.load(model_name=request.model_name)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def unload(self: Any, request: Any, context: Any) -> Any:
        await self._mode_repository_extension.unload(model_name=request.model_name)
        return pb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)

    return {"RepositoryModelLoad": load, "RepositoryModelUnload": unload}


# --- the server's life: readiness, request bounds, drain (common/lifecycle.py) ------------


def log_through_kserve(names: Sequence[str]) -> None:
    """Make these loggers print INFO and above through kserve's handler.

    kserve 0.21 configures only its own and uvicorn's loggers (in ModelServer.__init__); the
    project's would print nothing below WARNING.
    """
    kserve_logger = logging.getLogger("kserve")
    for name in names:
        ours = logging.getLogger(name)
        ours.handlers, ours.propagate = list(kserve_logger.handlers), False
        ours.setLevel(logging.INFO)


def gate_readiness(dataplane: DataPlane, check: Callable[[], Awaitable[bool]]) -> None:
    """Make the readiness answers (REST and gRPC, server and model) also require `check()`.

    kserve 0.21 answers every readiness endpoint through `DataPlane.ready()` and
    `DataPlane.model_ready(name)`; inference routes call `model_ready(name, True)`
    (disable_predictor_health_check; see ready_to_infer) and are left alone, so a draining
    server still serves.
    """
    original_ready = dataplane.ready
    original_model_ready = dataplane.model_ready

    async def ready() -> bool:
        return await check() and bool(await original_ready())

    async def model_ready(model_name: str, disable_predictor_health_check: bool = False) -> bool:
        is_ready = bool(await original_model_ready(model_name, disable_predictor_health_check))
        if disable_predictor_health_check:  # an inference route asking, not a probe
            return is_ready
        return is_ready and await check()

    dataplane.ready = ready
    dataplane.model_ready = model_ready


# How much before a gRPC client's deadline the servers answer DEADLINE_EXCEEDED themselves; at
# most a tenth of the time left, so short deadlines keep most of theirs.
GRPC_ANSWER_LEAD_S = 0.01


def bound_grpc_infer(inflight: admission.InflightLimit, timeout_s: float) -> None:
    """Give gRPC ModelInfer calls the REST calls' bounds (in-flight limit, deadline), and the
    right status codes.

    kserve 0.21's InferenceServicer.ModelInfer does not pass the call's deadline on; its error
    interceptor maps InferenceError to INVALID_ARGUMENT and cannot map ServerNotReady (it reads
    a `reason` that class lacks). The wrapper answers UNAVAILABLE, DEADLINE_EXCEEDED and
    INTERNAL itself. Call it after lean_grpc.use_lean_grpc: it wraps the servicer class
    GRPCServer.start will build (the name `InferenceServicer` in `kserve.protocol.grpc.server`).
    """
    from kserve.protocol.grpc import server as grpc_server

    servicer = grpc_server.InferenceServicer
    original: Callable[..., Awaitable[Any]] = getattr(
        servicer.ModelInfer, "__wrapped__", servicer.ModelInfer
    )

    async def model_infer(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        client_timeout = context.time_remaining()
        if client_timeout is not None:
            # Answer DEADLINE_EXCEEDED a little before the client's deadline, so that the
            # answer, not the client's own cancellation racing it, ends the call: the two
            # sides' clocks for one deadline differ by the hop and by a busy event loop (a
            # call cancelled 2+ ms before this side's deadline has been seen here).
            client_timeout -= min(GRPC_ANSWER_LEAD_S, client_timeout / 10)
        try:
            with inflight.admit(), admission.request_deadline(timeout_s, client_timeout) as due:
                loop = asyncio.get_running_loop()
                async with asyncio.timeout_at(loop.time() + (due - time.monotonic())):
                    return await original(self, request, context)
        # Raised, not context.abort(): kserve's error interceptor (around this) answers a
        # GrpcException's code and details as they are. An abort here would reach it as an
        # unknown error: logged at ERROR with a traceback, then a second abort that fails.
        except admission.Unavailable as exc:
            raise GrpcException(str(exc), grpc.StatusCode.UNAVAILABLE) from None
        except (admission.DeadlinePassed, TimeoutError) as exc:
            detail = str(exc) or f"no answer within the deadline ({timeout_s:g} s at most)"
            raise GrpcException(detail, grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except InferenceError as exc:
            raise GrpcException(str(exc), grpc.StatusCode.INTERNAL) from exc

    model_infer.__wrapped__ = original  # type: ignore[attr-defined]
    servicer.ModelInfer = model_infer


def run_beside_servers(server: kserve.ModelServer, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` in the servers' event loop once `server.start()` runs.

    kserve 0.21: ModelServer.start() appends its REST and gRPC servers to `server.servers` and
    gathers that list in one event loop; a coroutine added before start() runs beside them.
    """
    server.servers.append(coroutine)


def rest_server_started(server: kserve.ModelServer) -> bool:
    """Whether the REST server is up (and has installed its signal handlers).

    kserve 0.21 keeps its uvicorn.Server in `server._rest_server._server` (single worker).
    """
    rest = server._rest_server._server if server._rest_server else None
    return bool(rest is not None and rest.started)


async def stop_accepting(server: kserve.ModelServer) -> None:
    """Close both ports to new work and return once in-flight requests are done (each server
    waits at most ModelServer's grace_period).

    kserve 0.21's ModelServer.stop() stops neither server in single-worker mode (it stops only
    the multi-process REST server), so this does: uvicorn's `should_exit` (closes the port,
    finishes in-flight requests, then its serve() returns) and GRPCServer.stop().
    """
    rest = server._rest_server._server if server._rest_server else None
    if rest is not None:
        rest.should_exit = True
    if server._grpc_server is not None:
        await server._grpc_server.stop()
