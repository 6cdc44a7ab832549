"""`make serve` (scripts/serve.py) supervises like a kubelet, and a REST request past its
deadline is a 504: the real script, its real child processes, loopback ports.

One run of the script: the predictor is SIGKILLed and must come back by itself while the
transformer process keeps running (503 and not ready meanwhile); Ctrl-C stops both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import held_forward
import httpx
import numpy as np
import pytest
from conftest import DATA, MODEL_NAME, ROOT, engine_repository

from harness.servers import free_ports
from harness.v1 import JSON_HEADERS, v1_body

STARTUP_S = 180.0  # model load and warm-up, both components, on a slow shared machine
# The predictor's --request_timeout_seconds here: short, so the test waits little for its 504,
# and far above a single image's forward pass (a few ms; under a second on a starved machine).
# The 504 comes from a forward pass the test holds (tests/held_forward), not from a slow CPU.
PREDICTOR_TIMEOUT_S = 3.0


@dataclass
class Served:
    """The running script, its log and ports."""

    process: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]
    gate: Path  # while it exists, the predictor's forward passes wait (held_forward)

    def url(self, component: str) -> str:
        """The component's REST base URL."""
        return f"http://127.0.0.1:{self.ports[component + '_http']}"

    def children(self) -> dict[str, int]:
        """{component: pid} of the script's child servers, from /proc."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent != self.process.pid:
                continue
            for component in ("predictor", "transformer"):
                if component.encode() in argv:
                    found[component] = int(entry.name)
        return found


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `check` until true; returns when (time.monotonic()); raises TimeoutError saying
    `what` (phrased as the failure: "X did not ...")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


def status(url: str) -> int | None:
    """GET `url`'s status, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """scripts/serve.py on free ports with the ONNX repository (what `make serve` runs)."""
    repository = engine_repository("onnx", tmp_path_factory)
    names = ("transformer_http", "transformer_grpc", "predictor_http", "predictor_grpc")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    gate = log.with_name("forward.gate")
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model_dir", str(repository)]
    command += ["--model_name", MODEL_NAME, "--timeout", str(STARTUP_S)]
    for name, port in ports.items():
        command += [f"--{name}_port", str(port)]
    command += ["--request_timeout_seconds", str(PREDICTOR_TIMEOUT_S)]  # to the predictor
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=held_forward.env(gate)
        )
    running = Served(process, log, ports, gate)
    try:
        wait_until(
            lambda: "Ready:" in log.read_text() or process.poll() is not None,
            STARTUP_S + 30,
            "serve.py did not print Ready",
        )
        assert process.poll() is None, log.read_text()[-3000:]
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_rest_request_past_its_deadline_is_a_504_and_the_server_serves_on(
    served: Served,
) -> None:
    pixels = np.zeros((1, 224, 224, 3), np.uint8)
    tensor = {
        "name": "pixels__0",
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "parameters": {"binary_data_size": pixels.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    with held_forward.holding(served.gate):  # the forward pass waits past the deadline
        started = time.monotonic()
        late = httpx.post(
            f"{served.url('predictor')}/v2/models/{MODEL_NAME}/infer",
            content=header + pixels.tobytes(),
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
            timeout=60,
        )
        answered_s = time.monotonic() - started
        assert held_forward.held_marker(served.gate).exists()  # it was held, not slow
    assert late.status_code == 504, late.text
    assert "--request_timeout_seconds" in late.json()["error"], late.text
    # At its deadline, while the pass was still held: not when the pass ended.
    assert PREDICTOR_TIMEOUT_S <= answered_s < PREDICTOR_TIMEOUT_S + 2.0, answered_s

    good = httpx.post(
        f"{served.url('transformer')}/v1/models/{MODEL_NAME}:predict",
        content=v1_body((DATA / "coffee.jpg").read_bytes()),
        headers=JSON_HEADERS,
        timeout=60,
    )
    assert good.status_code == 200, good.text  # the predictor serves on after the 504


def test_serve_restarts_a_killed_predictor_keeps_the_transformer_and_ctrl_c_stops_both(
    served: Served,
) -> None:
    children = served.children()
    assert set(children) == {"predictor", "transformer"}, children
    ready = f"{served.url('transformer')}/v2/health/ready"
    assert status(ready) == 200
    os.kill(children["predictor"], signal.SIGKILL)
    wait_until(lambda: status(ready) == 503, 10, "the transformer did not turn not ready")
    wait_until(
        lambda: "predictor exited unexpectedly" in served.log.read_text(),
        10,
        "serve.py did not say the predictor exited",
    )
    wait_until(lambda: status(ready) == 200, STARTUP_S, "the transformer was not ready again")
    again = served.children()
    assert again["transformer"] == children["transformer"]  # never restarted
    assert again["predictor"] != children["predictor"]
    assert "restarting predictor (restart 1)" in served.log.read_text()

    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=30) == 0
    children_gone = [Path(f"/proc/{pid}") for pid in again.values()]
    wait_until(
        lambda: not any(path.exists() for path in children_gone),
        10,
        f"the servers {sorted(again.values())} did not exit after Ctrl-C",
    )
