"""The access log, and what is not logged: one line per request, none for health probes and
metrics scrapes, and one WARNING when the server's readiness changes instead of one per refusal.

`common.tracing`'s edge calls `access` for each request and `probe_answered` for each probe;
`common.logs` consults `readiness` before it lets a "not ready" record through. Log lines get
their request id from `common.logs.RequestIdFilter`.
"""

from __future__ import annotations

import logging
import re
import threading

ACCESS_LOGGER = "access"
_access = logging.getLogger(ACCESS_LOGGER)
_logger = logging.getLogger(__name__)
# Readiness as Kubernetes and KServe ask for it: the server's, a model's (V2), a model's (V1).
_READINESS_PATHS = r"/v2/health/ready|/v2/models/[^/]+(/versions/[^/]+)?/ready|/v1/models/[^/:]+"
_READINESS = re.compile(_READINESS_PATHS)
# Every probe and scrape: every few seconds, forever, and never news.
_PROBES = re.compile(rf"/|/metrics|/v2/health/live|{_READINESS_PATHS}")


def is_probe(method: str, path: str) -> bool:
    """Whether an HTTP request is a health probe or a metrics scrape (GET or HEAD)."""
    return method in ("GET", "HEAD") and _PROBES.fullmatch(path) is not None


def access(method: str, path: str, status: int | str, seconds: float) -> None:
    """The access line of one request: method (gRPC for a call), path, status, milliseconds."""
    _access.info("%s %s %s %.1f ms", method, path, status, seconds * 1000)


class Readiness:
    """Whether the server last answered "not ready", and why: refusals are logged once per
    change of reason, and readiness coming back is logged once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None

    def refused(self, reason: str) -> bool:
        """Record a "not ready" answer; True when it is news (the first, or a new reason)."""
        with self._lock:
            news = reason != self._reason
            self._reason = reason
            return news

    def answered_ready(self) -> None:
        """A readiness probe answered 200: log once that the server is ready again."""
        with self._lock:
            was, self._reason = self._reason, None
        if was is not None:
            _logger.info("ready again (was: %s)", was)


readiness = Readiness()


def probe_answered(path: str, status: int | str) -> None:
    """Note a probe's answer: a readiness 200 ends a not-ready spell."""
    if status == 200 and _READINESS.fullmatch(path):
        readiness.answered_ready()
