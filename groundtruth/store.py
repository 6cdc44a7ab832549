"""The prediction log and the labels in SQL: writing predictions, storing labels, joining them.

A label and the prediction it names may arrive in either order, at different replicas: the
label is stored first (its own transaction), then joined to the predictions already logged; a
logged chunk of predictions is committed first, then joined to the labels already stored. Each
side commits before it looks at the other, so whichever comes second sees the first (READ
COMMITTED on PostgreSQL; SQLite runs one writer at a time). A join is a conditional UPDATE of the
prediction row (still unlabelled, or still holding the label it is replacing), so when both
sides see each other only one of them joins the row: each labelled prediction is counted once,
by the replica whose update took.

Precedence: a label for the request's image (`id`) wins over one for the image's content
(`sha256`); a later label of the same kind replaces an earlier one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from common.database import Database

from .labels import Label
from .schema import (
    BY_ID,
    BY_KEY,
    BY_SHA256,
    LOGGED_TOP_K,
    TOP1,
    TOP5,
    WRONG,
    labels,
    metadata,
    served_predictions,
)
from .schema import predictions as batch_predictions

IN_CHUNK = 500  # values in one IN (...) list
JOIN_ATTEMPTS = 3  # a row relabelled by racing replicas is read again this many times at most
MAX_LOGGED_ID = 128  # the request_id columns' length


@dataclass(frozen=True)
class ServedPrediction:
    """One answered image, as the prediction log keeps it (never the image itself)."""

    model_name: str
    model_version: str
    request_id: str
    image_index: int
    sha256: str
    class_ids: tuple[int, ...]  # the top LOGGED_TOP_K, best first
    scores: tuple[float, ...]
    names: tuple[str, ...]
    created_at: datetime

    def row(self) -> dict[str, Any]:
        """The served_predictions row."""
        return {
            "model_name": self.model_name,
            "request_id": self.request_id,
            "image_index": self.image_index,
            "model_version": self.model_version,
            "sha256": self.sha256,
            "class_id": self.class_ids[0],
            "label": self.names[0],
            "score": self.scores[0],
            "top_k": [
                {"class_id": c, "label": n, "score": s}
                for c, n, s in zip(self.class_ids, self.names, self.scores, strict=True)
            ],
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Joined:
    """A logged prediction that a label was just joined to."""

    model_version: str
    outcome: str  # TOP1, TOP5 or WRONG
    delay_s: float  # from the prediction to the label (0 when the label came first)
    first: bool  # False: it replaced another label (counted as a correction, not again)


@dataclass
class LabelOutcome:
    """What one posted label did."""

    label: Label
    status: str = "pending"  # "matched": joined to at least one logged prediction now
    predictions: int = 0  # logged predictions it names
    replaced: bool = False  # the same subject had another class before
    unchanged: bool = False  # the same subject had this class already

    def to_json(self) -> dict[str, object]:
        """The per-item answer of POST .../labels."""
        return {
            **self.label.describe(),
            "status": self.status,
            "predictions": self.predictions,
            "replaced": self.replaced,
        }


@dataclass
class LabelsApplied:
    """What a body of labels did: one outcome per label, and the joins to count."""

    outcomes: list[LabelOutcome]
    joins: list[Joined] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Labels received, matched to a logged prediction now, pending, replaced, unchanged."""
        matched = sum(o.status == "matched" for o in self.outcomes)
        return {
            "received": len(self.outcomes),
            "matched": matched,
            "pending": len(self.outcomes) - matched,
            "replaced": sum(o.replaced for o in self.outcomes),
            "unchanged": sum(o.unchanged for o in self.outcomes),
        }

    def summary(self) -> dict[str, object]:
        """Counts and per-item outcomes, as POST .../labels answers them."""
        return {**self.counts(), "labels": [o.to_json() for o in self.outcomes]}


def logged_request_id(request_id: str) -> str:
    """A request id as the log keeps it: as it is up to MAX_LOGGED_ID characters (all a label
    can name), else its SHA-256 (the transformer accepts longer client ids)."""
    if len(request_id) <= MAX_LOGGED_ID:
        return request_id
    return "sha256:" + hashlib.sha256(request_id.encode()).hexdigest()


def outcome(top_class_ids: Sequence[int], true_class: int) -> str:
    """TOP1, TOP5 or WRONG for a prediction's classes (best first) and the true class."""
    if top_class_ids and top_class_ids[0] == true_class:
        return TOP1
    return TOP5 if true_class in top_class_ids[:LOGGED_TOP_K] else WRONG


def utc(moment: datetime) -> datetime:
    """A database time as an aware UTC datetime (SQLite gives them back naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def now() -> datetime:
    return datetime.now(UTC)


class GroundTruthStore:
    """Predictions, labels and their join in one database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._schema_ready = False

    def ensure_schema(self) -> None:
        """Create the tables when missing (once per process); raises DatabaseError."""
        if not self._schema_ready:
            self.db.create(metadata)
            self._schema_ready = True

    def write_predictions(self, predictions: Sequence[ServedPrediction]) -> list[Joined]:
        """Log predictions (a request id seen before keeps its first rows) in one transaction,
        then join the labels already stored for them in a second; raises DatabaseError. Written
        again after a failure, rows already there are kept and the join is made again."""
        self.ensure_schema()
        if not predictions:
            return []
        rows = [p.row() for p in predictions]
        self.db.run(lambda conn: conn.execute(self.db.insert_new(served_predictions), rows))
        return self.db.run(lambda conn: self._join_stored_labels(conn, predictions))

    def apply_labels(self, items: Sequence[Label], model_name: str | None) -> LabelsApplied:
        """Store labels (replacing earlier ones of the same subject), then join them to the
        logged predictions they name. `model_name`: the model a label by id names (None: any,
        as `python -m batch labels` loads them). Raises DatabaseError."""
        self.ensure_schema()
        latest: dict[str, Label] = {}
        for item in items:  # the last label of a subject in one body wins, as across bodies
            latest.pop(item.subject, None)
            latest[item.subject] = item
        outcomes = {subject: LabelOutcome(label) for subject, label in latest.items()}
        received = now()

        def store(conn: Connection) -> None:
            subjects = list(outcomes)
            for chunk in _chunks(subjects):
                query = sa.select(labels.c.subject, labels.c.class_id).where(
                    labels.c.subject.in_(chunk)
                )
                for subject, class_id in conn.execute(query):
                    result = outcomes[subject]
                    result.unchanged = class_id == result.label.class_id
                    result.replaced = not result.unchanged
            conn.execute(
                self.db.upsert(labels),
                [_label_row(o.label, model_name, received) for o in outcomes.values()],
            )

        self.db.run(store)
        joins: list[Joined] = []

        def join(conn: Connection) -> None:
            # Content first, so that a label by id for the same prediction takes precedence.
            ordered = sorted(outcomes.values(), key=lambda o: o.label.source != BY_SHA256)
            batch = _batch_predictions_named(conn, [o.label for o in ordered], model_name)
            for result in ordered:
                label = result.label
                in_batch = batch.get((label.source, label.image_key or label.sha256 or ""), 0)
                matches = (
                    []
                    if label.source == BY_KEY
                    else self._predictions_named(conn, [label], model_name)
                )
                result.predictions = len(matches) + in_batch
                result.status = "matched" if result.predictions else "pending"
                for row in matches:
                    joined = _join(conn, row, result.label, received)
                    if joined is not None:
                        joins.append(joined)

        self.db.run(join)
        # A body naming one subject twice answers for each item: both carry the last outcome.
        return LabelsApplied([outcomes[item.subject] for item in items], joins)

    def _join_stored_labels(
        self, conn: Connection, predictions: Sequence[ServedPrediction]
    ) -> list[Joined]:
        """Join to just-logged predictions (and only to them) the labels that came before."""
        model_names = sorted({p.model_name for p in predictions})
        request_ids = sorted({p.request_id for p in predictions})
        found: list[Any] = []
        for chunk in _chunks(request_ids):
            found += conn.execute(
                sa.select(labels).where(
                    labels.c.source == BY_ID,
                    labels.c.request_id.in_(chunk),
                    sa.or_(labels.c.model_name.is_(None), labels.c.model_name.in_(model_names)),
                )
            ).all()
        for chunk in _chunks(sorted({p.sha256 for p in predictions})):
            found += conn.execute(
                sa.select(labels).where(labels.c.source == BY_SHA256, labels.c.sha256.in_(chunk))
            ).all()
        if not found:
            return []
        logged = {(p.model_name, p.request_id, p.image_index) for p in predictions}
        table = served_predictions
        rows: list[Any] = []
        for chunk in _chunks(request_ids):  # the chunk's rows as stored now
            rows += [
                row
                for row in conn.execute(
                    sa.select(table).where(
                        table.c.model_name.in_(model_names), table.c.request_id.in_(chunk)
                    )
                )
                if (row.model_name, row.request_id, row.image_index) in logged
            ]
        joins: list[Joined] = []
        # Content first, so that a label by id for the same prediction takes precedence.
        for stored in sorted(found, key=lambda r: r.source != BY_SHA256):
            label = Label(
                stored.source,
                stored.class_id,
                request_id=stored.request_id,
                image_index=stored.image_index,
                sha256=stored.sha256,
            )
            for row in rows:
                if label.source == BY_ID:
                    named = (row.request_id, row.image_index) == (
                        label.request_id,
                        label.image_index,
                    ) and stored.model_name in (None, row.model_name)
                else:
                    named = row.sha256 == label.sha256
                if named:
                    joined = _join(conn, row, label, utc(stored.received_at))
                    if joined is not None:
                        joins.append(joined)
        return joins

    @staticmethod
    def _predictions_named(
        conn: Connection, items: Iterable[Label], model_name: str | None
    ) -> list[Any]:
        """The logged prediction rows the labels name."""
        table = served_predictions
        rows: list[Any] = []
        for item in items:
            if item.source == BY_ID:
                where = [
                    table.c.request_id == item.request_id,
                    table.c.image_index == item.image_index,
                ]
            else:
                where = [table.c.sha256 == item.sha256]
            if model_name is not None:
                where.append(table.c.model_name == model_name)
            rows += conn.execute(sa.select(table).where(*where)).all()
        return rows


def _join(conn: Connection, row: Any, label: Label, received: datetime) -> Joined | None:
    """Put `label` on the logged prediction `row` unless a label that takes precedence is
    there or it already says this; None when nothing changed. The update is conditional on
    the row's label being what was read: when another replica changed it meanwhile, the row
    is read again and judged again (so neither a double count nor a lost replacement)."""
    table = served_predictions
    for _ in range(JOIN_ATTEMPTS):
        if row.label_source == BY_ID and label.source == BY_SHA256:
            return None
        if row.label_class_id == label.class_id and row.label_source == label.source:
            return None
        classes = [entry["class_id"] for entry in row.top_k]
        result = outcome(classes, label.class_id)
        key = [
            table.c.model_name == row.model_name,
            table.c.request_id == row.request_id,
            table.c.image_index == row.image_index,
        ]
        where = list(key)
        if row.label_class_id is None:
            where.append(table.c.label_class_id.is_(None))
        else:  # still the label this replaces
            where += [
                table.c.label_class_id == row.label_class_id,
                table.c.label_source == row.label_source,
            ]
        updated = conn.execute(
            table.update()
            .where(*where)
            .values(
                label_class_id=label.class_id,
                label_source=label.source,
                labelled_at=now(),
                outcome=result,
            )
        )
        if updated.rowcount == 1:
            # From the prediction to the label's arrival; 0 when the label came first.
            delay = max(0.0, (received - utc(row.created_at)).total_seconds())
            return Joined(row.model_version, result, delay, first=row.label_class_id is None)
        row = conn.execute(sa.select(table).where(*key)).one_or_none()
        if row is None:
            return None
    return None


def _batch_predictions_named(
    conn: Connection, items: Sequence[Label], model_name: str | None
) -> dict[tuple[str, str], int]:
    """How many batch predictions each key and content label names: {(source, key): count}.
    Those are joined when a report is made (groundtruth.accuracy), not here."""
    counts: dict[tuple[str, str], int] = {}
    for source, column in (
        (BY_KEY, batch_predictions.c.image_key),
        (BY_SHA256, batch_predictions.c.sha256),
    ):
        values = sorted(
            {
                (i.image_key if source == BY_KEY else i.sha256) or ""
                for i in items
                if i.source == source
            }
        )
        for chunk in _chunks(values):
            query = sa.select(column, sa.func.count()).where(column.in_(chunk))
            if model_name is not None:
                query = query.where(batch_predictions.c.model_name == model_name)
            for value, count in conn.execute(query.group_by(column)):
                counts[(source, value)] = int(count)
    return counts


def _label_row(label: Label, model_name: str | None, received: datetime) -> dict[str, Any]:
    return {
        "subject": label.subject,
        "source": label.source,
        "model_name": model_name if label.source == BY_ID else None,
        "request_id": label.request_id,
        "image_index": label.image_index,
        "sha256": label.sha256,
        "image_key": label.image_key,
        "class_id": label.class_id,
        "received_at": received,
    }


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]
