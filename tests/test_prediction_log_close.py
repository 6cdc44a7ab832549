"""The prediction log's shutdown accounting on a real PostgreSQL: every row recorded ends up
counted once, written or dropped, even when a write outlives close()'s wait and then fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from batch_db import fresh_database
from sqlalchemy.engine import Connection

from common.database import Database
from groundtruth.log import PredictionLog
from groundtruth.store import GroundTruthStore, ServedPrediction

WAIT_S = 20.0


class Counts:
    """A LogObserver that adds up what the writer reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows_written = 0
        self.rows_dropped = 0

    def written(self, rows: int) -> None:
        with self.lock:
            self.rows_written += rows

    def dropped(self, rows: int) -> None:
        with self.lock:
            self.rows_dropped += rows

    def pending(self, rows: int) -> None:
        pass

    def joined(self, joins: object) -> None:
        pass

    def totals(self) -> tuple[int, int]:
        """(written, dropped) so far."""
        with self.lock:
            return self.rows_written, self.rows_dropped


def served(request_id: str, count: int) -> list[ServedPrediction]:
    return [
        ServedPrediction(
            "image-classifier",
            "1",
            request_id,
            index,
            f"{index:064x}",
            (1, 2, 3, 4, 5),
            (0.5, 0.2, 0.1, 0.1, 0.1),
            ("a", "b", "c", "d", "e"),
            datetime.now(UTC),
        )
        for index in range(count)
    ]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with fresh_database("postgresql", tmp_path) as url:
        yield url


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise TimeoutError(f"waited {WAIT_S} s for {what}")


LOCK_WAITERS = (
    "FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


@contextmanager
def writer_held_in_flight(database: str) -> Iterator[tuple[PredictionLog, Counts, Connection]]:
    """A prediction log whose writer has taken a chunk of 4 rows and waits inside PostgreSQL
    on a lock this connection holds (in an open transaction) on its table."""
    store = GroundTruthStore(Database(database))
    store.ensure_schema()
    counts = Counts()
    log = PredictionLog(store, counts, chunk=4, flush_interval_s=0.05)
    locker = sa.create_engine(database)
    try:
        with locker.connect() as conn:
            conn.begin()
            conn.execute(sa.text("LOCK TABLE served_predictions IN ACCESS EXCLUSIVE MODE"))
            log.record(served("in-flight", 4))  # one chunk: the writer takes it and waits
            wait_until(
                lambda: conn.execute(sa.text(f"SELECT count(*) {LOCK_WAITERS}")).scalar_one(),
                "the writer to wait on the lock",
            )
            yield log, counts, conn
    finally:
        log.close(timeout_s=0)
        log._thread.join(WAIT_S)
        locker.dispose()
        store.db.close()


def test_a_write_that_outlives_close_and_fails_is_counted_as_dropped(database: str) -> None:
    """close() gives up waiting for the held chunk and counts the rows still queued; then the
    writer's connection is terminated, its write fails, and the chunk it held is counted as
    dropped too (before the fix it went back into a queue nobody would read again, counted
    nowhere)."""
    with writer_held_in_flight(database) as (log, counts, conn):
        log.record(served("queued", 3))  # behind the held chunk, still queued at close
        log.close(timeout_s=0.3)
        assert counts.totals() == (0, 3)
        conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) {LOCK_WAITERS}"))
        conn.rollback()
        log._thread.join(WAIT_S)
        assert not log._thread.is_alive()
        assert counts.totals() == (0, 7)


def test_a_write_that_outlives_close_and_succeeds_is_counted_as_written(database: str) -> None:
    """The same, but the lock is released instead: the chunk in flight is written and counted
    as written, not also as dropped."""
    with writer_held_in_flight(database) as (log, counts, conn):
        log.close(timeout_s=0.3)
        conn.rollback()  # the lock goes; the writer's insert goes through
        log._thread.join(WAIT_S)
        assert not log._thread.is_alive()
        assert counts.totals() == (4, 0)
        stored = conn.execute(sa.text("SELECT count(*) FROM served_predictions"))
        assert stored.scalar_one() == 4
