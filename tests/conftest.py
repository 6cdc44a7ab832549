"""Shared fixtures: the real model repository and real servers on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODEL_NAME = "image-classifier"
# Small enough that the 413 test stays cheap, large enough for every good request here.
TEST_MAX_REQUEST_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository: the one `make model-repo` built, else exported now."""
    configured = Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    if not configured.is_absolute():
        configured = ROOT / configured
    if (configured / MODEL_NAME / "1" / "model.pt").is_file():
        return configured
    from predictor.export import export

    target = tmp_path_factory.mktemp("model_repository")
    export(target, MODEL_NAME)
    return target


def free_port() -> int:
    """A port nobody listens on right now (bind to port 0 and let the kernel choose)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A component running as its own process, as it runs in the cluster."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}): {self.tail()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s: {self.tail()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(module: str, args: list[str], log: Path, without_torch: bool = False) -> Server:
    """Start `python -m <module>` with free ports; returns once it is ready.

    `without_torch` runs it with torch unimportable, as in the transformer's image.
    """
    http_port, grpc_port = free_port(), free_port()
    launcher = [str(Path(__file__).with_name("without_torch.py"))] if without_torch else []
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                *launcher,
                "-m",
                module,
                "--http_port",
                str(http_port),
                "--grpc_port",
                str(grpc_port),
                "--enable_latency_logging",
                "false",
                *args,
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, http_port, grpc_port, log)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def predictor(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real predictor serving the default model."""
    log = tmp_path_factory.mktemp("logs") / "predictor.log"
    server = start_server(
        "predictor",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--max_request_bytes",
            str(TEST_MAX_REQUEST_BYTES),
        ],
        log,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def transformer(
    predictor: Server, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real transformer, forwarding to the real predictor over gRPC."""
    log = tmp_path_factory.mktemp("logs") / "transformer.log"
    server = start_server(
        "transformer",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            predictor.grpc_url,
            "--max_request_bytes",
            str(TEST_MAX_REQUEST_BYTES),
        ],
        log,
        without_torch=True,  # so every transformer test also proves it needs no torch
    )
    yield server
    server.stop()
