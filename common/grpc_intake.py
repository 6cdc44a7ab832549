"""How a gRPC call gets in: its message under a deadline and the memory budget, without copies.

The gRPC counterpart of common.intake, as a server interceptor. A call's message size is known
only once it has arrived (grpc gives Python no Content-Length to look at, and grpc core buffers
whatever message a call has been allowed to read), so:

- **Reading is admitted.** A call reads its message only after it has reserved the memory of
  the largest message allowed (--max_request_bytes, charged as common.budget says); once the
  message is in, the reservation shrinks to what that message really holds. A call that
  cannot reserve within `--body_timeout_seconds` is answered `RESOURCE_EXHAUSTED`. Calls
  waiting to read hold no memory: grpc core buffers no more of a call's message than its
  HTTP/2 stream window (64 KiB; `SERVER_OPTIONS` turns off the window's growth) until the
  call reads. So however many large messages arrive at once, the memory they take stays in
  the budget; small messages, read in microseconds, hold a reservation for as long. Calls
  other than ModelInfer (health, metadata) read from a part of the budget of their own
  (budget.ProcessMemory), so inference load never delays a readiness probe.
- **Stalled messages.** A message that has not fully arrived within `--body_timeout_seconds`
  of its read ends the call with `DEADLINE_EXCEEDED`, so trickling clients cannot hold reads.
  Calls are admitted to inference only with their message complete, as REST requests with
  their body: the in-flight limit counts none that are still arriving.
- **No copies.** protobuf's parser copies every `raw_input_contents` element out of the message,
  and reading the field copies each again. `split_model_infer` parses everything else with
  protobuf and keeps the raw contents as views into the message grpc handed over, so a
  ModelInfer request holds about its own size.
- **Unreadable messages** are answered `INVALID_ARGUMENT` with the parser's reason (grpc.aio
  would answer UNKNOWN).

A client holding every reservation with stalled messages delays other gRPC calls' reads (each
waits at most the body timeout) but costs no memory; REST is unaffected.
`SERVER_OPTIONS` are the keepalive, stream and window settings of the gRPC server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from . import budget
from .admission import RETRY_AFTER_S
from .budget import GRPC_COPIES, ProcessMemory

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_RAW_INPUT_CONTENTS = 7  # ModelInferRequest field number (grpc_predict_v2.proto)
# Top-level fields scanned in Python before the scan gives up and protobuf parses the whole
# message (copies and all): a ModelInferRequest has a handful, one per input and per parameter;
# this bounds the CPU a message of millions of tiny fields could cost.
_MAX_SCANNED_FIELDS = 4096

# Keepalive, stream and window settings of the gRPC server (grpc core channel arguments).
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping a silent client every 30 s and drop it when no answer comes within 10 s: a peer that
    # vanished (node gone, connection cut without a FIN) is found within ~40 s, not hours.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A connection with no call for 5 minutes is closed (GOAWAY); clients reconnect on demand.
    ("grpc.max_connection_idle_ms", 300_000),
    # Streams one connection may have open at once (grpc core's default is unlimited; 128 as
    # nginx): a client multiplexing more waits for its own streams instead of each one costing
    # the server a task.
    ("grpc.max_concurrent_streams", 128),
    # No bandwidth-delay probing: it grows every new stream's window to what the link carries
    # (megabytes on loopback), and a window is what grpc core buffers for a call that has not
    # been admitted to read. A call that reads is granted its whole message's window anyway.
    ("grpc.http2.bdp_probe", 0),
)


@dataclass
class SplitInferRequest:
    """A ModelInferRequest with `raw_input_contents` kept outside the message, as views into
    the bytes received (see split_model_infer)."""

    message: pb.ModelInferRequest
    raw: list[memoryview]

    @property
    def id(self) -> str:
        """The request's id (what interceptors read from a ModelInferRequest)."""
        return str(self.message.id)

    @property
    def model_name(self) -> str:
        """The model the request is for."""
        return str(self.message.model_name)

    def validate(self) -> None:
        """The checks kserve's servicer makes on raw contents; raises InvalidInput."""
        # kserve's messages, word for word (InferenceServicer.validate_grpc_request).
        message = self.message
        if self.raw and len(message.inputs) != len(self.raw):
            raise InvalidInput(
                f"the number of inputs ({len(message.inputs)}) does not match the expected "
                f"number of raw input contents ({len(self.raw)}) for model "
                f"'{message.model_name}'."
            )
        if self.raw:
            for tensor in message.inputs:
                if tensor.HasField("contents"):
                    raise InvalidInput(
                        "contents field must not be specified when using raw_input_contents "
                        f"for input '{tensor.name}' for model '{message.model_name}'"
                    )

    def whole(self) -> pb.ModelInferRequest:
        """The full message, raw contents copied back in (for code that needs a protobuf)."""
        message = pb.ModelInferRequest()
        message.CopyFrom(self.message)
        message.raw_input_contents.extend(bytes(view) for view in self.raw)
        return message


def split_model_infer(data: bytes) -> SplitInferRequest:
    """Parse a serialized ModelInferRequest, keeping raw_input_contents as views into `data`.

    Raises DecodeError for a message protobuf cannot read.
    """
    view = memoryview(data)
    size = len(view)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    position = fields = 0
    while position < size:
        fields += 1
        if fields > _MAX_SCANNED_FIELDS:
            whole = pb.ModelInferRequest.FromString(data)
            contents = [memoryview(item) for item in whole.raw_input_contents]
            del whole.raw_input_contents[:]
            return SplitInferRequest(whole, contents)
        start = position
        key, position = _varint(view, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(view, position)
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length, position = _varint(view, position)
            if number == _RAW_INPUT_CONTENTS:
                if position + length > size:
                    raise DecodeError("raw_input_contents runs past the end of the message")
                raw.append(view[position : position + length])
                position += length
                continue
            position += length
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wire_type}")
        if position > size:
            raise DecodeError(f"field {number} runs past the end of the message")
        kept.append(view[start:position])
    message = pb.ModelInferRequest.FromString(b"".join(kept))
    return SplitInferRequest(message, raw)


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    """The base-128 varint at `position` and the position after it; raises DecodeError."""
    result = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


class GrpcIntakeInterceptor(grpc.aio.ServerInterceptor):
    """Admits each unary call to read its message within the memory budget and a deadline, and
    parses ModelInfer requests without copying their raw contents (see the module docstring)."""

    def __init__(
        self,
        memory: ProcessMemory,
        message_timeout_s: float,
        refused: Callable[[str, grpc.StatusCode], None] = lambda method, code: None,
        overloaded: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`overloaded()` says why a ModelInfer call would be refused for overload now (None:
        it would not be); such a call is answered UNAVAILABLE before its message is read."""
        self.overloaded = overloaded
        self.memory = memory
        self.reservation = memory.largest_charge  # before a read, a message may be that large
        self.message_timeout_s = message_timeout_s
        self.refused = refused  # told of each call answered here (method, status)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        parse: Callable[[bytes], Any] = (
            split_model_infer
            if method == MODEL_INFER
            else handler.request_deserializer or (lambda data: data)
        )
        behavior = handler.unary_unary
        # Inference reads from the data budget; health and metadata calls from their own part.
        memory = self.memory.data if method == MODEL_INFER else self.memory.control
        reservation, timeout_s = self.reservation, self.message_timeout_s
        size = [0]

        async def refuse(
            context: grpc.aio.ServicerContext, code: grpc.StatusCode, why: str
        ) -> None:
            self.refused(method, code)
            await context.abort(code, why)

        def deserialize(data: bytes) -> Any:
            size[0] = len(data)
            try:
                return parse(data)
            except DecodeError as exc:
                return _Unreadable(f"unreadable {method} request: {exc}")

        async def admitted(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            # A stream-unary handler: grpc.aio reads nothing until it is asked to, here.
            if method == MODEL_INFER and (why := self.overloaded()) is not None:
                await refuse(
                    context, grpc.StatusCode.UNAVAILABLE, f"{why}; retry in {RETRY_AFTER_S} s"
                )
            if not await memory.take_within(reservation, timeout_s):
                why = str(memory.refusal(reservation))
                await refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            held = reservation
            try:
                try:
                    async with asyncio.timeout(timeout_s):
                        request = await anext(requests)
                        # The end of the stream, which a unary client sends with its message.
                        # Until it has been read, grpc.aio keeps the call's buffers (seen here:
                        # resident memory grew by the messages' size with every burst).
                        extra = await anext(requests, None)
                except TimeoutError:
                    why = (
                        f"request message incomplete after {timeout_s:g} s (--body_timeout_seconds)"
                    )
                    await refuse(context, grpc.StatusCode.DEADLINE_EXCEEDED, why)
                except StopAsyncIteration:
                    await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                if extra is not None:
                    why = f"{method} takes one request message, got more"
                    await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, why)
                memory.give_back(held - size[0] * GRPC_COPIES)
                held = size[0] * GRPC_COPIES
                if isinstance(request, _Unreadable):
                    await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                try:
                    return await behavior(request, context)
                except BaseException as error:
                    # What the failed call held goes now, not at the next full collection.
                    del request
                    budget.clear_error_frames(error)
                    if size[0] * GRPC_COPIES >= budget.LARGE_REQUEST_BYTES:
                        budget.collect_request_garbage()  # before its memory counts as free
                    raise
            finally:
                memory.give_back(held)

        return grpc.stream_unary_rpc_method_handler(
            admitted,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class _Unreadable:
    """What the deserializer returns for a message protobuf cannot read."""

    reason: str
