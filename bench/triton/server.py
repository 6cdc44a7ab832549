"""tritonserver on loopback: start it on free ports, wait until it is ready, stop it.

Triton answers the same /v2/health/ready as our servers, so `harness.servers.ServerProcess`
waits for it and stops it (SIGTERM, then SIGKILL); this module adds what differs: the command
line, the environment the python backend needs (`install.py`), the metrics port and what it
counts there, and the python-backend stub processes: Triton's children, in a process group of
their own, whose CPU time counts as Triton's (they run the model) and which are ended with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.servers import READY_TIMEOUT_S, ServerProcess, free_port

from .install import TritonInstall

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Shorter than ServerProcess.stop's wait, so a clean exit (models unloaded) comes first.
EXIT_TIMEOUT_S = 10


@dataclass
class TritonProcess(ServerProcess):
    """A running tritonserver: ServerProcess with Triton's separate metrics port."""

    metrics_port: int = 0

    @property
    def metrics_url(self) -> str:
        """Triton serves its Prometheus metrics on a port of their own."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far of tritonserver and its python-backend stubs (which
        run the model), or None where /proc cannot tell."""
        return group_cpu_seconds(self.process.pid)

    def server_version(self) -> str | None:
        """The version Triton's server metadata (GET /v2) reports, None when unanswered."""
        try:
            response = httpx.get(f"{self.url}/v2", timeout=5.0)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        version = response.json().get("version")
        return None if version is None else str(version)

    def stop(self) -> None:
        """Stop tritonserver (ServerProcess.stop), then end any stub left in its group."""
        try:
            super().stop()
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group is gone: Triton ended its stubs itself


def counter_total(text: str, name: str) -> float:
    """The sum of a Prometheus counter over its label sets in `text` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


def rows_per_execution(before: str, after: str) -> float | None:
    """Mean rows per model execution between two scrapes of Triton's metrics (its
    nv_inference_count over nv_inference_exec_count), None when nothing ran."""
    rows, executions = (
        counter_total(after, name) - counter_total(before, name)
        for name in ("nv_inference_count", "nv_inference_exec_count")
    )
    return rows / executions if executions > 0 else None


def group_cpu_seconds(group: int) -> float | None:
    """User + system CPU time of the live processes in process group `group`, or None when
    /proc cannot tell (or the group is gone)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # After the command name: pgrp is field 5, utime 14 and stime 15 (1-based, proc(5)).
        if int(fields[2]) == group:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            found = True
    return total if found else None


def command(
    install: TritonInstall,
    repository: Path,
    backends: Path,
    ports: tuple[int, int, int],
    shm_prefix: str,
) -> list[str]:
    """tritonserver's command line: `repository`, loopback only, ports (HTTP, gRPC, metrics)."""
    http_port, grpc_port, metrics_port = ports
    return [
        str(install.binary),
        "--model-repository",
        str(repository),
        "--backend-directory",
        str(backends),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--allow-gpu-metrics",
        "false",
        # CPU only: no CUDA pinned host memory to allocate.
        "--pinned-memory-pool-byte-size",
        "0",
        "--exit-timeout-secs",
        str(EXIT_TIMEOUT_S),
        # Each server's shared-memory regions under a name of its own: two Triton servers on
        # one machine (a test and a benchmark) must not open each other's.
        "--backend-config",
        f"python,shm-region-prefix-name={shm_prefix}",
    ]


def start_triton(
    install: TritonInstall, repository: Path, work_dir: Path, name: str = "triton"
) -> TritonProcess:
    """Start tritonserver on `repository` on free loopback ports, its backend directory and log
    under `work_dir`; does not wait (see `running_triton`)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    backends = install.backend_directory(work_dir)
    ports = (free_port(), free_port(), free_port())
    shm_prefix = f"triton_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    log = work_dir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command(install, repository, backends, ports, shm_prefix),
            cwd=work_dir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=install.environment(),
            start_new_session=True,  # its own process group: the stubs are stopped with it
        )
    return TritonProcess(name, process, ports[0], ports[1], log, metrics_port=ports[2])


@contextmanager
def running_triton(
    install: TritonInstall,
    repository: Path,
    work_dir: Path,
    name: str = "triton",
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[TritonProcess]:
    """Start tritonserver, wait until /v2/health/ready answers 200, stop it on exit. Raises
    RuntimeError (it exited) or TimeoutError (not ready in `timeout_s`), with its log's tail."""
    server = start_triton(install, repository, work_dir, name)
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()
