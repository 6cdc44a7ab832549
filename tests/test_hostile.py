"""Hostile clients against the real servers: idle and slow connections, large bodies.

The servers run with their default bounds (common.intake, common.budget, common.grpc_intake),
on the ONNX repository `make serve` serves; the hostile clients run in a process of their own
(tests/hostile_clients.py). Each test checks what the service promises: normal requests keep
being served, every hostile connection is ended within its deadline, and resident memory (the
kernel's peak, VmHWM, reset before each load) stays within the request memory budget over the
baseline.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import DATA, MODEL_NAME, Server, engine_repository, start_server
from prometheus_client.parser import text_string_to_metric_families

from common import intake, memory
from common.cli import DEFAULT_MAX_REQUEST_BYTES

CLIENTS = Path(__file__).with_name("hostile_clients.py")
V2_INFER = f"/v2/models/{MODEL_NAME}/infer"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Time past a deadline within which a connection counts as ended on time: the server's timer
# fires on its event loop, and the client sees the close a scheduling step later.
DEADLINE_SLACK_S = 1.5


@dataclass
class Stack:
    """A predictor and a transformer with default bounds."""

    predictor: Server
    transformer: Server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The ONNX pipeline, every bound at its default."""
    repository = engine_repository("onnx", tmp_path_factory)
    logs = tmp_path_factory.mktemp("hostile-logs")
    common = ["--model_dir", str(repository), "--model_name", MODEL_NAME]
    predictor = start_server("predictor", common, logs / "predictor.log")
    try:
        transformer = start_server(
            "transformer",
            [*common, "--predictor_host", predictor.grpc_target],
            logs / "transformer.log",
            without_torch=True,
        )
    except Exception:
        predictor.stop()
        raise
    yield Stack(predictor, transformer)
    transformer.stop()
    predictor.stop()


def run_clients(*args: str, timeout_s: float) -> dict:
    """Run tests/hostile_clients.py with `args`; its JSON output."""
    done = subprocess.run(
        [sys.executable, str(CLIENTS), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict = json.loads(done.stdout)
    return result


def v2_image_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """A V2 binary request for one image: its body and headers."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ]
        }
    ).encode()
    body = header + len(image).to_bytes(4, "little") + image
    return body, {"inference-header-content-length": str(len(header))}


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def timed_requests(url: str, seconds: float, minimum: int) -> list[tuple[int, float]]:
    """Normal requests one after another, for `seconds` and at least `minimum` of them: each
    one's status and seconds."""
    body, headers = v2_image_request((DATA / "chelsea.jpg").read_bytes())
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30.0) as client:
        while time.monotonic() < deadline or len(results) < minimum:
            started = time.perf_counter()
            status = client.post(url + V2_INFER, content=body, headers=headers).status_code
            results.append((status, time.perf_counter() - started))
    return results


def test_slow_and_idle_connections_do_not_starve_normal_requests(stack: Stack) -> None:
    """200 slow-POST connections (a 1 MB Content-Length, then one byte a second), 20 Slowloris
    ones (the request head a byte a second) and 20 idle ones, all reopened as soon as they end,
    for 20 s: every normal request meanwhile is a 200 with p99 within 2x of the unloaded p99;
    every slow POST is answered 408 within the body deadline, every other one closed within
    the header deadline."""
    url = stack.transformer.url
    timed_requests(url, 0.0, 10)  # warm the path
    unloaded = timed_requests(url, 4.0, 40)
    assert {status for status, _ in unloaded} == {200}
    seconds = 20.0
    attack = subprocess.Popen(
        [
            sys.executable,
            str(CLIENTS),
            "slow",
            "--port",
            str(stack.transformer.http_port),
            "--connections",
            "200",
            "--slow_heads",
            "20",
            "--idle",
            "20",
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # every hostile connection open
        loaded = timed_requests(url, seconds - 4.0, 40)
        out, err = attack.communicate(timeout=seconds + 30)
    finally:
        attack.kill()
    assert attack.returncode == 0, err[-3000:]
    statuses = Counter(status for status, _ in loaded)
    assert statuses == {200: len(loaded)}, statuses
    before, during = p99([s for _, s in unloaded]), p99([s for _, s in loaded])
    print(f"normal requests: p99 {before * 1000:.1f} ms unloaded, {during * 1000:.1f} ms loaded")
    assert during <= 2 * before, (before, during)

    result = json.loads(out)
    records = result["records"]
    body_deadline = intake.DEFAULT_BODY_TIMEOUT_S + DEADLINE_SLACK_S
    head_deadline = intake.DEFAULT_HEADER_TIMEOUT_S + DEADLINE_SLACK_S
    answered_408 = 0
    for record in records:
        assert "error" not in record or not record["error"].startswith("connect"), record
        deadline = body_deadline if record["kind"] == "slow_body" else head_deadline
        end = record["ended"] if record["ended"] is not None else result["seconds"]
        assert end - record["started"] <= deadline, record  # none outlived its deadline
        if record["ended"] is not None and record["kind"] == "slow_body":
            assert record["status"] == 408, record
            answered_408 += 1
        elif record["ended"] is not None:
            assert record["status"] is None, record  # closed: no request to answer
    # Each slow POST was cut off at least once in 20 s (10 s deadline), and reopened.
    assert answered_408 >= 200, Counter(r["kind"] for r in records)


def test_connections_past_the_cap_are_refused_at_once(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With --max_connections 16, a 17th connection is answered 503 with Retry-After at once
    and closed; once the others go, requests are served."""
    repository = engine_repository("onnx", tmp_path_factory)
    transformer = start_server(
        "transformer",
        [
            "--model_dir",
            str(repository),
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            stack.predictor.grpc_target,
            "--max_connections",
            "16",
        ],
        tmp_path_factory.mktemp("cap-logs") / "transformer.log",
        without_torch=True,
    )
    try:
        held = [socket.create_connection(("127.0.0.1", transformer.http_port)) for _ in range(16)]
        time.sleep(0.3)  # accepted by the server
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", transformer.http_port), timeout=5) as extra:
            answer = extra.recv(4096)
            closed = extra.recv(4096) == b""
        assert time.monotonic() - started < 1.0
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in answer.lower() and b"--max_connections 16" in answer
        assert closed
        for sock in held:
            sock.close()
        body, headers = v2_image_request((DATA / "chelsea.jpg").read_bytes())
        for _ in range(20):
            response = httpx.post(transformer.url + V2_INFER, content=body, headers=headers)
            if response.status_code == 200:
                break
            time.sleep(0.1)  # the closes reach the server
        assert response.status_code == 200
    finally:
        transformer.stop()


def test_request_heads_over_the_limit_are_refused(stack: Stack) -> None:
    """A request head past 64 KiB is answered 431 and its connection closed."""
    with socket.create_connection(("127.0.0.1", stack.transformer.http_port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        filler = b"x-filler: " + b"a" * 1000 + b"\r\n"
        try:
            for _ in range(intake.MAX_HEADER_BYTES // len(filler) + 2):
                sock.sendall(filler)
        except OSError:
            pass  # closed while still sending: the answer is already in our buffer
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer


def scrape(server: Server, name: str) -> float:
    """The value of one unlabelled series on `server`'s /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=5.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


def resident(pid: int, field: str) -> int:
    """A memory field of the server's /proc status (VmRSS, VmHWM), in bytes."""
    found = memory.status_bytes(field, pid)
    assert found is not None, f"no {field} for {pid}"
    return found


@pytest.mark.parametrize(
    ("protocol", "component"),
    [
        ("v1", "transformer"),
        ("v2-binary", "transformer"),
        ("grpc", "transformer"),
        ("grpc-pixels", "predictor"),
    ],
)
def test_large_bodies_stay_within_the_memory_budget(
    stack: Stack, protocol: str, component: str
) -> None:
    """32 concurrent requests just under --max_request_bytes: each is answered (400 for the
    junk they carry, or refused: 503 / RESOURCE_EXHAUSTED), the server's peak resident memory
    stays within its request memory budget over what it held before, it gives the memory back,
    and it serves normally afterwards."""
    server = getattr(stack, component)
    pid = server.process.pid
    budget = scrape(server, f"{component}_request_memory_budget_bytes")
    target = server.grpc_target if protocol.startswith("grpc") else f"127.0.0.1:{server.http_port}"
    baseline = resident(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the resident size now
    result = run_clients(
        "large",
        "--protocol",
        protocol,
        "--target",
        target,
        "--count",
        "32",
        "--bytes",
        str(DEFAULT_MAX_REQUEST_BYTES - 4096),
        timeout_s=180,
    )
    peak = resident(pid, "VmHWM")
    statuses = Counter(result["statuses"])
    grown_mib = (peak - baseline) / 2**20
    print(f"{protocol}: {dict(statuses)}; peak {grown_mib:.0f} MiB over {baseline >> 20} MiB")
    allowed = {"400", "503"} if protocol in ("v1", "v2-binary") else {"INVALID_ARGUMENT"}
    allowed |= {"RESOURCE_EXHAUSTED"} if protocol.startswith("grpc") else set()
    assert set(statuses) <= allowed, statuses
    assert peak - baseline <= budget, (grown_mib, budget / 2**20)
    assert scrape(server, f"{component}_request_memory_held_bytes") == 0
    body, headers = v2_image_request((DATA / "chelsea.jpg").read_bytes())
    if component == "transformer":
        response = httpx.post(server.url + V2_INFER, content=body, headers=headers, timeout=30)
        assert response.status_code == 200


def test_a_grpc_call_whose_message_never_comes_is_ended(stack: Stack) -> None:
    """A ModelInfer call that opens its stream and sends no message is ended with
    DEADLINE_EXCEEDED after the body timeout, holding no memory; a call that sends two
    messages is refused INVALID_ARGUMENT."""
    stop = threading.Event()

    def nothing() -> Iterator[bytes]:
        stop.wait(60)
        return
        yield b""  # a generator that yields nothing until stopped

    with grpc.insecure_channel(stack.transformer.grpc_target) as channel:
        call = channel.stream_unary(MODEL_INFER)
        started = time.monotonic()
        try:
            with pytest.raises(grpc.RpcError) as stalled:
                call(nothing(), timeout=60)
        finally:
            stop.set()
        waited = time.monotonic() - started
        assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, stalled.value
        assert "--body_timeout_seconds" in (stalled.value.details() or "")
        assert intake.DEFAULT_BODY_TIMEOUT_S - 0.5 <= waited
        assert waited <= intake.DEFAULT_BODY_TIMEOUT_S + DEADLINE_SLACK_S

        with pytest.raises(grpc.RpcError) as twice:
            call(iter([b"", b""]), timeout=30)
        assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT, twice.value
        with pytest.raises(grpc.RpcError) as unreadable:
            channel.unary_unary(MODEL_INFER)(b"\x0a\xff\xff", timeout=30)
        assert unreadable.value.code() == grpc.StatusCode.INVALID_ARGUMENT, unreadable.value
        assert "unreadable" in (unreadable.value.details() or "")
    assert scrape(stack.transformer, "transformer_request_memory_held_bytes") == 0
