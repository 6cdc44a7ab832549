"""Prometheus' HTTP API: instant queries whose answer is one number (or nothing)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from rollout.errors import ExitCode, RolloutError

PROMETHEUS_ENV = "PROMETHEUS_URL"
TOKEN_ENV = "PROMETHEUS_TOKEN"  # sent as a bearer token
TIMEOUT_S = 30.0
# A Prometheus restarting, or a proxy hiccup, must not roll back a healthy canary: a query that
# gets no answer or a 5xx is tried again after these pauses.
RETRY_PAUSES_S = (1.0, 2.0, 4.0)


class PrometheusError(RolloutError):
    """Prometheus did not answer (after retries) or answered something that is no query result."""

    exit_code = ExitCode.UNREACHABLE


class PrometheusUnavailable(PrometheusError):
    """No answer, or a server error: worth trying again."""


class PrometheusRefused(PrometheusError):
    """Prometheus refused a query: bad PromQL (a --match that does not parse), or credentials."""

    exit_code = ExitCode.REJECTED


class Prometheus:
    """A Prometheus server's `/api/v1/query` (Prometheus, Thanos and Mimir serve the same)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT_S, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def value(self, query: str, at: float) -> float | None:
        """The query's one value at Unix time `at`: None when it has no sample (no series, or
        NaN: a ratio or quantile of nothing).

        Raises PrometheusUnavailable when Prometheus cannot be reached or answers 5xx (each
        tried again after RETRY_PAUSES_S), PrometheusRefused for a 4xx, and PrometheusError
        for an answer that is not one number (every query here aggregates to one series).
        """
        for pause in (*RETRY_PAUSES_S, None):
            try:
                return self._value(query, at)
            except PrometheusUnavailable:
                if pause is None:
                    raise
                self._sleep(pause)
        raise AssertionError("unreachable")

    def _value(self, query: str, at: float) -> float | None:
        try:
            response = self._http.get("/api/v1/query", params={"query": query, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(
                f"Prometheus {self.url} unreachable ({exc.__class__.__name__}: {exc}); "
                f"check --prometheus (or ${PROMETHEUS_ENV})"
            ) from None
        body = _json(response)
        if response.status_code != 200 or body.get("status") != "success":
            failure = (
                PrometheusRefused if 400 <= response.status_code < 500 else PrometheusUnavailable
            )
            raise failure(
                f"Prometheus {self.url} refused {query!r}: HTTP {response.status_code}: "
                f"{body.get('errorType', '')} {body.get('error', response.text[:200])}".rstrip()
            )
        try:
            return _single(body["data"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError(
                f"Prometheus {self.url}: {query!r}: expected one number, got "
                f"{json.dumps(body.get('data'))[:300]} ({exc})"
            ) from None


def _single(data: dict[str, Any]) -> float | None:
    """The one value of a query result; raises ValueError for more than one series (and
    KeyError, IndexError, TypeError for a malformed result)."""
    result = data["result"]
    if data["resultType"] == "scalar":
        return _number(result[1])
    if not result:
        return None
    if len(result) > 1:
        raise ValueError(f"{len(result)} series, expected one")
    return _number(result[0]["value"][1])


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
