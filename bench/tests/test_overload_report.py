"""The benchmark's overload part: which runs met the targets, and the table."""

from __future__ import annotations

from typing import Any

from bench.overload import OverloadRun, format_table, to_json


def summary(
    accepted_p99: float | None, refused_p99: float | None, **statuses: int
) -> dict[str, Any]:
    return {
        "statuses": statuses or {"200": 100, "503": 900},
        "accepted_per_s": 10.0,
        "accepted_p50_ms": 900.0,
        "accepted_p99_ms": accepted_p99,
        "refused_p50_ms": 3.0,
        "refused_p99_ms": refused_p99,
    }


def test_a_run_meets_the_targets_only_with_both_p99s_within_and_nothing_but_200_or_503() -> None:
    assert OverloadRun("a", summary(2500.0, 250.0)).met()
    assert not OverloadRun("a", summary(2500.1, 10.0)).met()
    assert not OverloadRun("a", summary(100.0, 250.1)).met()
    assert not OverloadRun("a", summary(100.0, 10.0, **{"200": 5, "500": 1})).met()
    assert not OverloadRun("a", summary(None, None)).met()  # nothing served at all
    assert OverloadRun("a", summary(100.0, None, **{"200": 5})).met()  # nothing refused


def test_the_table_and_json_carry_every_run() -> None:
    runs = [
        OverloadRun("OpenVINO INT8", summary(1200.0, 120.0)),
        OverloadRun("TS", summary(3000.0, 9.0)),
    ]
    table = format_table(runs)
    assert "OpenVINO INT8" in table and "met" in table and "MISSED" in table
    data = to_json(runs)
    assert [r["met"] for r in data["runs"]] == [True, False]
    assert data["targets_ms"] == {"accepted_p99": 2500.0, "refused_p99": 250.0}
