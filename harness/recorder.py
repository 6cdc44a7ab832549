"""Closed-loop HTTP load that records every request's outcome: the soak run's load
(`bench/soak.py`) and the fault tests' (tests/test_reliability.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .v1 import JSON_HEADERS


@dataclass(frozen=True)
class Outcome:
    """One request: when it started and ended (time.monotonic()), and how (HTTP status, or
    the client error's name, e.g. 'ReadTimeout')."""

    started: float
    ended: float
    status: int | str

    @property
    def latency_s(self) -> float:
        """Seconds from send to answer."""
        return self.ended - self.started


@dataclass
class Recorder:
    """Closed-loop load: `concurrency` workers POST `body` to `url` one after another."""

    url: str
    body: bytes
    concurrency: int
    timeout_s: float = 30.0
    pause_on_503_s: float = 0.0  # how long a worker waits after a 503 (as Retry-After asks)
    outcomes: list[Outcome] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))

    async def run(self, until: Callable[[], bool]) -> None:
        """Send until `until()` is true; each worker finishes the request it has in flight."""
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            await asyncio.gather(*(self._worker(client, until) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, until: Callable[[], bool]) -> None:
        while not until():
            started = time.monotonic()
            status: int | str
            try:
                response = await client.post(self.url, content=self.body, headers=self.headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.outcomes.append(Outcome(started, time.monotonic(), status))
            if status == 503 and self.pause_on_503_s:
                await asyncio.sleep(self.pause_on_503_s)

    def between(self, start: float, end: float) -> list[Outcome]:
        """The outcomes of requests that ended within [start, end)."""
        return [o for o in self.outcomes if start <= o.ended < end]
