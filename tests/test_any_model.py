"""Any model, not only the image classifier: the predictor serves Triton's classic `simple` model.

A session fixture writes the model into a Triton-layout repository: two INT32 [16] inputs,
OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, max_batch_size 8, an ONNX graph of one
Add and one Sub, and nothing else (no labels, no preprocess.json). The predictor is started on
it through its CLI as in the cluster; every test talks to it over the public protocols only
(V1, V2 REST JSON and binary, V2 gRPC, /metrics) and checks the values against numpy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import held_forward
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from conftest import grpc_calls, start_server
from onnx import TensorProto, helper
from test_observability import scrape, total

from harness.servers import ServerProcess as Server

MODEL_NAME = "simple"
PLATFORM = "onnxruntime_onnx"
WIDTH = 16  # every tensor's one declared dimension
MAX_BATCH_SIZE = 8
INPUTS = ("INPUT0", "INPUT1")
OUTPUTS = ("OUTPUT0", "OUTPUT1")
# Triton's `simple` example as this repository writes config.pbtxt (see model_repository-onnx/).
CONFIG_PBTXT = f"""\
name: "{MODEL_NAME}"
platform: "{PLATFORM}"
max_batch_size: {MAX_BATCH_SIZE}
input {{
  name: "INPUT0"
  data_type: TYPE_INT32
  dims: {WIDTH}
}}
input {{
  name: "INPUT1"
  data_type: TYPE_INT32
  dims: {WIDTH}
}}
output {{
  name: "OUTPUT0"
  data_type: TYPE_INT32
  dims: {WIDTH}
}}
output {{
  name: "OUTPUT1"
  data_type: TYPE_INT32
  dims: {WIDTH}
}}
dynamic_batching {{
  max_queue_delay_microseconds: 2000
}}
"""
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the oldest IR that opset 17 allows: any onnxruntime of recent years loads it
# Small enough that neither the sum nor the difference can overflow INT32.
VALUE_BOUND = 1 << 20
CLIENT_TIMEOUT_S = 60.0
CONCURRENT = 24  # single-row requests in the batching test: three passes' worth at most 8 rows
QUEUE_TIMEOUT_S = 30.0
POLL_S = 0.02


def simple_onnx() -> onnx.ModelProto:
    """The `simple` graph: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, batch first."""

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", WIDTH])

    graph = helper.make_graph(
        [
            helper.make_node("Add", list(INPUTS), [OUTPUTS[0]]),
            helper.make_node("Sub", list(INPUTS), [OUTPUTS[1]]),
        ],
        MODEL_NAME,
        [tensor(name) for name in INPUTS],
        [tensor(name) for name in OUTPUTS],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="session")
def simple_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton-layout repository holding only `simple`: config.pbtxt and 1/model.onnx."""
    root = tmp_path_factory.mktemp("simple_repository")
    version = root / MODEL_NAME / "1"
    version.mkdir(parents=True)
    (root / MODEL_NAME / "config.pbtxt").write_text(CONFIG_PBTXT, encoding="utf-8")
    onnx.save(simple_onnx(), version / "model.onnx")
    return root


@dataclass(frozen=True)
class HeldPredictor:
    """The predictor serving `simple`, and the gate that holds its forward passes while it
    exists (tests/held_forward.py)."""

    server: Server
    gate: Path

    @property
    def infer_url(self) -> str:
        """The V2 REST infer URL of `simple`."""
        return f"{self.server.url}/v2/models/{MODEL_NAME}/infer"


@pytest.fixture(scope="module")
def simple_predictor(
    simple_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HeldPredictor]:
    """`python -m predictor --model_dir <repo> --model_name simple`, ready."""
    logs = tmp_path_factory.mktemp("logs-simple")
    gate = logs / "forward.gate"
    server = start_server(
        "predictor",
        # No time bound: the tests queue many requests behind a held pass, which the time
        # bound (tests/test_pacing.py, test_overload.py) would rightly refuse.
        [
            "--model_dir",
            str(simple_repository),
            "--model_name",
            MODEL_NAME,
            "--max_expected_wait_seconds",
            "0",
        ],
        logs / "predictor.log",
        env=held_forward.env(gate),
    )
    yield HeldPredictor(server, gate)
    server.stop()


# --- helpers ------------------------------------------------------------------------------------


def operands(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two INT32 [rows, 16] arrays of random values, the same for the same seed."""
    rng = np.random.default_rng(seed)
    a, b = (rng.integers(-VALUE_BOUND, VALUE_BOUND, (rows, WIDTH), dtype=np.int32) for _ in "ab")
    return a, b


def expected(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """What `simple` must answer for inputs `a` and `b`."""
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def json_tensor(name: str, array: np.ndarray, datatype: str = "INT32") -> dict[str, Any]:
    """A V2 REST JSON input tensor."""
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.flatten().tolist(),
    }


def v2_body(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """A good V2 REST JSON request for `simple`."""
    return {"inputs": [json_tensor("INPUT0", a), json_tensor("INPUT1", b)]}


def assert_v2_answer(response: httpx.Response, a: np.ndarray, b: np.ndarray) -> None:
    """`response` is a 200 holding OUTPUT0 and OUTPUT1, INT32, of a's shape, with the values."""
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert sorted(outputs) == list(OUTPUTS), response.text
    for name, values in expected(a, b).items():
        assert outputs[name]["datatype"] == "INT32", outputs[name]
        assert outputs[name]["shape"] == list(a.shape), outputs[name]
        assert outputs[name]["data"] == values.flatten().tolist(), name


def assert_still_serving(predictor: HeldPredictor) -> None:
    """The predictor is alive and answers a good request correctly."""
    a, b = operands(2, seed=99)
    assert_v2_answer(httpx.post(predictor.infer_url, json=v2_body(a, b), timeout=30), a, b)
    assert predictor.server.alive()


def says(message: str, *alternatives: str) -> bool:
    """Whether `message` holds one of `alternatives` as a whole token (case-insensitive)."""
    return any(
        re.search(rf"(?<!\w){re.escape(word)}(?!\w)", message, re.IGNORECASE)
        for word in alternatives
    )


def forward_passes(server: Server) -> tuple[float, float]:
    """(forward passes, requests they served) so far, from `predictor_batch_requests`."""
    now = scrape(server)
    return total(now, "predictor_batch_requests_count"), total(now, "predictor_batch_requests_sum")


def wait_until_queued(server: Server, rows: int, timeout_s: float = QUEUE_TIMEOUT_S) -> None:
    """Return once `rows` rows wait in the predictor's queue (`predictor_queue_depth`); raises
    TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    depth = total(scrape(server), "predictor_queue_depth")
    while depth < rows:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{depth:.0f} of {rows} rows queued after {timeout_s:.0f} s")
        time.sleep(POLL_S)
        depth = total(scrape(server), "predictor_queue_depth")


# --- the model as declared ----------------------------------------------------------------------


def test_metadata_declares_both_inputs_and_outputs_from_config(
    simple_predictor: HeldPredictor,
) -> None:
    """GET /v2/models/simple: the platform and every tensor of config.pbtxt, batch first."""
    url = f"{simple_predictor.server.url}/v2/models/{MODEL_NAME}"
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["name"] == MODEL_NAME
    assert meta["platform"] == PLATFORM
    for key, names in (("inputs", INPUTS), ("outputs", OUTPUTS)):
        declared = [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in meta[key]
        ]
        assert declared == [
            {"name": name, "datatype": "INT32", "shape": [-1, WIDTH]} for name in names
        ], meta


# --- the protocols ------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 3])
def test_v2_rest_json_adds_and_subtracts(simple_predictor: HeldPredictor, rows: int) -> None:
    """V2 REST JSON: OUTPUT0 and OUTPUT1, INT32 [rows, 16], hold the sum and the difference."""
    a, b = operands(rows, seed=rows)
    response = httpx.post(simple_predictor.infer_url, json=v2_body(a, b), timeout=30)
    assert_v2_answer(response, a, b)


@pytest.mark.parametrize("rows", [1, MAX_BATCH_SIZE])
def test_v2_rest_binary_adds_and_subtracts(simple_predictor: HeldPredictor, rows: int) -> None:
    """V2 REST with binary tensor data both ways (tritonclient.http)."""
    a, b = operands(rows, seed=10 + rows)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{simple_predictor.server.http_port}")
    try:
        inputs = []
        for name, array in zip(INPUTS, (a, b), strict=True):
            tensor = httpclient.InferInput(name, list(array.shape), "INT32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
        result = client.infer(MODEL_NAME, inputs, outputs=wanted)
    finally:
        client.close()
    for name, values in expected(a, b).items():
        answer = result.as_numpy(name)
        assert answer is not None, name
        assert answer.dtype == np.int32, (name, answer.dtype)
        assert result.get_output(name)["datatype"] == "INT32"
        np.testing.assert_array_equal(answer, values)


def grpc_call(
    predictor: HeldPredictor, tmp_path: Path, tag: str, tensors: dict[str, np.ndarray]
) -> dict[str, Any]:
    """An `infer_tensors` call (tests/grpc_client.py) of `tensors` by name; arrays go by .npy."""
    inputs = []
    for name, array in tensors.items():
        path = tmp_path / f"{tag}-{name}.npy"
        np.save(path, array)
        datatype = {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}[array.dtype]
        inputs.append({"name": name, "datatype": datatype, "npy": str(path)})
    return {
        "op": "infer_tensors",
        "url": predictor.server.grpc_target,
        "model": MODEL_NAME,
        "inputs": inputs,
        "outputs": list(OUTPUTS),
    }


def test_v2_grpc_adds_and_subtracts_and_refuses_a_wrong_datatype(
    simple_predictor: HeldPredictor, tmp_path: Path
) -> None:
    """V2 gRPC (tritonclient.grpc): the right values for 1 and 3 rows; FP32 for INPUT0 is
    INVALID_ARGUMENT naming the input and both datatypes, and the next call is served."""
    cases = [operands(rows, seed=20 + rows) for rows in (1, 3)]
    good = [
        grpc_call(simple_predictor, tmp_path, f"good{i}", dict(zip(INPUTS, pair, strict=True)))
        for i, pair in enumerate(cases)
    ]
    a, b = cases[0]
    bad = grpc_call(
        simple_predictor, tmp_path, "bad", {"INPUT0": a.astype(np.float32), "INPUT1": b}
    )
    *answers, refused, after = grpc_calls([*good, bad, good[0]])
    for answer, (a, b) in zip([*answers, after], [*cases, cases[0]], strict=True):
        assert answer["ok"], answer
        for name, values in expected(a, b).items():
            assert answer["outputs"][name] == {
                "datatype": "INT32",
                "shape": list(values.shape),
                "values": values.tolist(),
            }, name
    assert not refused["ok"], refused
    assert refused["code"] == "StatusCode.INVALID_ARGUMENT", refused
    message = refused["message"]
    assert says(message, "INPUT0") and says(message, "FP32", "float32"), message
    assert says(message, "INT32", "int32"), message


def test_v1_row_format_answers_one_dict_per_instance(simple_predictor: HeldPredictor) -> None:
    """V1 with several inputs, TF Serving's row format: {"instances": [{"INPUT0": [...],
    "INPUT1": [...]}, ...]} answers {"predictions": [{"OUTPUT0": [...], "OUTPUT1": [...]}]}."""
    a, b = operands(3, seed=30)
    instances = [
        {"INPUT0": row_a.tolist(), "INPUT1": row_b.tolist()}
        for row_a, row_b in zip(a, b, strict=True)
    ]
    response = httpx.post(
        f"{simple_predictor.server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": instances},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    sums, differences = expected(a, b).values()
    assert response.json() == {
        "predictions": [
            {"OUTPUT0": total.tolist(), "OUTPUT1": difference.tolist()}
            for total, difference in zip(sums, differences, strict=True)
        ]
    }


# --- batching -----------------------------------------------------------------------------------


def test_concurrent_requests_share_forward_passes(simple_predictor: HeldPredictor) -> None:
    """24 concurrent single-row requests, queued behind a held forward pass, each get their own
    right answer, from fewer forward passes than requests (`predictor_batch_requests`)."""
    predictor = simple_predictor.server
    pairs = [operands(1, seed=100 + i) for i in range(CONCURRENT)]
    passes_before, requests_before = forward_passes(predictor)
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT_S) as client,
        ThreadPoolExecutor(CONCURRENT) as pool,
    ):

        def infer(a: np.ndarray, b: np.ndarray) -> httpx.Response:
            return client.post(simple_predictor.infer_url, json=v2_body(a, b))

        with held_forward.holding(simple_predictor.gate):
            first = pool.submit(infer, *pairs[0])
            held_forward.wait_until_held(simple_predictor.gate)
            rest = [pool.submit(infer, *pair) for pair in pairs[1:]]
            wait_until_queued(predictor, len(rest))
        responses = [job.result() for job in (first, *rest)]
    passes_after, requests_after = forward_passes(predictor)
    for response, (a, b) in zip(responses, pairs, strict=True):
        assert_v2_answer(response, a, b)
    passes, requests = passes_after - passes_before, requests_after - requests_before
    print(f"\n{requests:.0f} requests in {passes:.0f} forward passes")
    assert requests == CONCURRENT
    assert passes < requests


def test_the_event_loop_answers_while_a_forward_pass_is_stuck(
    simple_predictor: HeldPredictor,
) -> None:
    """A forward pass held on the forward thread (tests/held: a model that does not finish)
    leaves the event loop free: health, readiness, metadata and metrics all answer while it
    waits. A pass run on the event loop would hang them all until it ended, whatever this
    CPU's speed; then the held request gets its answer."""
    predictor = simple_predictor.server
    a, b = operands(1, seed=7)
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT_S) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        with held_forward.holding(simple_predictor.gate):
            stuck = pool.submit(client.post, simple_predictor.infer_url, json=v2_body(a, b))
            held_forward.wait_until_held(simple_predictor.gate)
            with httpx.Client(timeout=5) as probe:
                for path in (
                    "/v2/health/live",
                    "/v2/health/ready",
                    f"/v2/models/{MODEL_NAME}",
                    "/metrics",
                ):
                    assert probe.get(f"{predictor.url}{path}").status_code == 200, path
            assert not stuck.done()  # still held: the answers above came from a free loop
        assert_v2_answer(stuck.result(), a, b)


# --- bad requests: a clear 400 naming what was wrong, and the predictor keeps serving ------------


def bad_requests() -> dict[str, tuple[list[dict[str, Any]], list[tuple[str, ...]]]]:
    """Each bad V2 request's inputs, and what its error must say: per entry, one of the words."""
    a, b = operands(1, seed=40)
    wide_a, wide_b = operands(MAX_BATCH_SIZE + 1, seed=41)
    two, _ = operands(2, seed=42)
    _, three = operands(3, seed=43)
    narrow = np.zeros((1, WIDTH - 1), dtype=np.int32)
    return {
        "unknown input name": (
            [json_tensor("INPUT0", a), json_tensor("INPUT9", b)],
            [("INPUT9",), ("INPUT1",)],
        ),
        "missing input": ([json_tensor("INPUT0", a)], [("INPUT1",)]),
        "wrong datatype": (
            [json_tensor("INPUT0", a.astype(np.float32), "FP32"), json_tensor("INPUT1", b)],
            [("INPUT0",), ("FP32", "float32"), ("INT32", "int32")],
        ),
        "wrong shape": (
            [json_tensor("INPUT0", narrow), json_tensor("INPUT1", b)],
            [("INPUT0",), ("[1, 15]", "[1,15]", "(1, 15)"), (str(WIDTH),)],
        ),
        "batch above max_batch_size": (
            [json_tensor("INPUT0", wide_a), json_tensor("INPUT1", wide_b)],
            [(str(MAX_BATCH_SIZE + 1),), (str(MAX_BATCH_SIZE),)],
        ),
        "batch sizes disagree": (
            [json_tensor("INPUT0", two), json_tensor("INPUT1", three)],
            [("INPUT0",), ("INPUT1",), ("2",), ("3",)],
        ),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_a_bad_v2_request_is_a_400_naming_the_problem(
    simple_predictor: HeldPredictor, case: str
) -> None:
    """Each bad request is a 400 whose "error" says what was received and what was expected;
    the predictor then answers a good request correctly."""
    inputs, words = bad_requests()[case]
    response = httpx.post(simple_predictor.infer_url, json={"inputs": inputs}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    for alternatives in words:
        assert says(error, *alternatives), (alternatives, error)
    assert_still_serving(simple_predictor)
