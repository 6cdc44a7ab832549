"""The benchmark's tracing part: the ratio of medians, the target, the table."""

from __future__ import annotations

import pytest

from bench.tracing import TracingCost


def test_the_ratio_is_the_median_of_the_rounds_against_a_five_percent_target() -> None:
    cost = TracingCost("x", [100.0, 50.0, 102.0], [96.0, 49.0, 10.0], 4200)
    assert cost.ratio == pytest.approx(0.96)  # of 0.96, 0.98 and ~0.1
    assert cost.met()
    assert not TracingCost("x", [100.0], [94.9], 700).met()


def test_the_table_and_json_show_every_round_the_spans_and_the_cpu() -> None:
    cpu = {"transformer_off": 4.0, "transformer_on": 4.3, "predictor_off": 8.0}
    cost = TracingCost("TorchScript", [52.4, 54.9], [51.6, 53.6], 2100, {**cpu, "receiver": 0.4})
    table = cost.format_table()
    assert "off images/s: 52.4 54.9" in table and "on  images/s: 51.6 53.6" in table
    assert "spans received 2100" in table and "met" in table
    assert "transformer off 4.00, on 4.30; predictor off 8.00, on -; receiver 0.40" in table
    data = cost.to_json()
    assert data["ratio_on_over_off"] == round(cost.ratio, 3) and data["met"] is True
    assert data["sampling"] == 1.0 and data["spans_received"] == 2100
