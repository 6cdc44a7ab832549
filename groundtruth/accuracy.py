"""Accuracy per model version from labelled predictions: counts, Wilson intervals, the most
frequent confusions and accuracy by confidence band.

Two sources, one report: the prediction log (online; its rows carry their joined label, so the
database aggregates them) and the batch job's predictions (joined with the labels by image key,
else by content, when the report is made).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from common import stats
from common.database import Database
from common.stats import DURATION_EXAMPLES, wilson

from .schema import BY_KEY, BY_SHA256, OUTCOMES, TOP1, TOP5, labels, predictions, served_predictions
from .store import now, outcome

ONLINE, BATCH = "online", "batch"
CONFUSIONS_SHOWN = 10
BANDS = 10  # confidence bands of width 0.1 over the top-1 score
MAX_WINDOW = timedelta(days=366)


class WindowError(ValueError):
    """A `since` that is not a duration this report takes."""


def parse_duration(text: str) -> timedelta:
    """A duration like 15m, 24h, 7d or 1h30m; raises WindowError saying what was expected."""
    window = stats.parse_duration(text)
    if window is None:
        raise WindowError(f"since={text[:40]!r}: expected a duration such as {DURATION_EXAMPLES}")
    if not timedelta(0) < window <= MAX_WINDOW:
        raise WindowError(
            f"since={text[:40]!r}: expected more than 0 s and at most {MAX_WINDOW.days} days"
        )
    return window


def band_of(score: float) -> int:
    """The confidence band (0 .. BANDS-1) of a top-1 score."""
    return min(BANDS - 1, max(0, int(score * BANDS)))


@dataclass
class VersionTally:
    """The labelled predictions of one model version, counted."""

    outcomes: Counter[str] = field(default_factory=Counter)
    confusions: Counter[tuple[int, int]] = field(default_factory=Counter)  # (true, predicted)
    band_count: Counter[int] = field(default_factory=Counter)
    band_top1: Counter[int] = field(default_factory=Counter)
    band_score: Counter[int] = field(default_factory=Counter)  # sum of scores (float)

    def add(
        self, result: str, true: int, predicted: int, band: int, count: int, score_sum: float
    ) -> None:
        """Count `count` predictions alike: outcome, classes, band and their summed score."""
        self.outcomes[result] += count
        if result != TOP1:
            self.confusions[(true, predicted)] += count
        self.band_count[band] += count
        self.band_score[band] += score_sum  # type: ignore[assignment]
        if result == TOP1:
            self.band_top1[band] += count

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """Accuracy with intervals, confusions and calibration, for people and machines."""
        total = sum(self.outcomes.values())
        top1 = self.outcomes[TOP1]
        top5 = top1 + self.outcomes[TOP5]
        return {
            "labelled": total,
            "outcomes": {o: self.outcomes[o] for o in OUTCOMES},
            "top1": _proportion(top1, total),
            "top5": _proportion(top5, total),
            "confusions": [
                {"true": _class(t, names), "predicted": _class(p, names), "count": c}
                for (t, p), c in sorted(self.confusions.items(), key=lambda kv: (-kv[1], kv[0]))[
                    :CONFUSIONS_SHOWN
                ]
            ],
            "calibration": [
                {
                    "band": f"{b / BANDS:.1f}-{(b + 1) / BANDS:.1f}",
                    "predictions": self.band_count[b],
                    "mean_score": round(self.band_score[b] / self.band_count[b], 4),
                    "top1_accuracy": round(self.band_top1[b] / self.band_count[b], 4),
                }
                for b in sorted(self.band_count)
            ],
        }


@dataclass
class AccuracyReport:
    """Per source and model version: the tallies of one window."""

    since: timedelta | None
    until: datetime
    tallies: dict[tuple[str, str, str], VersionTally] = field(default_factory=dict)

    def tally(self, source: str, model_name: str, version: str) -> VersionTally:
        return self.tallies.setdefault((source, model_name, version), VersionTally())

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """The report as GET .../accuracy and `python -m batch evaluate --json` give it."""
        start = self.until - self.since if self.since is not None else None
        return {
            "from": start.isoformat() if start is not None else None,
            "until": self.until.isoformat(),
            "versions": [
                {"source": s, "model_name": m, "model_version": v, **t.to_json(names)}
                for (s, m, v), t in sorted(self.tallies.items())
            ],
        }


def report(
    db: Database,
    since: timedelta | None,
    model_name: str | None = None,
    sources: Sequence[str] = (ONLINE,),
) -> AccuracyReport:
    """Accuracy over the predictions made in the last `since` (None: all); raises
    DatabaseError."""
    result = AccuracyReport(since, now())
    start = result.until - since if since is not None else None

    def read(conn: Connection) -> None:
        if ONLINE in sources:
            _online(conn, result, start, model_name)
        if BATCH in sources:
            _batch(conn, result, start, model_name)

    db.run(read)
    return result


def _online(
    conn: Connection, result: AccuracyReport, start: datetime | None, model_name: str | None
) -> None:
    table = served_predictions
    band = sa.case(
        *[(table.c.score >= b / BANDS, b) for b in range(BANDS - 1, 0, -1)], else_=0
    ).label("band")
    where: list[sa.ColumnElement[bool]] = [table.c.label_class_id.is_not(None)]
    if start is not None:
        where.append(table.c.created_at >= start)
    if model_name is not None:
        where.append(table.c.model_name == model_name)
    columns = [
        table.c.model_name,
        table.c.model_version,
        table.c.outcome,
        table.c.label_class_id,
        table.c.class_id,
        band,
    ]
    query = (
        sa.select(*columns, sa.func.count(), sa.func.sum(table.c.score))
        .where(*where)
        .group_by(*columns)
    )
    for name, version, result_kind, true, predicted, b, count, score_sum in conn.execute(query):
        result.tally(ONLINE, name, version).add(
            result_kind, true, predicted, int(b), int(count), float(score_sum)
        )


def _batch(
    conn: Connection, result: AccuracyReport, start: datetime | None, model_name: str | None
) -> None:
    by_key, by_content = labels.alias("by_key"), labels.alias("by_content")
    table = predictions
    query = (
        sa.select(
            table.c.model_name,
            table.c.model_version,
            table.c.score,
            table.c.top_k,
            sa.func.coalesce(by_key.c.class_id, by_content.c.class_id),
        )
        .select_from(
            table.outerjoin(
                by_key, sa.and_(by_key.c.source == BY_KEY, by_key.c.image_key == table.c.image_key)
            ).outerjoin(
                by_content,
                sa.and_(by_content.c.source == BY_SHA256, by_content.c.sha256 == table.c.sha256),
            )
        )
        .where(sa.or_(by_key.c.class_id.is_not(None), by_content.c.class_id.is_not(None)))
    )
    if start is not None:
        query = query.where(table.c.created_at >= start)
    if model_name is not None:
        query = query.where(table.c.model_name == model_name)
    for name, version, score, top_k, true in conn.execute(query.execution_options(yield_per=1000)):
        classes = [entry["class_id"] for entry in top_k]
        result.tally(BATCH, name, version).add(
            outcome(classes, true), true, classes[0], band_of(score), 1, score
        )


def _proportion(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson(successes, n)
    return {
        "correct": successes,
        "accuracy": round(successes / n, 4) if n else None,
        "ci95": [round(low, 4), round(high, 4)],
    }


def _class(class_id: int, names: Sequence[str]) -> dict[str, Any]:
    name = names[class_id] if 0 <= class_id < len(names) else None
    return {"class_id": class_id, "label": name}
