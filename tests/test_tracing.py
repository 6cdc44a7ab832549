"""OpenTelemetry traces across both servers, read back from a real OTLP receiver.

A real predictor and transformer export with their real OTLP exporters to a receiver on loopback
(harness/otlp.py: the collector's TraceService/Export over gRPC). For a V1, a V2 REST and a V2
gRPC request carrying a client `traceparent`: one trace id across both processes and the span
tree (transformer: server, preprocess, predictor call (client), postprocess; predictor: server,
queue, forward). Four requests held into one forward pass: that pass's span links to each of
their spans. An error sets the status with the message the client got. With tracing off (the
SDK disabled although an endpoint is set) nothing is exported.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import held_forward
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import DATA, MODEL_NAME, Server, grpc_calls, start_server, start_transformer
from test_observability import b64

from harness.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver, tracing_env

TRANSFORMER_SERVICE = f"{MODEL_NAME}-transformer"
PREDICTOR_SERVICE = f"{MODEL_NAME}-predictor"
GRPC_SPAN = "inference.GRPCInferenceService/ModelInfer"


@dataclass
class Traced:
    receiver: OtlpReceiver
    predictor: Server
    transformer: Server
    gate: Path


@pytest.fixture(scope="module")
def traced(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """A pair exporting every span to one receiver; the predictor's passes can be held, the
    transformer sends each request in a call of its own (so the predictor batches them)."""
    logs = tmp_path_factory.mktemp("tracing")
    gate = logs / "gate"
    with otlp_receiver() as receiver:
        env = tracing_env(receiver)
        predictor = start_server(
            "predictor",
            ["--model_dir", str(model_repository), "--model_name", MODEL_NAME],
            logs / "predictor.log",
            env={**held_forward.env(gate), **env},
        )
        try:
            transformer = start_transformer(
                predictor,
                model_repository,
                logs / "transformer.log",
                "--coalesce_max_images",
                "1",
                env={**os.environ, **env},
            )
        except Exception:
            predictor.stop()
            raise
        try:
            yield Traced(receiver, predictor, transformer, gate)
        finally:
            transformer.stop()
            predictor.stop()


def v1_coffee(transformer: Server, headers: dict[str, str] | None = None) -> httpx.Response:
    """A V1 prediction of the coffee photo."""
    return httpx.post(
        f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": b64(DATA / "coffee.jpg")}}]},
        headers=headers or {},
        timeout=60,
    )


def traceparent() -> tuple[str, str, str]:
    """A client's sampled W3C traceparent: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def complete(trace_id: str) -> Callable[[list[ReceivedSpan]], bool]:
    """The condition: both servers' seven spans of one request have arrived."""
    return lambda spans: len(of_trace(spans, trace_id)) >= 7


def check_tree(
    spans: list[ReceivedSpan], client_span: str, server_name: str, request_id: str
) -> None:
    """The span tree of one request through both servers, under the client's span."""
    server = one(spans, TRANSFORMER_SERVICE, server_name)
    assert server.kind == "server" and server.parent_span_id == client_span
    assert server.attributes["request.id"] == request_id
    assert server.status == "unset"
    children = {s.name: s for s in spans if s.parent_span_id == server.span_id}
    assert set(children) == {"preprocess", "predictor ModelInfer", "postprocess"}, children
    call = children["predictor ModelInfer"]
    assert call.kind == "client"
    assert call.attributes["request.ids"] == [request_id]
    assert call.attributes["model.version"] == "1"
    assert children["preprocess"].attributes["images"] == 1
    # Decode, then the call, then the answer: in that order.
    assert children["preprocess"].end_ns <= call.start_ns <= call.end_ns
    assert call.end_ns <= children["postprocess"].start_ns

    predictor_server = one(spans, PREDICTOR_SERVICE, GRPC_SPAN)
    assert predictor_server.kind == "server" and predictor_server.parent_span_id == call.span_id
    assert predictor_server.attributes["request.id"] == request_id
    queue = one(spans, PREDICTOR_SERVICE, "queue")
    forward = one(spans, PREDICTOR_SERVICE, "forward")
    assert queue.parent_span_id == forward.parent_span_id == predictor_server.span_id
    assert queue.end_ns <= forward.start_ns
    assert (predictor_server.trace_id, predictor_server.span_id) in forward.links
    attributes = forward.attributes
    assert attributes["model.name"] == MODEL_NAME and attributes["model.version"] == "1"
    assert attributes["engine"].startswith("TorchScript"), attributes
    assert attributes["batch.size"] == 1 and attributes["batch.requests"] == 1
    assert attributes["request.ids"] == [request_id]


def test_a_v1_request_is_one_trace_across_both_servers(traced: Traced) -> None:
    header, trace_id, client_span = traceparent()
    response = v1_coffee(traced.transformer, {"traceparent": header})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0][0]["label"] == "espresso"
    spans = of_trace(traced.receiver.wait_for(complete(trace_id)), trace_id)
    check_tree(
        spans,
        client_span,
        f"POST /v1/models/{MODEL_NAME}:predict",
        response.headers["x-request-id"],
    )


def test_a_v2_rest_request_is_one_trace_across_both_servers(traced: Traced) -> None:
    header, trace_id, client_span = traceparent()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{traced.transformer.http_port}")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(
        np.array([(DATA / "coffee.jpg").read_bytes()], dtype=np.object_), binary_data=True
    )
    result = client.infer(
        MODEL_NAME, [tensor], request_id="v2-rest-traced", headers={"traceparent": header}
    )
    assert result.as_numpy("label")[0][0].decode() == "espresso"
    spans = of_trace(traced.receiver.wait_for(complete(trace_id)), trace_id)
    check_tree(spans, client_span, f"POST /v2/models/{MODEL_NAME}/infer", "v2-rest-traced")


def test_a_v2_grpc_request_is_one_trace_across_both_servers(traced: Traced) -> None:
    header, trace_id, client_span = traceparent()
    [result] = grpc_calls(
        [
            {
                "op": "infer_images",
                "url": traced.transformer.grpc_target,
                "model": MODEL_NAME,
                "files": [str(DATA / "coffee.jpg")],
                "request_id": "v2-grpc-traced",
                "headers": {"traceparent": header},
            }
        ]
    )
    assert result["ok"] and result["label"][0][0] == "espresso", result
    spans = of_trace(traced.receiver.wait_for(complete(trace_id)), trace_id)
    check_tree(spans, client_span, GRPC_SPAN, "v2-grpc-traced")


def test_the_forward_pass_four_requests_share_links_to_each_of_them(traced: Traced) -> None:
    image = {"instances": [{"image": {"b64": b64(DATA / "coffee.jpg")}}]}
    url = f"{traced.transformer.url}/v1/models/{MODEL_NAME}:predict"
    parents = [traceparent() for _ in range(4)]
    metrics = f"{traced.predictor.url}/metrics"

    def post(header: str | None) -> httpx.Response:
        headers = {"traceparent": header} if header else {}
        return httpx.post(url, json=image, headers=headers, timeout=60)

    with ThreadPoolExecutor(5) as pool:
        with held_forward.holding(traced.gate):
            first = pool.submit(post, None)  # holds the forward thread
            held_forward.wait_until_held(traced.gate)
            four = [pool.submit(post, header) for header, _, _ in parents]
            # Released only once all four wait in the predictor's queue.
            deadline = time.monotonic() + 60
            with httpx.Client(timeout=10) as client:
                while "predictor_queue_depth 4.0" not in client.get(metrics).text:
                    assert time.monotonic() < deadline, "the four requests never queued"
                    time.sleep(0.05)
        assert first.result().status_code == 200
        assert all(f.result().status_code == 200 for f in four)

    trace_ids = [trace_id for _, trace_id, _ in parents]
    # Six spans in each of the four traces; the shared forward pass in one of them.
    spans = traced.receiver.wait_for(
        lambda s: (
            all(len(of_trace(s, t)) >= 6 for t in trace_ids)
            and any(x.name == "forward" and x.attributes["batch.requests"] == 4 for x in s)
        )
    )
    request_spans = [one(of_trace(spans, t), PREDICTOR_SERVICE, GRPC_SPAN) for t in trace_ids]
    forwards = [s for s in spans if s.name == "forward" and s.attributes["batch.requests"] == 4]
    assert len(forwards) == 1, [s.attributes for s in spans if s.name == "forward"]
    forward = forwards[0]
    assert forward.attributes["batch.size"] == 4
    assert set(forward.links) == {(s.trace_id, s.span_id) for s in request_spans}
    # Child of one of them: the trace of that request shows it in its tree.
    assert forward.parent_span_id in {s.span_id for s in request_spans}
    # Each request's wait in the queue is its own span, in its own trace.
    for request in request_spans:
        [queue] = [s for s in of_trace(spans, request.trace_id) if s.name == "queue"]
        assert queue.parent_span_id == request.span_id


def test_an_error_sets_the_span_status_with_the_message_the_client_got(traced: Traced) -> None:
    header, trace_id, client_span = traceparent()
    response = httpx.post(
        f"{traced.transformer.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": "not base64!"}}]},
        headers={"traceparent": header},
        timeout=60,
    )
    assert response.status_code == 400
    message = response.json()["error"]
    spans = traced.receiver.wait_for(
        lambda s: any(x.trace_id == trace_id and x.kind == "server" for x in s)
    )
    server = one(
        of_trace(spans, trace_id), TRANSFORMER_SERVICE, f"POST /v1/models/{MODEL_NAME}:predict"
    )
    assert server.parent_span_id == client_span
    assert server.attributes["http.response.status_code"] == 400
    assert server.status == "error" and server.status_message == message
    # Nothing reached the predictor; and the servers keep serving.
    assert not [s for s in of_trace(spans, trace_id) if s.service == PREDICTOR_SERVICE]
    ok = v1_coffee(traced.transformer)
    assert ok.status_code == 200


def test_nothing_is_exported_with_tracing_off(model_repository: Path, tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        off = {**os.environ, **tracing_env(receiver, OTEL_SDK_DISABLED="true")}
        predictor = start_server(
            "predictor",
            ["--model_dir", str(model_repository), "--model_name", MODEL_NAME],
            tmp_path / "predictor.log",
            env=off,
        )
        try:
            transformer = start_transformer(
                predictor, model_repository, tmp_path / "transformer.log", env=off
            )
            try:
                header, _, _ = traceparent()
                response = v1_coffee(transformer, {"traceparent": header})
                assert response.status_code == 200
            finally:
                transformer.stop()  # an exporter would flush what it holds now
        finally:
            predictor.stop()
        assert receiver.spans() == [] and receiver.exports == 0
    for log in ("predictor.log", "transformer.log"):
        assert "tracing off (OTEL_SDK_DISABLED=true)" in (tmp_path / log).read_text()
