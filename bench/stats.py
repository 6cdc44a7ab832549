"""What the benchmark computes from its measurements: percentiles, ratios and the targets.

The result records (`LimitResult`, `CellResult`, `HopResult`) are plain data, so everything
here is a pure function that the unit tests drive with made-up numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

SERVED, PEER = "served", "peer"
V1_JSON, V2_GRPC = "v1-json", "v2-grpc"
PROTOCOLS = (V1_JSON, V2_GRPC)

# The targets. KB here is 1000 bytes: 224*224*3 UINT8 pixels are 150,528 bytes before framing.
SERVED_OVER_LIMIT_MIN = 1.2
P50_OVER_SINGLE_MAX = 1.1
SERVED_OVER_PEER_MIN = 2.0
HOP_BYTES_MAX = 151_000
MAX_ERRORS = 0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's
    default). Raises ValueError for an empty sequence or q outside 0-100."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def summarize(latencies_s: Sequence[float]) -> LatencySummary:
    """Percentiles of latencies given in seconds; an empty sequence gives NaNs and count 0."""
    if not latencies_s:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan)
    ms = [v * 1000 for v in latencies_s]
    return LatencySummary(
        count=len(ms),
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms),
    )


def median_by_kind(values: Sequence[tuple[str, float]]) -> dict[str, float]:
    """The median value of each kind, from (kind, value) pairs, kinds in first-seen order."""
    groups: dict[str, list[float]] = {}
    for kind, value in values:
        groups.setdefault(kind, []).append(value)
    return {kind: percentile(group, 50) for kind, group in groups.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    if math.isnan(numerator):
        return None
    return numerator / denominator


@dataclass(frozen=True)
class LimitPoint:
    """The in-process pipeline at one batch size."""

    batch_size: int
    images: int
    seconds: float
    images_per_s: float
    batch_p50_ms: float
    forward_p50_ms: float | None = None  # the forward pass alone, median per batch


@dataclass(frozen=True)
class LimitResult:
    """The limit: decode + preprocess + forward in one process, no serving."""

    points: tuple[LimitPoint, ...]
    single_image_ms: float  # batch 1, median, decode + preprocess + forward
    decode_ms: float  # median decode + preprocess per image
    forward_ms: float  # median batch-1 forward
    threads: int
    single_image_mean_ms: float = math.nan
    # The set is bimodal (small originals, 12 MP phone photos): its median sits between the two
    # groups, so the report also gives each group's median.
    single_image_ms_by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> LimitPoint:
        """The batch size with the highest images/s; raises ValueError when there is none."""
        if not self.points:
            raise ValueError("the limit measured no batch size")
        return max(self.points, key=lambda p: p.images_per_s)


@dataclass(frozen=True)
class CellResult:
    """One pipeline, protocol and concurrency under closed-loop load."""

    pipeline: str  # SERVED or PEER
    protocol: str  # V1_JSON or V2_GRPC
    concurrency: int
    window_s: float
    requests: int  # completed inside the window
    errors: int  # failed requests over the whole cell, warm-up included
    images_per_s: float
    latency: LatencySummary
    p50_ms_by_kind: dict[str, float] = field(default_factory=dict)
    # CPU milliseconds per image in the window, per process (transformer, predictor, client).
    cpu_ms_per_image: dict[str, float | None] = field(default_factory=dict)
    # Server-side stage means from the servers' Prometheus histograms, in the window.
    stages: dict[str, float | None] = field(default_factory=dict)
    # Machine-wide CPU use in the window: busy_pct and steal_pct of all CPUs.
    machine: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class HopResult:
    """Bytes per image on the transformer -> predictor gRPC hop."""

    served_bytes: int  # ModelInferRequest.ByteSize() for one image, built as the transformer does
    peer_bytes: int
    served_tensor_bytes: int  # the tensor alone: 224*224*3 UINT8
    peer_tensor_bytes: int  # 3*224*224 FP32


def find_cell(
    cells: Sequence[CellResult], pipeline: str, protocol: str, concurrency: int
) -> CellResult | None:
    """The cell for (pipeline, protocol, concurrency), or None when it was not measured."""
    for cell in cells:
        if (cell.pipeline, cell.protocol, cell.concurrency) == (pipeline, protocol, concurrency):
            return cell
    return None


@dataclass(frozen=True)
class Ratios:
    """The comparisons the report leads with, per client protocol."""

    high_concurrency: int
    low_concurrency: int
    served_over_limit: dict[str, float | None]
    served_over_peer: dict[str, float | None]
    p50_over_single: dict[str, float | None]
    hop_served_bytes: int | None
    hop_peer_over_served: float | None


def compute_ratios(
    cells: Sequence[CellResult], limit: LimitResult, hop: HopResult | None
) -> Ratios:
    """Ratios at the highest and lowest measured concurrency; raises ValueError without cells."""
    if not cells:
        raise ValueError("no load cells measured")
    high = max(c.concurrency for c in cells)
    low = min(c.concurrency for c in cells)
    served_over_limit: dict[str, float | None] = {}
    served_over_peer: dict[str, float | None] = {}
    p50_over_single: dict[str, float | None] = {}
    for protocol in PROTOCOLS:
        served_high = find_cell(cells, SERVED, protocol, high)
        peer_high = find_cell(cells, PEER, protocol, high)
        served_low = find_cell(cells, SERVED, protocol, low)
        served_ips = served_high.images_per_s if served_high else None
        served_over_limit[protocol] = ratio(served_ips, limit.best.images_per_s)
        served_over_peer[protocol] = ratio(
            served_ips, peer_high.images_per_s if peer_high else None
        )
        p50_over_single[protocol] = ratio(
            served_low.latency.p50_ms if served_low else None, limit.single_image_ms
        )
    return Ratios(
        high_concurrency=high,
        low_concurrency=low,
        served_over_limit=served_over_limit,
        served_over_peer=served_over_peer,
        p50_over_single=p50_over_single,
        hop_served_bytes=hop.served_bytes if hop else None,
        hop_peer_over_served=ratio(hop.peer_bytes, hop.served_bytes) if hop else None,
    )


@dataclass(frozen=True)
class Target:
    """One pass/fail target: a measured value against a threshold."""

    name: str
    value: float | None
    threshold: float
    at_least: bool  # True: value >= threshold passes; False: value <= threshold passes
    unit: str = "x"  # "x" (a ratio), "bytes" or "count"

    @property
    def passed(self) -> bool:
        """Whether the value meets the threshold; a missing value fails."""
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.threshold if self.at_least else self.value <= self.threshold


def evaluate_targets(ratios: Ratios, cells: Sequence[CellResult]) -> list[Target]:
    """The targets, one per client protocol where the protocol matters."""
    high, low = ratios.high_concurrency, ratios.low_concurrency
    targets: list[Target] = []
    for protocol in PROTOCOLS:
        targets.append(
            Target(
                f"served c{high} images/s >= {SERVED_OVER_LIMIT_MIN}x limit best ({protocol})",
                ratios.served_over_limit[protocol],
                SERVED_OVER_LIMIT_MIN,
                at_least=True,
            )
        )
    for protocol in PROTOCOLS:
        targets.append(
            Target(
                f"served p50 c{low} <= {P50_OVER_SINGLE_MAX}x single-image time ({protocol})",
                ratios.p50_over_single[protocol],
                P50_OVER_SINGLE_MAX,
                at_least=False,
            )
        )
    for protocol in PROTOCOLS:
        targets.append(
            Target(
                f"served c{high} images/s >= {SERVED_OVER_PEER_MIN}x peer c{high} ({protocol})",
                ratios.served_over_peer[protocol],
                SERVED_OVER_PEER_MIN,
                at_least=True,
            )
        )
    targets.append(
        Target(
            f"internal hop <= {HOP_BYTES_MAX / 1000:.0f} KB/image (served)",
            None if ratios.hop_served_bytes is None else float(ratios.hop_served_bytes),
            HOP_BYTES_MAX,
            at_least=False,
            unit="bytes",
        )
    )
    targets.append(
        Target(
            "errors = 0 in every cell (served and peer)",
            float(sum(c.errors for c in cells)) if cells else None,
            MAX_ERRORS,
            at_least=False,
            unit="count",
        )
    )
    return targets
