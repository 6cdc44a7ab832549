"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping given targets
every second, with its own storage in a temporary directory. `.ci/run` installs the package."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from . import needs
from .servers import free_port, stop_process

READY_TIMEOUT_S = 30.0
SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class Target:
    """One scrape target: host:port and the labels Prometheus adds to its series (the labels a
    PodMonitor's relabelling would add from a pod's)."""

    address: str
    labels: Mapping[str, str]


@dataclass
class PrometheusProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query now; raises AssertionError on an error."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", body
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll until `promql` has a result; raises TimeoutError with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.query(promql)
            if found:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"no result for {promql} after {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> PrometheusProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.process)


def prometheus_binary() -> str:
    """The `prometheus` executable, or needs.missing() (a failure under CI)."""
    found = shutil.which("prometheus")
    if found is None:
        needs.missing("no prometheus: install Debian's prometheus package (.ci/run does)")
    return found


def start_prometheus(jobs: Mapping[str, Sequence[Target]], directory: Path) -> PrometheusProcess:
    """Start Prometheus scraping each job's targets every second; returns once it is ready."""
    binary = prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "900ms",
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [t.address], "labels": dict(t.labels)} for t in targets
                ],
            }
            for job, targets in jobs.items()
        ],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusProcess(process, port, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.tail()}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"prometheus not ready after {READY_TIMEOUT_S:.0f}s:\n{server.tail()}")
