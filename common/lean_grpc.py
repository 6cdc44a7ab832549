"""A leaner gRPC ModelInfer: kserve's servicer without per-call layers that add nothing here.

Profiled under ceiling load (`python -m bench.profile`), kserve 0.21's ModelInfer spends its
Python time outside the model in DataPlane.infer and Model.__call__: three prometheus Timer
context managers, six `time.time()` calls and three `inspect.iscoroutinefunction` checks per
call; and its LoggingInterceptor formats and writes a "grpc method: ..." INFO line for every
call. `LeanInferenceServicer` runs the same hooks in the same order (preprocess, validate,
predict, postprocess) with the same request and response conversions, checks and errors, and
still records the three `request_*_seconds` histograms and the latency log line when that is
on. Models kserve's own path must serve (response headers, other model types) fall back to it.
"""

from __future__ import annotations

import time
from typing import Any

from grpc import HandlerCallDetails, RpcMethodHandler, ServicerContext
from kserve import Model
from kserve.logging import trace_logger
from kserve.metrics import POST_HIST_TIME, PRE_HIST_TIME, PREDICT_HIST_TIME, get_labels
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.interceptors import LoggingInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.utils.utils import to_headers

from . import kserve_compat
from .grpc_intake import SplitInferRequest


class LeanInferenceServicer(InferenceServicer):
    """kserve's InferenceServicer with a direct ModelInfer for plain kserve.Model subclasses."""

    def __init__(
        self, data_plane: DataPlane, model_repository_extension: ModelRepositoryExtension
    ) -> None:
        super().__init__(data_plane, model_repository_extension)
        self._plane = data_plane

    async def ModelInfer(
        self, request: pb.ModelInferRequest | SplitInferRequest, context: ServicerContext
    ) -> pb.ModelInferResponse:
        """Infer through the model's hooks; raises what kserve's path raises for the same input
        (ModelNotFound, InvalidInput, ...), which kserve's interceptor maps to a status."""
        model = await self._plane.get_model(request.model_name)
        if not _lean_capable(model):
            whole = request.whole() if isinstance(request, SplitInferRequest) else request
            return await super().ModelInfer(whole, context)
        headers = to_headers(context)
        response = await _call_hooks(model, _infer_request(request), headers)
        if isinstance(response, InferResponse):
            return response.to_grpc()
        if isinstance(response, pb.ModelInferResponse):
            return response
        return pb.ModelInferResponse(
            id=response["id"], model_name=response["model_name"], outputs=response["outputs"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: ServicerContext
    ) -> pb.ModelMetadataResponse:
        """kserve's answer with the versions too (kserve's drops them)."""
        metadata = await self._plane.model_metadata(model_name=request.name)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata.get("versions") or [],
            platform=metadata["platform"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
        )


def _infer_request(request: pb.ModelInferRequest | SplitInferRequest) -> InferRequest:
    """The InferRequest of a gRPC request, its raw contents viewed, not copied, when they
    arrive split (common.grpc_intake); raises InvalidInput as kserve's servicer does."""
    if not isinstance(request, SplitInferRequest):
        InferenceServicer.validate_grpc_request(request)
        return InferRequest.from_grpc(request)
    request.validate()
    return kserve_compat.infer_request_from_grpc(request.message, request.raw)


def _lean_capable(model: Any) -> bool:
    """Whether `model` is a kserve.Model whose __call__ is kserve's own and needs no response
    headers (what `_call_hooks` reproduces)."""
    return (
        isinstance(model, Model)
        and type(model).__call__ is Model.__call__
        and not model.required_response_headers
    )


async def _call_hooks(model: Model, request: InferRequest, headers: dict[str, str]) -> Any:
    """Model.__call__ for the PREDICT verb, timed with perf_counter instead of Timer objects."""
    labels = get_labels(model.name)
    started = time.perf_counter()
    payload = await _maybe_await(model.preprocess(request, headers))
    preprocessed = time.perf_counter()
    payload = model.validate(payload)
    response = await _maybe_await(model.predict(payload, headers))
    predicted = time.perf_counter()
    response = await _maybe_await(model.postprocess(response, headers))
    finished = time.perf_counter()
    PRE_HIST_TIME.labels(**labels).observe(preprocessed - started)
    PREDICT_HIST_TIME.labels(**labels).observe(predicted - preprocessed)
    POST_HIST_TIME.labels(**labels).observe(finished - predicted)
    if model.enable_latency_logging is True:
        trace_logger.info(
            f"requestId: {headers.get('x-request-id', 'N.A.')}, "
            f"preprocess_ms: {(preprocessed - started) * 1000}, explain_ms: 0, "
            f"predict_ms: {(predicted - preprocessed) * 1000}, "
            f"postprocess_ms: {(finished - predicted) * 1000}"
        )
    return response


async def _maybe_await(value: Any) -> Any:
    """The hooks may be sync or async (kserve allows both)."""
    if hasattr(value, "__await__"):
        return await value
    return value


class QuietLoggingInterceptor(LoggingInterceptor):
    """kserve's LoggingInterceptor without its per-call "grpc method: ..." INFO line (used when
    latency logging is off, as the REST side's timing lines are silenced then)."""

    async def intercept_service(
        self, continuation: Any, handler_call_details: HandlerCallDetails
    ) -> RpcMethodHandler:
        return await continuation(handler_call_details)


def use_lean_grpc(enable_latency_logging: bool) -> None:
    """Serve gRPC ModelInfer through `common.lean_grpc`, and without the per-call log line
    unless latency logging is on.

    kserve 0.21's GRPCServer.start builds its servicer and interceptors from the names
    `InferenceServicer` and `LoggingInterceptor` in `kserve.protocol.grpc.server`, with no
    parameter to choose them, so those names are rebound here (before ModelServer.start).
    """
    from kserve.protocol.grpc import server as grpc_server

    grpc_server.InferenceServicer = LeanInferenceServicer
    if not enable_latency_logging:
        grpc_server.LoggingInterceptor = QuietLoggingInterceptor
