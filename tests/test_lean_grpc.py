"""The lean gRPC ModelInfer (common.lean_grpc): the seam it relies on in kserve, and, on the real
predictor, the same answers, errors and metrics as kserve's own path. test_serving's gRPC tests
(tritonclient, bad input, the chained transformer) run through it as well."""

from __future__ import annotations

import inspect

import grpc
import numpy as np
import pytest
from conftest import MODEL_NAME
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import server as kserve_grpc_server
from test_observability import scrape, total

from common import lean_grpc
from common.lean_grpc import LeanInferenceServicer, QuietLoggingInterceptor
from harness.servers import ServerProcess

INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_kserve_builds_the_servicer_and_interceptor_by_the_names_we_rebind() -> None:
    """kserve 0.21: GRPCServer.start looks both names up in its module when it starts. If an
    upgrade stops doing that, use_lean_grpc silently does nothing: this fails first."""
    source = inspect.getsource(kserve_grpc_server.GRPCServer.start)
    assert "InferenceServicer(" in source
    assert "LoggingInterceptor()" in source


def test_use_lean_grpc_rebinds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        kserve_grpc_server, "InferenceServicer", kserve_grpc_server.InferenceServicer
    )
    monkeypatch.setattr(
        kserve_grpc_server, "LoggingInterceptor", kserve_grpc_server.LoggingInterceptor
    )
    lean_grpc.use_lean_grpc(enable_latency_logging=True)
    assert kserve_grpc_server.InferenceServicer is LeanInferenceServicer
    assert kserve_grpc_server.LoggingInterceptor is not QuietLoggingInterceptor
    lean_grpc.use_lean_grpc(enable_latency_logging=False)
    assert kserve_grpc_server.LoggingInterceptor is QuietLoggingInterceptor


def _infer(target: str, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        return call(request, timeout=30)


def _pixels(
    model: str = MODEL_NAME, shape: tuple[int, ...] = (2, 224, 224, 3)
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        id="lean-1",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="pixels__0", datatype="UINT8", shape=shape)
        ],
        raw_input_contents=[bytes(int(np.prod(shape)))],
    )


def test_answers_and_records_the_request_metrics(predictor: ServerProcess) -> None:
    before = total(scrape(predictor), "request_predict_seconds_count")
    answer = _infer(predictor.grpc_target, _pixels())
    after = total(scrape(predictor), "request_predict_seconds_count")
    assert answer.id == "lean-1" and answer.model_name == MODEL_NAME
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("logits__0", "FP32", [2, 1000])
    ]
    assert len(answer.raw_output_contents[0]) == 2 * 1000 * 4
    assert after == before + 1
    for metric in ("request_preprocess_seconds", "request_postprocess_seconds"):
        assert total(scrape(predictor), f"{metric}_count") >= 1


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (_pixels(model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (_pixels(shape=(1, 224, 224, 4)), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ],
    ids=["unknown model", "wrong shape"],
)
def test_errors_keep_their_status_and_message(
    predictor: ServerProcess, request_: pb.ModelInferRequest, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _infer(predictor.grpc_target, request_)
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")


def test_raw_and_typed_contents_together_are_refused(predictor: ServerProcess) -> None:
    request = _pixels()
    request.inputs[0].contents.uint_contents.append(1)
    with pytest.raises(grpc.RpcError) as caught:
        _infer(predictor.grpc_target, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents field must not be specified" in (caught.value.details() or "")
