"""The benchmark's prediction-log part: the ratio of medians, the target, the table."""

from __future__ import annotations

import pytest

from bench.prediction_log import LogCost


def test_the_ratio_is_the_median_of_the_rounds_and_the_target_needs_no_drops() -> None:
    cost = LogCost("x", [100.0, 50.0, 102.0], [96.0, 49.0, 10.0], 500.0, 0.0)
    assert cost.ratio == pytest.approx(0.96)  # of 0.96, 0.98 and ~0.1
    assert cost.met()
    assert not LogCost("x", [100.0], [94.9], 500.0, 0.0).met()
    assert not LogCost("x", [100.0], [100.0], 500.0, 1.0).met()  # a dropped row misses it


def test_the_table_and_json_show_every_round() -> None:
    cost = LogCost("OpenVINO INT8", [52.4, 54.9], [51.6, 53.6], 1568.0, 0.0)
    table = cost.format_table()
    assert "off images/s: 52.4 54.9" in table and "on  images/s: 51.6 53.6" in table
    assert "met" in table
    data = cost.to_json()
    assert data["ratio_on_over_off"] == round(cost.ratio, 3) and data["met"] is True
