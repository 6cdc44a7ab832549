"""The drift report on /metrics: a Prometheus collector that asks the transformer's DriftMonitor
at scrape time (the transformer registers it once its model has loaded)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vision.drift import DriftMonitor


class DriftCollector(Collector):
    """Exports a DriftMonitor's report as gauges on /metrics, computed at scrape time."""

    def __init__(self, monitor: DriftMonitor | None) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """transformer_drift_score, _threshold and the window's image count."""
        if self.monitor is None or not self.monitor.enabled:
            return
        report = self.monitor.report()
        score = GaugeMetricFamily(
            "transformer_drift_score",
            "Drift of the sliding window from the reference, per signal: PSI for continuous "
            "signals, Jensen-Shannon distance for the predicted class; NaN until the window "
            "holds --drift_min_count images.",
            labels=["signal"],
        )
        threshold = GaugeMetricFamily(
            "transformer_drift_threshold",
            "The score above which a signal counts as drifted.",
            labels=["signal"],
        )
        for name, signal in report["signals"].items():
            value = signal["score"]
            score.add_metric([name], math.nan if value is None else value)
            threshold.add_metric([name], signal["threshold"])
        yield score
        yield threshold
        yield GaugeMetricFamily(
            "transformer_drift_window_images",
            "Images in the drift window now (at most --drift_window).",
            value=report["window"]["count"],
        )
