"""The predictor's own Prometheus series beyond the batcher's histograms (`predictor/batcher.py`).

The request-level series (`predictor_requests_total`, ...) come from `common.metrics`.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from common.metrics import LATENCY_BUCKETS

FORWARD_SECONDS = Histogram(
    "predictor_forward_seconds",
    "Time of one forward pass (one batch) on the model's device.",
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "predictor_queue_depth",
    "Images waiting in the batcher for a forward pass now.",
)
