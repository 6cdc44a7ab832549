"""The transformer's link to the predictor: one gRPC channel for inference and health.

kserve's own client would do for inference, but it retries UNAVAILABLE (so an overloaded
predictor's refusals come back threefold), cannot take a per-call deadline through
`Model.predict`, and keeps gRPC's default reconnect backoff (up to 120 s): after a predictor
restart the transformer could stay broken for minutes. This link owns the channel with:
  - reconnect backoff bounded at RECONNECT_BACKOFF_MAX_MS, so a restarted predictor is used
    again within a second of its port opening (it opens only once the model is ready);
  - no retries beyond gRPC's transparent ones (calls that never reached the predictor);
  - each call's timeout taken from the request's deadline (`common.admission`), a little
    shorter (DEADLINE_MARGIN_S), so the predictor's own DEADLINE_EXCEEDED comes back before
    gRPC cancels this side's call at the client's deadline: otherwise the predictor only sees a
    cancelled call, and the client a deadline with no word of where it passed;
  - fail-fast calls (no wait_for_ready): while the predictor is down a call fails at once.
`ready()` asks the predictor's ModelReady over the same channel, cached for READY_CACHE_S and
shared by concurrent callers, so readiness probes never pile up on the predictor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import grpc
from kserve.errors import InferenceError, InvalidInput
from kserve.model import append_forwardable_headers
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import InferRequest, InferResponse

from common import admission

logger = logging.getLogger(__name__)

RECONNECT_BACKOFF_MAX_MS = 500
# Also the longest one connection attempt may take (gRPC's default is 20 s): a peer that does
# not answer a TCP handshake within a second here (loopback, or a cluster network) is down.
CONNECT_TIMEOUT_MS = 1000
READY_CACHE_S = 0.5
# How much sooner the predictor's deadline ends than the request's: room for its answer to
# come back over the hop (loopback or a cluster network: about a millisecond) and for a busy
# event loop. At most a tenth of the time left, so short deadlines keep most of theirs.
DEADLINE_MARGIN_S = 0.02
READY_PROBE_TIMEOUT_S = 1.0


class PredictorLink:
    """Inference calls and readiness probes to one predictor over one gRPC channel."""

    def __init__(self, target: str, model_name: str, timeout_s: float) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._options = [
            # Decoded pixels outgrow the client's encoded images: the predictor's own
            # --max_request_bytes is the limit that applies (kserve's client does the same).
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
            ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
        ]
        self._channel: grpc.aio.Channel | None = None
        self._stub: GRPCInferenceServiceStub | None = None
        self._ready = False
        self._checked_at = -float("inf")
        self._probe: asyncio.Future[bool] | None = None

    def _client(self) -> GRPCInferenceServiceStub:
        # Made on first use, inside the serving event loop that grpc.aio binds it to.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._stub = GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def infer(
        self,
        request: InferRequest,
        headers: dict[str, str] | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> InferResponse:
        """The predictor's answer to `request`, within the current request's deadline; the
        forwardable `headers` (kserve's list) and the `trace` context headers go as metadata.

        Raises InvalidInput (the predictor refused the input), admission.Unavailable (it is
        unreachable, overloaded, out of request memory or dropped the call: 503),
        admission.DeadlinePassed, or InferenceError.
        """
        timeout = admission.remaining(self.timeout_s)
        if timeout <= 0:
            raise admission.DeadlinePassed("the deadline passed before the predictor was called")
        timeout -= min(DEADLINE_MARGIN_S, timeout / 10)
        metadata = tuple({**append_forwardable_headers(headers), **(trace or {})}.items())
        try:
            response = await self._client().ModelInfer(
                request.to_grpc(), timeout=timeout, metadata=metadata, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as err:
            raise self._error(err) from err
        return InferResponse.from_grpc(response)

    def _error(self, err: grpc.aio.AioRpcError) -> Exception:
        code, details = err.code(), err.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInput(f"the predictor rejected the request: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:  # down, or refusing work (overloaded)
            return admission.Unavailable(
                f"the predictor at {self.target} is unavailable: {details}"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # its request memory budget is full
            return admission.Unavailable(f"the predictor at {self.target} is full: {details}")
        if code == grpc.StatusCode.CANCELLED:
            # Not this side's doing (a call this side cancels raises asyncio's CancelledError):
            # the predictor dropped the call unanswered, as grpc does to calls it has not
            # started when it shuts down. Nothing ran: the client may retry.
            return admission.Unavailable(
                f"the predictor at {self.target} dropped the call (CANCELLED; it may be "
                f"shutting down): {details}"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return admission.DeadlinePassed(
                f"the predictor at {self.target} did not answer within the deadline"
            )
        return InferenceError(f"the predictor failed: {code.name}: {details}")

    async def ready(self) -> bool:
        """Whether the predictor's model answers ready (cached for READY_CACHE_S)."""
        if time.monotonic() - self._checked_at < READY_CACHE_S:
            return self._ready
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._probe)

    async def _check(self) -> bool:
        try:
            response = await self._client().ModelReady(
                pb.ModelReadyRequest(name=self.model_name),
                timeout=READY_PROBE_TIMEOUT_S,
                wait_for_ready=False,
            )
            ready, why = bool(response.ready), "its model is not ready"
        except grpc.aio.AioRpcError as err:
            ready, why = False, f"{err.code().name}: {err.details()}"
        if ready != self._ready:
            if ready:
                logger.info("the predictor at %s is ready", self.target)
            else:
                logger.warning("the predictor at %s is not ready: %s", self.target, why)
        self._ready, self._checked_at, self._probe = ready, time.monotonic(), None
        return ready

    async def close(self) -> None:
        """Close the channel (later calls raise)."""
        if self._channel is not None:
            await self._channel.close()
