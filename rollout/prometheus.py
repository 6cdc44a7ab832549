"""Prometheus' HTTP API: instant queries whose answer is one number (or nothing)."""

from __future__ import annotations

import math
from typing import Any

import httpx

from rollout.errors import ExitCode, RolloutError

PROMETHEUS_ENV = "PROMETHEUS_URL"
TIMEOUT_S = 30.0


class PrometheusError(RolloutError):
    """Prometheus did not answer, or refused a query."""

    exit_code = ExitCode.UNREACHABLE


class Prometheus:
    """A Prometheus server's `/api/v1/query` (Prometheus, Thanos and Mimir serve the same)."""

    def __init__(
        self, url: str, token: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT_S, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def value(self, query: str, at: float) -> float | None:
        """The query's one value at Unix time `at`: None when it has no sample (no series, or
        NaN: a ratio or quantile of nothing). Raises PrometheusError when Prometheus cannot be
        reached or refuses the query, or when the query answers more than one series (every
        query here aggregates to one)."""
        try:
            response = self._http.get("/api/v1/query", params={"query": query, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise PrometheusError(
                f"Prometheus {self.url} unreachable ({exc.__class__.__name__}: {exc}); "
                f"check --prometheus (or ${PROMETHEUS_ENV})"
            ) from None
        body = _json(response)
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"Prometheus {self.url} refused {query!r}: HTTP {response.status_code}: "
                f"{body.get('errorType', '')} {body.get('error', response.text[:200])}".rstrip()
            )
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and isinstance(result, list):
            return _number(result[1])
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(
                f"Prometheus {self.url}: {query!r} answered {len(result)} series, expected one"
            )
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
