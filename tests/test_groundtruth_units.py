"""The ground-truth room's pure parts: the Wilson interval, windows, class names, outcomes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from groundtruth.accuracy import WindowError, band_of, parse_duration, wilson
from groundtruth.labels import ClassNames, LabelError, parse_labels
from groundtruth.schema import TOP1, TOP5, WRONG
from groundtruth.store import outcome


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Worked by hand from Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
        (40, 50, 0.6696, 0.8876),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 2, 0.0945, 0.9055),
    ],
)
def test_wilson_matches_worked_values(successes: int, n: int, low: float, high: float) -> None:
    assert wilson(successes, n) == pytest.approx((low, high), abs=2e-4)


def test_wilson_without_trials_says_nothing_is_known() -> None:
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2W", timedelta(weeks=2)),
    ],
)
def test_windows_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1", "1x", "1h 30m", "-1h", "0s", "367d", "1.5h"])
def test_bad_windows_say_what_is_expected(text: str) -> None:
    with pytest.raises(WindowError, match="since="):
        parse_duration(text)


def test_outcomes_are_exclusive() -> None:
    assert outcome([3, 1, 2, 4, 5], 3) == TOP1
    assert outcome([3, 1, 2, 4, 5], 5) == TOP5
    assert outcome([3, 1, 2, 4, 5, 6], 6) == WRONG  # only the top 5 count


def test_confidence_bands_cover_zero_to_one() -> None:
    assert [band_of(s) for s in (0.0, 0.05, 0.1, 0.55, 0.999, 1.0)] == [0, 0, 1, 5, 9, 9]


def test_class_names_resolve_ids_names_and_refuse_ambiguity() -> None:
    classes = ClassNames(["tench", "Goldfish", "crane", "crane"])
    assert classes.resolve(0) == 0
    assert classes.resolve("goldfish") == 1  # case-insensitive when unambiguous
    with pytest.raises(LabelError, match=r"2 classes have that name \(ids \[2, 3\]\)"):
        classes.resolve("crane")
    with pytest.raises(LabelError, match="no such class id, expected 0 to 3"):
        classes.resolve(4)


def test_a_body_with_one_subject_twice_keeps_both_items() -> None:
    labels = parse_labels(
        [{"id": "a", "label": 0}, {"id": "a", "index": 0, "label": "tench"}], ClassNames(["tench"])
    )
    assert [label.subject for label in labels] == ["id:a#0", "id:a#0"]
