"""Overload shed by time, with the servers' default bounds: 256 closed-loop V1 clients in a
process of their own (harness/overload.py) against the transformer in front of the predictor,
with the default engine for this CPU (common/cpus.py: OpenVINO INT8 on the CPUs measured) and
with TorchScript.

What must hold (issue 21): every request is a 200 or a fast 503/429; accepted requests' p99
<= 2.5 s; refusals' p99 <= 250 ms. And the refusals come before the body is read: a request
that sends its head and only part of its body is refused all the same.

The overload is real on any 2-CPU machine: 256 requests in flight would need the pipeline to
answer over 256 images/s to keep every one under the transformer's 1 s target, past what two
cores decode alone (~165 images/s measured here). The test checks that refusals happened, so
a machine fast enough to make this no overload fails loudly instead of passing vacuously.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import held_forward
import pytest
from conftest import DATA, MODEL_NAME, start_server
from test_observability import scrape, total
from test_reliability import pixels_body
from test_serve_script import wait_until

from common.cpus import default_engine
from harness.overload import in_another_process
from harness.repositories import engine_repository
from harness.servers import ServerProcess
from harness.v1 import v1_body

CLIENTS = 256
LOAD_SECONDS = 8.0
GRACE_SECONDS = 20.0  # the load process gives requests still out this long, then counts them
ACCEPTED_P99_BOUND_MS = 2500.0
REFUSED_P99_BOUND_MS = 250.0
HEAD_ONLY_TIMEOUT_S = 5.0
QUEUE_FILL_TIMEOUT_S = 30.0  # a refusal before the body must come long before the body would


def start_pipeline(
    repository: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    predictor_flags: tuple[str, ...] = (),
    transformer_flags: tuple[str, ...] = (),
) -> tuple[ServerProcess, ServerProcess]:
    """A predictor and a transformer with their default bounds, unless flags say otherwise."""
    common = ["--model_dir", str(repository), "--model_name", MODEL_NAME]
    predictor = start_server(
        "predictor", [*common, *predictor_flags], log_dir / "predictor.log", env=env
    )
    try:
        transformer = start_server(
            "transformer",
            [*common, "--predictor_host", predictor.grpc_target, *transformer_flags],
            log_dir / "transformer.log",
            without_torch=True,
        )
    except Exception:
        predictor.stop()
        raise
    return predictor, transformer


@pytest.fixture(params=[default_engine(), "torchscript"])
def pipeline(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The default pipeline on one engine."""
    repository = engine_repository(request.param, tmp_path_factory)
    predictor, transformer = start_pipeline(
        repository, tmp_path_factory.mktemp(f"overload-{request.param}")
    )
    try:
        yield predictor, transformer
    finally:
        transformer.stop()
        predictor.stop()


def test_256_clients_get_200_or_a_fast_503_and_accepted_requests_stay_bounded(
    pipeline: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    _, transformer = pipeline
    url = f"{transformer.url}/v1/models/{MODEL_NAME}:predict"
    body = v1_body((DATA / "chelsea.jpg").read_bytes())
    summary = in_another_process(url, body, tmp_path, CLIENTS, LOAD_SECONDS, GRACE_SECONDS)
    print(f"\noverload, {CLIENTS} clients: {summary}")
    statuses = summary["statuses"]
    assert set(statuses) <= {"200", "503", "429"}, statuses
    assert statuses.get("503", 0) + statuses.get("429", 0) > 0, (
        f"no request was refused: {CLIENTS} clients did not overload this machine"
    )
    assert statuses.get("200", 0) >= LOAD_SECONDS  # it kept serving through the overload
    assert summary["accepted_p99_ms"] <= ACCEPTED_P99_BOUND_MS, summary
    assert summary["refused_p99_ms"] <= REFUSED_P99_BOUND_MS, summary
    assert transformer.alive() and "expected wait" in transformer.tail(200_000)


def head_then_part_of_body(url: str, path: str, declared: int, headers: str = "") -> bytes:
    """Send a request head declaring `declared` body bytes, then only 100 of them; return what
    the server answers (within HEAD_ONLY_TIMEOUT_S)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HEAD_ONLY_TIMEOUT_S) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"{headers}content-length: {declared}\r\n\r\n".encode()
            + b"{" * 100
        )
        answer = b""
        while not _complete(answer):
            chunk = sock.recv(65536)  # a socket timeout fails the test: nothing came in time
            if not chunk:
                break
            answer += chunk
        return answer


def _complete(answer: bytes) -> bool:
    """Whether `answer` holds a whole response: its head and content-length bytes of body."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_refusals_come_before_the_body_is_read(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A held forward pass makes both servers full on demand, by their count bounds (the
    time bounds are the same check at the same place): the transformer by its requests in
    flight (1 here), the predictor by its queue (32 images behind the held pass). A request
    whose body never finishes is refused by each, at once."""
    log_dir = tmp_path_factory.mktemp("overload-head")
    gate = log_dir / "forward.gate"
    predictor, transformer = start_pipeline(
        model_repository,
        log_dir,
        held_forward.env(gate),
        predictor_flags=("--max_queue_size", "32", "--max_expected_wait_seconds", "0"),
        transformer_flags=("--max_inflight_requests", "1"),
    )
    try:
        pixels, pixel_headers = pixels_body(8)
        pixels_file = log_dir / "pixels.bin"
        pixels_file.write_bytes(pixels)
        v2_headers = "".join(f"{k}: {v}\r\n" for k, v in pixel_headers.items())
        with held_forward.holding(gate):
            held = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys, httpx; httpx.post(sys.argv[1], content=sys.stdin.buffer.read(),"
                    " headers={'content-type': 'application/json'}, timeout=60)",
                    f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
                ],
                stdin=subprocess.PIPE,
            )
            assert held.stdin is not None
            held.stdin.write(v1_body((DATA / "chelsea.jpg").read_bytes()))
            held.stdin.close()
            held_forward.wait_until_held(gate)
            fill = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "import sys, httpx; httpx.post(sys.argv[1], content=open(sys.argv[2],"
                        " 'rb').read(), headers=dict(a.split('=', 1) for a in sys.argv[3:]),"
                        " timeout=60)",
                        f"{predictor.url}/v2/models/{MODEL_NAME}/infer",
                        str(pixels_file),
                        *(f"{k}={v}" for k, v in pixel_headers.items()),
                    ]
                )
                for _ in range(4)  # 32 images: the predictor's queue is full
            ]
            wait_until(
                lambda: total(scrape(predictor), "predictor_queue_depth") >= 32,
                QUEUE_FILL_TIMEOUT_S,
                "the predictor's queue did not fill",
            )
            front = head_then_part_of_body(
                transformer.url, f"/v1/models/{MODEL_NAME}:predict", 1_000_000
            )
            back = head_then_part_of_body(
                predictor.url, f"/v2/models/{MODEL_NAME}/infer", len(pixels), v2_headers
            )
        held.wait(60)
        for process in fill:
            process.wait(60)
        for answer, why in ((front, b"--max_inflight_requests 1"), (back, b"--max_queue_size 32")):
            head = answer.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 503"), answer[:300]
            assert b"retry-after: 1" in head and why in answer, answer[:300]
        assert predictor.alive() and transformer.alive()
    finally:
        transformer.stop()
        predictor.stop()
