"""Overload from another process: many closed-loop HTTP/1.1 clients, every answer timed.

    python -m harness.overload --url http://127.0.0.1:8080/v1/models/m:predict \
        --body request.json --clients 256 --seconds 10 [--out result.json]

Each client opens its connection first; then all send at once, and each sends the same POST
again as soon as it has its answer;
after a 503 it waits what Retry-After says (as a client is told to; plus random jitter, as
clients should), and opens a new
connection when the server closed the old one. Load stops after `--seconds`; requests still
out then get `--grace_seconds` to finish and are counted as "unfinished" after that. The
summary (statuses, latency percentiles of the accepted and of the refused) goes to stdout as
JSON, or to `--out`.

It speaks raw HTTP/1.1 over asyncio streams, not through a client library: 256 clients then
cost the load process a few percent of one CPU, so on a 2-CPU machine the figures are the
servers', not the load generator's. It runs in a process of its own so that its event loop
never delays the servers' (tests/test_overload.py, bench/overload.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

CONNECT_TIMEOUT_S = 10.0
# A refused client waits Retry-After and up to this much more of it at random, as client
# guidelines for retries ask (AWS's "exponential backoff and jitter", Google's API retry
# advice): clients refused together must not all come back in the same millisecond.
RETRY_JITTER = 0.5
DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class Answer:
    """One request: its status (or the error's name) and seconds from send to answer."""

    status: int | str
    latency_s: float
    retry_after_s: float | None


class Connection:
    """One kept-alive HTTP/1.1 connection that sends a prepared request and reads the answer."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection (raises OSError or TimeoutError when it cannot be opened)."""
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S
        )

    async def send(self) -> Answer:
        """Send the request once; reconnects first (timed as part of it) when the last answer
        closed the connection."""
        started = time.monotonic()
        try:
            if self.writer is None:
                await self.connect()
            assert self.reader is not None and self.writer is not None
            self.writer.write(self.request)
            await self.writer.drain()
            status, headers = await _head(self.reader)
            length = int(headers.get("content-length", "0"))
            await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            self.close()
            return Answer(type(exc).__name__, time.monotonic() - started, None)
        latency = time.monotonic() - started
        if headers.get("connection", "").lower() == "close":
            self.close()
        retry = headers.get("retry-after")
        return Answer(status, latency, float(retry) if retry and retry.isdigit() else None)

    def close(self) -> None:
        """Drop the connection (the next send opens a new one)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers (lower-case names) of one HTTP/1.1 response."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def request_bytes(url: str, body: bytes, content_type: str) -> tuple[str, int, bytes]:
    """The host, port and bytes of a POST of `body` to `url`."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected http://HOST:PORT/PATH, got {url!r}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {parts.hostname}:{parts.port}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return parts.hostname, parts.port, head.encode("latin-1") + body


async def run(
    url: str, body: bytes, clients: int, seconds: float, grace_s: float, content_type: str
) -> list[Answer]:
    """Every answer of `clients` closed-loop clients sending for `seconds`."""
    host, port, request = request_bytes(url, body, content_type)
    answers: list[Answer] = []
    # Every client connects first, then all start at once: a burst of `clients` requests, as
    # clients with connection pools send it, and not the load process's own work of opening
    # hundreds of connections timed as the servers' latency.
    connections = [Connection(host, port, request) for _ in range(clients)]
    await asyncio.gather(*(c.connect() for c in connections))
    stop_at = time.monotonic() + seconds

    async def client(connection: Connection) -> None:
        try:
            while time.monotonic() < stop_at:
                answer = await connection.send()
                answers.append(answer)
                if answer.status == 503 and answer.retry_after_s:
                    pause = answer.retry_after_s * (1 + RETRY_JITTER * random.random())
                    await asyncio.sleep(min(pause, max(0.0, stop_at - time.monotonic())))
        finally:
            connection.close()

    tasks = [asyncio.create_task(client(c)) for c in connections]
    done, pending = await asyncio.wait(tasks, timeout=seconds + grace_s)
    for task in pending:
        task.cancel()
    answers.extend(Answer("unfinished", seconds + grace_s, None) for _ in pending)
    for task in done:
        task.result()  # a bug in the client shows, not a quiet shortfall
    return answers


def summarize(answers: list[Answer], seconds: float, clients: int) -> dict[str, Any]:
    """Counts by status, and latency percentiles (ms) of the accepted (200) and the refused
    (503, 429)."""
    statuses: dict[str, int] = {}
    for answer in answers:
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
    accepted = [a.latency_s for a in answers if a.status == 200]
    refused = [a.latency_s for a in answers if a.status in (503, 429)]

    def ms(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 1) if values else None

    return {
        "clients": clients,
        "seconds": seconds,
        "statuses": statuses,
        "accepted_per_s": round(len(accepted) / seconds, 1),
        "accepted_p50_ms": ms(accepted, 50),
        "accepted_p99_ms": ms(accepted, 99),
        "accepted_max_ms": ms(accepted, 100),
        "refused_p50_ms": ms(refused, 50),
        "refused_p99_ms": ms(refused, 99),
        "refused_max_ms": ms(refused, 100),
    }


def in_another_process(
    url: str,
    body: bytes,
    work_dir: Path,
    clients: int,
    seconds: float,
    grace_s: float = DEFAULT_GRACE_S,
) -> dict[str, Any]:
    """Run this module as its own process against `url` (so that its event loop and the
    caller's never delay each other); its summary. Raises CalledProcessError when it fails,
    TimeoutExpired when it outlives its bound."""
    work_dir.mkdir(parents=True, exist_ok=True)
    body_file, out = work_dir / "request.body", work_dir / "summary.json"
    body_file.write_bytes(body)
    command = [sys.executable, "-m", "harness.overload", "--url", url, "--body", str(body_file)]
    command += ["--clients", str(clients), "--seconds", str(seconds)]
    command += ["--grace_seconds", str(grace_s), "--out", str(out)]
    root = Path(__file__).resolve().parent.parent
    subprocess.run(command, cwd=root, check=True, timeout=seconds + grace_s + 60)
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the load and print (or write) its summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True, help="File holding the request body.")
    parser.add_argument("--content_type", default="application/json")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--grace_seconds", type=float, default=DEFAULT_GRACE_S)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    answers = asyncio.run(
        run(
            args.url,
            args.body.read_bytes(),
            args.clients,
            args.seconds,
            args.grace_seconds,
            args.content_type,
        )
    )
    summary = json.dumps(summarize(answers, args.seconds, args.clients))
    if args.out is not None:
        args.out.write_text(summary)
    else:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
