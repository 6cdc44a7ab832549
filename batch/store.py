"""The database side: schema, look-ups and idempotent chunked upserts (SQLAlchemy 2 Core).

Three tables, created when missing (predictions is defined in groundtruth.schema: online
and batch predictions share its columns and the labels):

    predictions   one row per (image_key, model_name, model_version): sha256, top-1 class_id,
                  label and score, the top-k as JSON, created_at
    batch_runs    one row per run: source, model, engine, shard, started/finished, counts
    batch_errors  one row per (image_key, model_name, model_version) that failed, with the reason

Each chunk of outcomes is written in one transaction with INSERT ... ON CONFLICT DO UPDATE
(PostgreSQL and SQLite both have it), so a run killed at any point leaves whole chunks only, and
a re-run rewrites nothing twice. A prediction clears the same image's error row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from common.database import Database, DatabaseError
from groundtruth.schema import image_and_model, metadata, predictions

from .outcomes import Failure, Prediction

batch_runs = sa.Table(
    "batch_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("engine", sa.String(16), nullable=False),
    sa.Column("shard", sa.String(32), nullable=False),
    # "running" until the run ends; a run killed with SIGKILL stays "running".
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("images", sa.Integer, nullable=False, default=0),
    sa.Column("predicted", sa.Integer, nullable=False, default=0),
    sa.Column("skipped", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
)

batch_errors = sa.Table(
    "batch_errors",
    metadata,
    *image_and_model(),
    sa.Column("sha256", sa.String(64)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("batch_runs.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# The database is unreachable, refused a statement, or the URL is unusable.
StoreError = DatabaseError


@dataclass(frozen=True)
class RunCounts:
    """What a run did so far."""

    images: int = 0
    predicted: int = 0
    skipped: int = 0
    failed: int = 0


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """One database connection pool, the schema, and the time spent talking to the database."""

    def __init__(self, url: str) -> None:
        """Connect and create the schema if missing; raises StoreError."""
        self.db = Database(url)
        self.dialect = self.db.dialect
        self.url = self.db.url
        self.db.create(metadata)

    @property
    def seconds(self) -> float:
        """Time spent in look-ups and writes, for the summary."""
        return self.db.seconds

    def close(self) -> None:
        """Close every pooled connection."""
        self.db.close()

    def start_run(
        self, source: str, model_name: str, model_version: str, engine: str, shard: str
    ) -> int:
        """Record a new run as running; returns its id."""

        def insert(conn: Connection) -> int:
            result = conn.execute(
                batch_runs.insert().values(
                    source=source,
                    model_name=model_name,
                    model_version=model_version,
                    engine=engine,
                    shard=shard,
                    status="running",
                    started_at=_now(),
                    images=0,
                    predicted=0,
                    skipped=0,
                    failed=0,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

        return self._run(insert)

    def finish_run(self, run_id: int, status: str, counts: RunCounts) -> None:
        """Record a run's end, its status and counts."""
        self._run(
            lambda conn: conn.execute(
                batch_runs.update()
                .where(batch_runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=_now(),
                    images=counts.images,
                    predicted=counts.predicted,
                    skipped=counts.skipped,
                    failed=counts.failed,
                )
            )
        )

    def stored_hashes(
        self, model_name: str, model_version: str, keys: Sequence[str]
    ) -> dict[str, str]:
        """The sha256 of each key's stored prediction for this model version (absent: none)."""
        if not keys:
            return {}
        query = sa.select(predictions.c.image_key, predictions.c.sha256).where(
            predictions.c.model_name == model_name,
            predictions.c.model_version == model_version,
            predictions.c.image_key.in_(list(keys)),
        )
        return self._run(lambda conn: {row[0]: row[1] for row in conn.execute(query)})

    def write(
        self,
        run_id: int,
        model_name: str,
        model_version: str,
        done: Iterable[Prediction],
        failed: Iterable[Failure],
    ) -> None:
        """Upsert predictions and errors in one transaction; raises StoreError."""
        now = _now()
        rows = [
            {
                "image_key": p.key,
                "model_name": model_name,
                "model_version": model_version,
                "sha256": p.sha256,
                "class_id": p.class_ids[0],
                "label": p.labels[0],
                "score": p.scores[0],
                "created_at": now,
                "top_k": [
                    {"class_id": c, "label": label, "score": s}
                    for c, label, s in zip(p.class_ids, p.labels, p.scores, strict=True)
                ],
            }
            for p in done
        ]
        errors = [
            {
                "image_key": f.key,
                "model_name": model_name,
                "model_version": model_version,
                "sha256": f.sha256,
                "reason": f.reason,
                "run_id": run_id,
                "created_at": now,
            }
            for f in failed
        ]

        def upsert(conn: Connection) -> None:
            if rows:
                conn.execute(self._upsert(predictions), rows)
                keys = [r["image_key"] for r in rows]
                conn.execute(
                    batch_errors.delete().where(
                        batch_errors.c.model_name == model_name,
                        batch_errors.c.model_version == model_version,
                        batch_errors.c.image_key.in_(keys),
                    )
                )
            if errors:
                conn.execute(self._upsert(batch_errors), errors)

        if rows or errors:
            self._run(upsert)

    def _upsert(self, table: sa.Table) -> Any:
        return self.db.upsert(table)

    def _run(self, work: Any) -> Any:
        return self.db.run(work)
