"""The Prometheus metrics both components export on `/metrics`, and the protocol of a request.

Names follow Prometheus' conventions: base units in the name (`_seconds`, `_bytes`), `_total`
for counters, labels with few values (never a request id or a file name). Each process exports
only what it serves: the request-level series here are created per component on first use, the
transformer's own series live in `transformer/metrics.py`, the predictor's in
`predictor/metrics.py` and `predictor/batcher.py`. README.md's
"Metrics" table lists every series; tests/test_monitoring.py checks that the alert rules and the
dashboard use only series a running server really exports.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Protocols, as the `protocol` label spells them.
V1, V2_REST, V2_GRPC = "v1", "v2-rest", "v2-grpc"

# Latency buckets from 1 ms to 10 s: a single small image takes ~10 ms end to end on a CPU,
# a batch of 12-megapixel photos under load a few seconds. Between 10 ms and 1 s, where most
# answers fall, each bucket is at most 1.5x the one below it: a quantile is interpolated inside
# one bucket, so canary analysis (rollout/analysis.py) can only tell p99s apart that differ by
# more than a bucket's width.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
)  # fmt: skip
BYTES_BUCKETS = tuple(float(4**n) * 1024 for n in range(0, 8))  # 1 KiB .. 16 MiB
PIXELS_BUCKETS = tuple(float(4**n) * 1024 for n in range(0, 9))  # 1 Ki .. 64 Mi pixels


def request_protocol(method: str, path: str) -> str | None:
    """The protocol of an HTTP inference request (V1 or V2 REST), None for any other route."""
    if method != "POST":
        return None
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return V1
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return V2_REST
    return None


class ServerMetrics:
    """Request-level series of one component: counts by protocol and outcome, latency, in flight.

    `prefix` is the component (`transformer` or `predictor`); get it with `server_metrics`.
    `constant` labels go on every request count and latency with the same value for the life
    of the process: the predictor's `model_version` (the version it serves), which is how a
    canary analysis tells canary from stable (docs/rollout.md).
    """

    def __init__(self, prefix: str, constant: dict[str, str] | None = None) -> None:
        self.constant = dict(constant or {})
        names = list(self.constant)
        self.requests = Counter(
            f"{prefix}_requests",  # exported as <prefix>_requests_total
            "Inference requests answered, by protocol and outcome (HTTP status code for v1 and "
            "v2-rest, gRPC status code name for v2-grpc).",
            ["protocol", "code", *names],
        )
        self.duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "Whole inference request, from the first byte read to the answer, by protocol.",
            ["protocol", *names],
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            f"{prefix}_requests_in_flight",
            "Inference requests being served right now.",
        )
        self.memory_budget = Gauge(
            f"{prefix}_request_memory_budget_bytes",
            "Memory the data of requests in flight may hold (--request_memory_budget_bytes).",
        )
        self.memory_held = Gauge(
            f"{prefix}_request_memory_held_bytes",
            "Memory charged to requests in flight now (their data and its copies).",
        )

    def initialise(self) -> None:
        """Create the usual outcomes' series at 0, and each protocol's latency: an increase
        counts only from a sample already there, so the first errors of a new version (a
        canary's) are not lost to the series' first scrape."""
        for protocol, codes in (
            (V1, ("200", "500", "503")),
            (V2_REST, ("200", "500", "503")),
            (V2_GRPC, ("OK", "INTERNAL", "UNAVAILABLE")),
        ):
            for code in codes:
                self.requests.labels(protocol, code, *self.constant.values())
            self.duration.labels(protocol, *self.constant.values())

    def count(self, protocol: str, code: str) -> None:
        """Count one answered request."""
        self.requests.labels(protocol, code, *self.constant.values()).inc()

    def observe(self, protocol: str, seconds: float) -> None:
        """Record one request's duration."""
        self.duration.labels(protocol, *self.constant.values()).observe(seconds)


_SERVERS: dict[str, ServerMetrics] = {}


def server_metrics(component: str, constant: dict[str, str] | None = None) -> ServerMetrics:
    """The request-level series of `component` (created on first use, once per process, with
    the `constant` labels given then); raises ValueError when asked again with other labels."""
    if component not in _SERVERS:
        _SERVERS[component] = ServerMetrics(component, constant)
    elif constant is not None and _SERVERS[component].constant != constant:
        raise ValueError(
            f"{component} metrics exist with labels {_SERVERS[component].constant}, "
            f"asked for {constant}"
        )
    return _SERVERS[component]
