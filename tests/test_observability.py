"""Metrics and request ids on the real servers: counters match the traffic sent, ids go end to end.

A scrape before and after a known mix of good and bad requests over every protocol must show
exactly that mix in `*_requests_total`; an id sent (header, V2 `id` or gRPC metadata) comes
back and appears in both servers' logs; `--log_format json` writes only JSON lines.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    DATA,
    MODEL_NAME,
    TEST_MAX_REQUEST_BYTES,
    Server,
    grpc_calls,
    start_server,
    start_transformer,
)
from prometheus_client.parser import text_string_to_metric_families

COFFEE = DATA / "coffee.jpg"


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the server's /metrics, keyed by (name, sorted labels)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_by(samples: dict, name: str) -> Counter[tuple[str, str]]:
    """{(protocol, code): count} of a `*_requests_total` counter."""
    counts: Counter[tuple[str, str]] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name:
            label = dict(labels)
            counts[(label["protocol"], label["code"])] = int(value)
    return counts


def total(samples: dict, name: str) -> float:
    """The sum of every sample of metric `name` (all label sets)."""
    return sum(value for (metric, _), value in samples.items() if metric == name)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def v1(server: Server, image: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": image}}]},
        headers=headers,
        timeout=60,
    )


def v2_json(server: Server, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/{MODEL_NAME}/infer", json=body, headers=headers, timeout=60
    )


def v2_image(image: str, request_id: str | None = None, name: str = "image") -> dict:
    body: dict = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [image]}]}
    if request_id is not None:
        body["id"] = request_id
    return body


def wait_for_counts(server: Server, name: str, before: Counter, expected: Counter) -> Counter:
    """The counter's increase since `before`, once it reaches `expected` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        delta = requests_by(scrape(server), name)
        delta.subtract(before)
        delta = +delta  # drop zeros
        if delta == expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.1)


def test_counters_match_a_known_mix_of_good_and_bad_requests(
    transformer: Server, predictor: Server
) -> None:
    before_t = requests_by(scrape(transformer), "transformer_requests_total")
    before_p = requests_by(scrape(predictor), "predictor_requests_total")
    image = b64(COFFEE)
    codes = [v1(transformer, image).status_code for _ in range(3)]
    codes += [v1(transformer, "not base64!").status_code for _ in range(2)]
    codes += [v2_json(transformer, v2_image(image)).status_code for _ in range(2)]
    codes.append(v2_json(transformer, v2_image(image, name="pixels")).status_code)
    oversized = b'{"instances": ["' + b"A" * (TEST_MAX_REQUEST_BYTES + 1) + b'"]}'
    codes.append(
        httpx.post(
            f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
            content=oversized,
            headers={"content-type": "application/json"},
            timeout=60,
        ).status_code
    )
    assert codes == [200, 200, 200, 400, 400, 200, 200, 400, 413]
    url = transformer.grpc_target
    results = grpc_calls(
        [{"op": "infer_images", "url": url, "model": MODEL_NAME, "files": [str(COFFEE)]}] * 2
        + [{"op": "infer_images", "url": url, "model": MODEL_NAME, "hex": ["00" * 16]}]
    )
    assert [r["ok"] for r in results] == [True, True, False]

    expected_t = Counter(
        {
            ("v1", "200"): 3,
            ("v1", "400"): 2,
            ("v1", "413"): 1,
            ("v2-rest", "200"): 2,
            ("v2-rest", "400"): 1,
            ("v2-grpc", "OK"): 2,
            ("v2-grpc", "INVALID_ARGUMENT"): 1,
        }
    )
    assert wait_for_counts(transformer, "transformer_requests_total", before_t, expected_t) == (
        expected_t
    )
    # Only the 7 good requests reach the predictor, all over gRPC.
    expected_p = Counter({("v2-grpc", "OK"): 7})
    assert wait_for_counts(predictor, "predictor_requests_total", before_p, expected_p) == (
        expected_p
    )
    samples = scrape(transformer)
    assert samples[("transformer_requests_in_flight", ())] == 0
    assert samples[("transformer_images_decoded_total", (("format", "JPEG"),))] >= 7
    model = (("model_name", MODEL_NAME),)
    for stage in ("preprocess", "predict", "postprocess"):  # kserve's, around each hook
        assert samples[(f"request_{stage}_seconds_count", model)] >= 7
    predictor_samples = scrape(predictor)
    assert predictor_samples[("predictor_forward_seconds_count", ())] >= 1
    assert predictor_samples[("predictor_batch_size_count", ())] >= 1


# kserve logs nothing per successful gRPC call unless latency logging is on (then a timing
# line with the request id, in both components): these servers log that way, as JSON.
LOGGING_FLAGS = ("--enable_latency_logging", "true", "--log_format", "json")


@pytest.fixture(scope="module")
def logging_predictor(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A second predictor, logging a JSON line per request."""
    log = tmp_path_factory.mktemp("logs") / "predictor-json.log"
    args = ["--model_dir", str(model_repository), "--model_name", MODEL_NAME, *LOGGING_FLAGS]
    server = start_server("predictor", args, log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def logging_transformer(
    logging_predictor: Server, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A second transformer in front of it, logging the same way."""
    log = tmp_path_factory.mktemp("logs") / "transformer-json.log"
    server = start_transformer(logging_predictor, model_repository, log, *LOGGING_FLAGS)
    yield server
    server.stop()


def _log_lines_with(server: Server, request_id: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.log.read_text().splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_request_id_header_goes_end_to_end(
    logging_transformer: Server, logging_predictor: Server
) -> None:
    transformer, predictor = logging_transformer, logging_predictor
    request_id = f"test-header-{time.monotonic_ns()}"
    response = v1(transformer, b64(COFFEE), {"x-request-id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    assert _log_lines_with(transformer, request_id), "the transformer never logged the id"
    assert _log_lines_with(predictor, request_id), "the predictor never logged the id"


def test_request_id_generated_when_absent_and_on_errors(transformer: Server) -> None:
    first = v1(transformer, b64(COFFEE)).headers["x-request-id"]
    bad = v1(transformer, "not base64!")
    assert bad.status_code == 400
    assert re.fullmatch(r"[0-9a-f]{32}", first) and re.fullmatch(
        r"[0-9a-f]{32}", bad.headers["x-request-id"]
    )
    assert first != bad.headers["x-request-id"]


def test_v2_id_is_the_request_id_without_a_header(
    logging_transformer: Server, logging_predictor: Server
) -> None:
    transformer, predictor = logging_transformer, logging_predictor
    request_id = f"test-v2-{time.monotonic_ns()}"
    response = v2_json(transformer, v2_image(b64(COFFEE), request_id))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == request_id
    assert response.headers["x-request-id"] == request_id
    assert _log_lines_with(predictor, request_id)


def test_grpc_request_id_in_metadata_reaches_the_predictor(
    logging_transformer: Server, logging_predictor: Server
) -> None:
    transformer, predictor = logging_transformer, logging_predictor
    request_id = f"test-grpc-{time.monotonic_ns()}"
    [result] = grpc_calls(
        [
            {
                "op": "infer_images",
                "url": transformer.grpc_target,
                "model": MODEL_NAME,
                "files": [str(COFFEE)],
                "headers": {"x-request-id": request_id},
            }
        ]
    )
    assert result["ok"], result
    assert _log_lines_with(transformer, request_id)
    assert _log_lines_with(predictor, request_id)


def test_grpc_answers_carry_the_request_id_in_their_trailers(transformer: Server) -> None:
    """Over gRPC the id comes back as `x-request-id` trailing metadata, on an answer and on an
    error alike: the client's header, else the V2 `id`, else a generated one (the answer's
    `id` then)."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from common.codecs import serialize_bytes

    def request(request_id: str = "", input_name: str = "image") -> pb.ModelInferRequest:
        import numpy as np

        tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype="BYTES", shape=[1])
        return pb.ModelInferRequest(
            model_name=MODEL_NAME,
            id=request_id,
            inputs=[tensor],
            raw_input_contents=[serialize_bytes(np.array([COFFEE.read_bytes()], np.object_))],
        )

    def trailers(call: grpc.Call) -> dict[str, str]:
        return {key: str(value) for key, value in call.trailing_metadata() or ()}

    with grpc.insecure_channel(transformer.grpc_target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer, call = infer.with_call(request(), metadata=(("x-request-id", "trailer-1"),))
        assert trailers(call)["x-request-id"] == "trailer-1"
        answer, call = infer.with_call(request(request_id="trailer-2"), timeout=30)
        assert trailers(call)["x-request-id"] == "trailer-2" == answer.id
        answer, call = infer.with_call(request(), timeout=30)
        generated = trailers(call)["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated) and answer.id == generated
        with pytest.raises(grpc.RpcError) as refused:
            infer(request(input_name="nope"), metadata=(("x-request-id", "trailer-3"),))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert trailers(refused.value)["x-request-id"] == "trailer-3"


def test_json_log_format_is_one_object_per_line_with_the_id(
    logging_transformer: Server, logging_predictor: Server
) -> None:
    request_id = f"test-json-{time.monotonic_ns()}"
    assert v1(logging_transformer, b64(COFFEE), {"x-request-id": request_id}).status_code == 200
    assert v1(logging_transformer, "not base64!", {"x-request-id": request_id}).status_code == 400
    assert _log_lines_with(logging_transformer, request_id)
    assert _log_lines_with(logging_predictor, request_id)
    for server in (logging_transformer, logging_predictor):
        records = [json.loads(line) for line in server.log.read_text().splitlines()]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    records = [json.loads(line) for line in logging_transformer.log.read_text().splitlines()]
    about = [r for r in records if r.get("request_id") == request_id]
    loggers = {r["logger"] for r in about}
    # Our access line for each (the 400's reason is in its answer, not in a traceback) and,
    # with --enable_latency_logging, kserve's timing line for the 200; not uvicorn's.
    assert {"access", "kserve.trace"} <= loggers and "uvicorn.access" not in loggers, loggers
    access = [r["message"] for r in about if r["logger"] == "access"]
    assert len(access) == 2 and any(" 400 " in line for line in access), access
