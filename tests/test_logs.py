"""The logs an operator reads, counted: real servers with their default logging, a transformer
started before its predictor (readiness probes answered 503, then 200), then a fixed mix of
predictions, bad inputs, probes and metrics scrapes. One access line per request, nothing per
probe or scrape, one WARNING when readiness changes, no traceback for any of it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import DATA, MODEL_NAME, TEST_MAX_REQUEST_BYTES
from test_observability import b64

from harness.servers import ServerProcess, free_ports, start

PREDICTIONS, BAD_INPUTS, PROBES, SCRAPES = 10, 2, 10, 5
READY, LIVE = "/v2/health/ready", "/v2/health/live"


def lines_since(log: Path, offset: int) -> list[str]:
    return log.read_bytes()[offset:].decode(errors="replace").splitlines()


def wait_for(condition: Callable[[], bool], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true after {timeout_s:.0f} s")
        time.sleep(0.2)


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def test_a_fixed_mix_writes_one_access_line_per_request_and_nothing_per_probe(
    model_repository: Path, tmp_path: Path
) -> None:
    http_port, grpc_port = free_ports(2)
    predictor_ports = (http_port, grpc_port)
    transformer = start(
        "transformer",
        "transformer",
        [
            "--model_dir", str(model_repository),
            "--model_name", MODEL_NAME,
            "--predictor_host", f"127.0.0.1:{predictor_ports[1]}",
            "--max_request_bytes", str(TEST_MAX_REQUEST_BYTES),
            "--drain_seconds", "0",
        ],
        tmp_path,
    )  # fmt: skip
    predictor: ServerProcess | None = None
    try:
        # Up but not ready: its predictor is not there yet.
        wait_for(lambda: status(f"{transformer.url}{LIVE}") == 200)
        start_of_mix = transformer.log.stat().st_size
        for _ in range(PROBES):
            assert status(f"{transformer.url}{READY}") == 503
        predictor = start(
            "predictor",
            "predictor",
            ["--model_dir", str(model_repository), "--model_name", MODEL_NAME],
            tmp_path,
            ports=predictor_ports,
        )
        predictor.wait_ready()
        wait_for(lambda: status(f"{transformer.url}{READY}") == 200)
        predictor_start = predictor.log.stat().st_size
        image = b64(DATA / "coffee.jpg")
        with httpx.Client(timeout=60) as client:
            for _ in range(PREDICTIONS):
                response = client.post(
                    f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
                    json={"instances": [{"image": {"b64": image}}]},
                )
                assert response.status_code == 200
            for _ in range(BAD_INPUTS):
                response = client.post(
                    f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
                    json={"instances": [{"image": {"b64": "bm90IGFuIGltYWdl"}}]},
                )
                assert response.status_code == 400
            for path in (READY, LIVE, f"/v2/models/{MODEL_NAME}/ready", "/metrics") * PROBES:
                assert client.get(f"{transformer.url}{path}").status_code == 200
            for _ in range(SCRAPES):
                assert client.get(f"{predictor.url}/metrics").status_code == 200
        time.sleep(0.5)  # let the last lines reach the files
        written = lines_since(transformer.log, start_of_mix)
        by_predictor = lines_since(predictor.log, predictor_start)
    finally:
        transformer.stop()
        if predictor is not None:
            predictor.stop()

    text = "\n".join(written)
    assert "Traceback" not in text and " ERROR " not in text, text
    warnings = [line for line in written if " WARNING " in line]
    assert len(warnings) == 1 and "not ready: " in warnings[0], text  # once, not per probe
    assert sum("ready again" in line for line in written) == 1, text
    access = [line for line in written if re.search(r" access INFO .* POST /v1/models/", line)]
    assert len(access) == PREDICTIONS + BAD_INPUTS, text
    assert sum(" 400 " in line for line in access) == BAD_INPUTS
    assert all(re.search(r"request_id=[0-9a-f]{32} .* ms$", line) for line in access), access
    # Besides them only the state changes: not ready (the WARNING), the predictor found, ready
    # again. No line per probe, scrape or bad input beyond its access line.
    others = [line for line in written if line not in access]
    assert len(others) <= 3 and not any("/health/" in line for line in others), others
    model_infer = "gRPC /inference.GRPCInferenceService/ModelInfer OK"
    calls = [line for line in by_predictor if model_infer in line]
    assert len(calls) == PREDICTIONS and len(by_predictor) == PREDICTIONS, by_predictor
