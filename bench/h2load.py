"""h2load (Debian's `nghttp2-client`) as a gRPC load generator that is not itself the limit.

h2load replays one request body over HTTP/2 from C, so it answers the question "how many
requests/s does the server take" where a Python client would run out of CPU first. A gRPC call
is a POST to `/<service>/<method>` with `content-type: application/grpc` and the message in a
5-byte length-prefixed frame: `grpc_frame` builds that body once.

h2load cannot read gRPC trailers, so a call that fails with a gRPC status still counts as an
HTTP/2 success. The run is therefore checked on the bytes received in the window: every good
answer carries at least the expected response frame, a gRPC error only headers
(`H2loadResult.short_answers`; h2load's own "data" count also holds the warm-up's, so the
window's total is used).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
INSTALL_HINT = "install Debian's nghttp2-client (apt-get install -y nghttp2-client)"


def grpc_frame(message: bytes) -> bytes:
    """The gRPC wire frame of one serialised message: uncompressed flag, big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def find_h2load() -> str:
    """The h2load executable; raises FileNotFoundError saying how to install it."""
    found = shutil.which("h2load")
    if found is None:
        raise FileNotFoundError(f"h2load is not on PATH: {INSTALL_HINT}")
    return found


def split_in_flight(in_flight: int, max_connections: int) -> tuple[int, int]:
    """(connections, streams per connection) holding `in_flight` calls at once.

    Up to `max_connections` connections (like that many transformers on one predictor), each
    with the same number of concurrent streams; raises ValueError when it cannot divide evenly.
    """
    if in_flight <= 0 or max_connections <= 0:
        raise ValueError(f"in flight {in_flight} and connections {max_connections} must be > 0")
    connections = min(in_flight, max_connections)
    if in_flight % connections:
        raise ValueError(
            f"{in_flight} calls in flight do not split evenly over {connections} connections"
        )
    return connections, in_flight // connections


def command(
    h2load: str,
    target: str,
    body: Path,
    in_flight: int,
    max_connections: int,
    duration_s: float,
    warmup_s: float,
    path: str = MODEL_INFER_PATH,
) -> list[str]:
    """The h2load command line for a timed run of gRPC calls to http://`target``path`."""
    connections, streams = split_in_flight(in_flight, max_connections)
    headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
    return [
        h2load,
        "--clients",
        str(connections),
        "--max-concurrent-streams",
        str(streams),
        "--threads",
        "1",
        "--duration",
        f"{max(1, round(duration_s * 1000))}ms",
        "--warm-up-time",
        f"{max(1, round(warmup_s * 1000))}ms",
        "--data",
        str(body),
        *headers,
        f"http://{target}{path}",
    ]


@dataclass(frozen=True)
class H2loadResult:
    """What one h2load run reports about its measurement window."""

    seconds: float
    requests_per_s: float
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    total_bytes: int  # frames received in the window: headers, data, trailers

    def short_answers(self, expected_frame_bytes: int) -> int:
        """How many answers, at least, lacked the expected response (gRPC errors carry none)."""
        if self.succeeded == 0:
            return 0
        good = min(self.total_bytes // max(expected_frame_bytes, 1), self.succeeded)
        return self.succeeded - good


_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s|us), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_TRAFFIC = re.compile(r"traffic: [\d.]+\w*B \((\d+)\) total")
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_output(text: str) -> H2loadResult:
    """Parse h2load's summary; raises ValueError quoting the text when a line is missing."""
    finished = _FINISHED.search(text)
    requests = _REQUESTS.search(text)
    traffic = _TRAFFIC.search(text)
    if finished is None or requests is None or traffic is None:
        raise ValueError(f"h2load printed no summary I can read:\n{text[-2000:]}")
    _, _, done, succeeded, failed, errored, timeout = (int(v) for v in requests.groups())
    return H2loadResult(
        seconds=float(finished.group(1)) * _SECONDS[finished.group(2)],
        requests_per_s=float(finished.group(3)),
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        total_bytes=int(traffic.group(1)),
    )


def run(argv: list[str], timeout_s: float) -> H2loadResult:
    """Run an h2load command line and parse it; raises RuntimeError when h2load fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"h2load ran past {timeout_s:.0f}s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_output(done.stdout)
