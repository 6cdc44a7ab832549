"""Server subprocesses for tests and the benchmark: start on free loopback ports, wait, stop.

Each server is `python -m <module>` in a process of its own, as in the cluster; a pipeline is
a predictor and a transformer in front of it. The tests and `bench/` both start their servers
here (bench observes them further with `bench/observe.py`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far, or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different loopback ports nobody listens on right now. Each is held while the
    next is picked: one at a time, the kernel may hand the same port out twice (seen in CI: a
    server's HTTP and gRPC ports were equal, and it could not bind the second)."""
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL if it does not exit in STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class ServerProcess:
    """One running server: its process, ports and log file."""

    name: str
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        """Base HTTP URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll /v2/health/ready until 200; raises RuntimeError if the process exits and
        TimeoutError when `timeout_s` passes, both with the log's tail."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with code {self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far, or None where /proc is unavailable."""
        return process_cpu_seconds(self.process.pid)

    @property
    def metrics_url(self) -> str:
        """Where the server's Prometheus metrics are served."""
        return f"{self.url}/metrics"

    def metrics(self) -> str:
        """The Prometheus exposition text of `metrics_url` ('' when it cannot be read)."""
        try:
            response = httpx.get(self.metrics_url, timeout=5.0)
        except httpx.TransportError:
            return ""
        return response.text if response.status_code == 200 else ""

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL if it does not exit in time."""
        stop_process(self.process)


def start(
    name: str,
    module: str,
    args: list[str],
    log_dir: Path,
    launcher: Sequence[str] = (),
    ports: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start `python [launcher] -m module` on free ports (or `ports`: HTTP, gRPC) without
    latency logging; does not wait. `launcher` is a script that runs the module
    (tests/without_torch.py, say); `env` replaces this process's environment."""
    http_port, grpc_port = ports or free_ports(2)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    command = [
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
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    return ServerProcess(name, process, http_port, grpc_port, log)


@dataclass(frozen=True)
class PipelineSpec:
    """How to start one pipeline: the two modules and their extra flags."""

    name: str
    predictor_module: str
    transformer_module: str
    predictor_args: tuple[str, ...] = ()
    transformer_args: tuple[str, ...] = ()


@dataclass
class Pipeline:
    """A running predictor and the transformer in front of it."""

    predictor: ServerProcess
    transformer: ServerProcess


@contextmanager
def running(
    spec: PipelineSpec, model_dir: Path, model_name: str, log_dir: Path
) -> Iterator[Pipeline]:
    """Start the predictor, wait for it, start the transformer against it, wait; stop both on
    exit (transformer first). Raises RuntimeError/TimeoutError when either fails to start."""
    common = ["--model_dir", str(model_dir), "--model_name", model_name]
    predictor = start(
        f"{spec.name}-predictor", spec.predictor_module, [*common, *spec.predictor_args], log_dir
    )
    transformer: ServerProcess | None = None
    try:
        predictor.wait_ready()
        transformer = start(
            f"{spec.name}-transformer",
            spec.transformer_module,
            [
                *common,
                "--predictor_host",
                predictor.grpc_target,
                *spec.transformer_args,
            ],
            log_dir,
        )
        transformer.wait_ready()
        yield Pipeline(predictor, transformer)
    finally:
        if transformer is not None:
            transformer.stop()
        predictor.stop()
