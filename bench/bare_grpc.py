"""The Python gRPC ceiling: a bare grpc.aio server answering every ModelInfer with a constant.

    python -m bench.bare_grpc --grpc_port PORT [--classes 1000] [--output logits__0]
                              [--relay_to HOST:PORT]

Same service, same message limits and the same executor as kserve's gRPC server, nothing else:
no interceptors, no data plane, no model. The answer is built once per batch size (FP32
[N, classes] zeros as `raw_output_contents`, the size the predictor answers), so each call costs
only what grpc.aio and protobuf cost. The ceiling benchmark puts the predictor beside it.

With `--relay_to`, each ModelInfer is first sent on, as received, to the server there with a
grpc.aio client, and answered when that call returns: the least two Python hops cost (the
transformer's place in the chain, without its work; `bench.floor`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent import futures
from typing import Any

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from common.cli import DEFAULT_MAX_REQUEST_BYTES

from .h2load import MODEL_INFER_PATH

MAX_MESSAGE_BYTES = DEFAULT_MAX_REQUEST_BYTES  # the servers' default --max_request_bytes
RELAY_TIMEOUT_S = 10.0


class ConstantInference(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive/ServerReady/ModelReady say yes; ModelInfer answers a prebuilt response."""

    def __init__(self, output: str, classes: int, upstream: Any = None) -> None:
        """`upstream`: a grpc.aio ModelInfer callable each request is sent to first, or None."""
        self._output = output
        self._classes = classes
        self._answers: dict[int, pb.ModelInferResponse] = {}
        self._upstream = upstream

    def answer(self, rows: int) -> pb.ModelInferResponse:
        """The constant response for a batch of `rows`, built on first use."""
        found = self._answers.get(rows)
        if found is None:
            found = pb.ModelInferResponse(
                model_name="constant",
                outputs=[
                    pb.ModelInferResponse.InferOutputTensor(
                        name=self._output, datatype="FP32", shape=[rows, self._classes]
                    )
                ],
                raw_output_contents=[bytes(4 * rows * self._classes)],
            )
            self._answers[rows] = found
        return found

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        rows = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        if self._upstream is not None:
            await self._upstream(request, timeout=RELAY_TIMEOUT_S)
        return self.answer(rows)


async def serve(
    port: int, output: str, classes: int, threads: int, relay_to: str | None = None
) -> None:
    """Serve on 127.0.0.1:`port` until cancelled; each call sent on to `relay_to` first."""
    upstream = None
    if relay_to is not None:
        channel = grpc.aio.insecure_channel(
            relay_to,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        upstream = channel.unary_unary(
            MODEL_INFER_PATH,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
    server = grpc.aio.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        ConstantInference(output, classes, upstream), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    """Command line; ignores the HTTP flags the benchmark's launcher passes every server."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--grpc_port", type=int, required=True)
    p.add_argument("--output", default="logits__0")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=4, help="kserve's default --max_threads is 4")
    p.add_argument("--relay_to", default=None, help="Send each ModelInfer on to HOST:PORT first.")
    args, _ = p.parse_known_args(argv)
    try:
        asyncio.run(serve(args.grpc_port, args.output, args.classes, args.threads, args.relay_to))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
