"""Canary analysis: the canary's measurements against the stable version's, and a verdict.

Canary and stable are told apart by the `model_version` label: the predictor labels its request
series with the version directory it serves (`predictor_requests_total`,
`predictor_request_duration_seconds`), and the transformer labels each labelled prediction with
the version that answered it (`transformer_labelled_predictions_total`: during a canary one
transformer serves answers of both versions). Three checks, each
against a threshold and a minimum sample count:

- error ratio: answers that are server errors (HTTP 5xx; gRPC INTERNAL, UNKNOWN, UNAVAILABLE,
  DATA_LOSS, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) among the predictor's inference requests;
  fails when the canary's exceeds the stable's by more than `max_error_increase` and the
  difference is significant (a one-sided two-proportion z-test at 95%: 2 errors in 100
  requests are not yet evidence);
- p99 latency of the predictor's inference requests; fails when the canary's is more than
  `max_latency_ratio` times the stable's *and* more than `latency_slack_s` above it (a quantile
  is interpolated inside a histogram bucket, common.metrics.LATENCY_BUCKETS: smaller
  differences are not measured);
- top-1 accuracy of labelled predictions (issue 22's labels), over the whole analysis: labels
  come late and sparse; fails when the canary's is more than `max_accuracy_drop` below the
  stable's and the difference is significant (the same test). Skipped, not waited for, while
  either side has fewer than `min_labels` labels.

Error ratio and latency need `min_requests` requests on each side in the step's window: with
fewer the step waits for more traffic. Nothing here sleeps or talks to the cluster: `measure`
asks Prometheus, `judge` decides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from common.stats import Z_95_ONE_SIDED, two_proportion_z, wilson
from rollout.prometheus import Prometheus

VERSION_LABEL = "model_version"
REQUESTS = "predictor_requests_total"
DURATION_BUCKETS = "predictor_request_duration_seconds_bucket"
LABELLED = "transformer_labelled_predictions_total"
SERVER_ERRORS = "5..|INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED"
QUANTILE = 0.99


@dataclass(frozen=True)
class Thresholds:
    """What a canary must stay within, and the samples a check needs before it counts."""

    max_error_increase: float = 0.01  # error ratio, canary minus stable (1 percentage point)
    max_latency_ratio: float = 1.5  # canary p99 / stable p99
    latency_slack_s: float = 0.025  # p99 differences below this never fail
    max_accuracy_drop: float = 0.02  # top-1 accuracy, stable minus canary (2 points)
    min_requests: int = 100  # per side, per step window
    min_labels: int = 100  # per side, over the analysis

    def __post_init__(self) -> None:
        """Raises ValueError naming the field, what it got and what it takes (NaN never)."""
        ranges = {
            "max_error_increase": (0.0, 1.0),
            "max_accuracy_drop": (0.0, 1.0),
            "max_latency_ratio": (1.0, math.inf),
            "latency_slack_s": (0.0, math.inf),
            "min_requests": (1, math.inf),
            "min_labels": (1, math.inf),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (low <= value <= high and math.isfinite(value)):  # False for NaN
                bound = f"between {low:g} and {high:g}" if high < math.inf else f">= {low:g}"
                raise ValueError(f"{name} must be a finite number {bound}, got {value}")


@dataclass(frozen=True)
class Measurement:
    """One version's numbers: requests and errors and p99 over the step's window, labelled
    predictions and their top-1 hits over the analysis so far."""

    version: str
    requests: float
    errors: float
    p99_s: float | None
    labelled: float
    top1: float

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    @property
    def accuracy(self) -> float:
        return self.top1 / self.labelled if self.labelled > 0 else 0.0


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # not enough traffic yet
    SKIP = "skip"  # not enough labels: the check does not count


@dataclass(frozen=True)
class Check:
    """One check's outcome and the numbers behind it (`detail` says them for people)."""

    name: str
    outcome: Outcome
    stable: float | None
    canary: float | None
    limit: str
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The checks of one evaluation and what they add up to."""

    stable: Measurement
    canary: Measurement
    checks: tuple[Check, ...]

    @property
    def outcome(self) -> Outcome:
        """FAIL when any check fails, else WAIT when any waits, else PASS."""
        outcomes = {c.outcome for c in self.checks}
        for decisive in (Outcome.FAIL, Outcome.WAIT):
            if decisive in outcomes:
                return decisive
        return Outcome.PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "stable": asdict(self.stable),
            "canary": asdict(self.canary),
            "checks": [{**asdict(c), "outcome": c.outcome.value} for c in self.checks],
        }


def selector(version: str, extra: str = "") -> str:
    """The label matchers of one version's series (`extra`: more matchers, e.g. a namespace)."""
    escaped = version.replace("\\", "\\\\").replace('"', '\\"')
    matchers = [f'{VERSION_LABEL}="{escaped}"'] + ([extra] if extra else [])
    return ",".join(matchers)


def queries(version: str, window_s: int, accuracy_window_s: int, extra: str = "") -> dict[str, str]:
    """The PromQL of each number of a Measurement (each aggregates to one value)."""
    sel = selector(version, extra)
    w, a = f"{window_s}s", f"{accuracy_window_s}s"
    return {
        "requests": f"sum(increase({REQUESTS}{{{sel}}}[{w}]))",
        "errors": f'sum(increase({REQUESTS}{{{sel},code=~"{SERVER_ERRORS}"}}[{w}]))',
        "p99_s": (
            f"histogram_quantile({QUANTILE}, sum by (le) (rate({DURATION_BUCKETS}{{{sel}}}[{w}])))"
        ),
        "labelled": f"sum(increase({LABELLED}{{{sel}}}[{a}]))",
        "top1": f'sum(increase({LABELLED}{{{sel},outcome="top1"}}[{a}]))',
    }


def measure(
    prometheus: Prometheus,
    version: str,
    at: float,
    window_s: int,
    accuracy_window_s: int,
    extra: str = "",
) -> Measurement:
    """Ask Prometheus for one version's Measurement at Unix time `at`; raises PrometheusError."""
    values = {
        key: prometheus.value(query, at)
        for key, query in queries(version, window_s, accuracy_window_s, extra).items()
    }

    def count(key: str) -> float:
        return values[key] or 0.0

    return Measurement(
        version=version,
        requests=count("requests"),
        errors=count("errors"),
        p99_s=values["p99_s"],
        labelled=count("labelled"),
        top1=count("top1"),
    )


def judge(stable: Measurement, canary: Measurement, t: Thresholds) -> Verdict:
    """The checks of `canary` against `stable` under the thresholds `t`."""
    return Verdict(
        stable,
        canary,
        (_errors(stable, canary, t), _latency(stable, canary, t), _accuracy(stable, canary, t)),
    )


def _too_few_requests(stable: Measurement, canary: Measurement, t: Thresholds) -> str:
    short = [m for m in (canary, stable) if m.requests < t.min_requests]
    return ", ".join(
        f"{'canary' if m is canary else 'stable'} {m.requests:.0f} requests" for m in short
    ) + (f" < {t.min_requests}" if short else "")


def _errors(stable: Measurement, canary: Measurement, t: Thresholds) -> Check:
    limit = f"canary <= stable + {_pct(t.max_error_increase)} (or not significant)"
    numbers = (
        f"canary {_pct(canary.error_ratio)} ({canary.errors:.1f}/{canary.requests:.1f}), "
        f"stable {_pct(stable.error_ratio)} ({stable.errors:.1f}/{stable.requests:.1f})"
    )
    short = _too_few_requests(stable, canary, t)
    z = two_proportion_z(canary.errors, canary.requests, stable.errors, stable.requests)
    if short:
        outcome, why = Outcome.WAIT, f"not enough traffic: {short}"
    elif canary.error_ratio > stable.error_ratio + t.max_error_increase and z > Z_95_ONE_SIDED:
        excess = canary.error_ratio - stable.error_ratio
        outcome, why = Outcome.FAIL, f"canary {_pct(excess)} above stable (z={z:.1f})"
    else:
        outcome, why = Outcome.PASS, f"within {limit}"
    return Check(
        "error ratio", outcome, stable.error_ratio, canary.error_ratio, limit, f"{numbers}: {why}"
    )


def _latency(stable: Measurement, canary: Measurement, t: Thresholds) -> Check:
    limit = f"canary <= {t.max_latency_ratio:g}x stable or within {_ms(t.latency_slack_s)} of it"
    numbers = f"canary {_ms(canary.p99_s)}, stable {_ms(stable.p99_s)}"
    short = _too_few_requests(stable, canary, t)
    if short or canary.p99_s is None or stable.p99_s is None:
        outcome, why = Outcome.WAIT, f"not enough traffic: {short or 'no latency samples'}"
    elif (
        canary.p99_s > stable.p99_s * t.max_latency_ratio
        and canary.p99_s - stable.p99_s > t.latency_slack_s
    ):
        ratio = canary.p99_s / stable.p99_s if stable.p99_s > 0 else math.inf
        outcome, why = Outcome.FAIL, f"canary is {ratio:.2f}x stable, limit {limit}"
    else:
        outcome, why = Outcome.PASS, f"within {limit}"
    return Check(
        f"p{QUANTILE * 100:g} latency",
        outcome,
        stable.p99_s,
        canary.p99_s,
        limit,
        f"{numbers}: {why}",
    )


def _accuracy(stable: Measurement, canary: Measurement, t: Thresholds) -> Check:
    limit = f"canary >= stable - {_pct(t.max_accuracy_drop)} (or not significant)"

    def side(name: str, m: Measurement) -> str:
        low, high = wilson(m.top1, m.labelled)
        return (
            f"{name} {_pct(m.accuracy)} [{_pct(low)}, {_pct(high)}] "
            f"({m.top1:.0f}/{m.labelled:.0f} labelled)"
        )

    numbers = f"{side('canary', canary)}, {side('stable', stable)}"
    short = [m for m in (canary, stable) if m.labelled < t.min_labels]
    if short:
        names = ", ".join(
            f"{'canary' if m is canary else 'stable'} {m.labelled:.0f}" for m in short
        )
        outcome, why = Outcome.SKIP, f"skipped: labelled predictions {names} < {t.min_labels}"
    else:
        drop = stable.accuracy - canary.accuracy
        z = two_proportion_z(stable.top1, stable.labelled, canary.top1, canary.labelled)
        if drop > t.max_accuracy_drop and z > Z_95_ONE_SIDED:
            outcome, why = Outcome.FAIL, f"canary {_pct(drop)} below stable (z={z:.1f})"
        else:
            outcome, why = Outcome.PASS, f"within {limit}"
    return Check(
        "top-1 accuracy",
        outcome,
        stable.accuracy if stable.labelled else None,
        canary.accuracy if canary.labelled else None,
        limit,
        f"{numbers}: {why}",
    )


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"
