"""How the transformer answers for what the predictor's gRPC status says."""

from __future__ import annotations

import grpc
import pytest
from kserve.errors import InferenceError, InvalidInput

from common import admission
from transformer.upstream import PredictorLink


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput),  # 400
        (grpc.StatusCode.UNAVAILABLE, admission.Unavailable),  # 503: down or overloaded
        (grpc.StatusCode.RESOURCE_EXHAUSTED, admission.Unavailable),  # 503: its budget is full
        (grpc.StatusCode.CANCELLED, admission.Unavailable),  # 503: dropped while shutting down
        (grpc.StatusCode.DEADLINE_EXCEEDED, admission.DeadlinePassed),  # 504
        (grpc.StatusCode.INTERNAL, InferenceError),  # 500: the predictor failed
    ],
)
def test_predictor_statuses_become_the_right_answers(
    code: grpc.StatusCode, raised: type[Exception]
) -> None:
    link = PredictorLink("127.0.0.1:1", "m", 5.0)
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why")
    answer = link._error(error)
    assert type(answer) is raised, answer
    assert "127.0.0.1:1" in str(answer) or "why" in str(answer)  # says which, or why
