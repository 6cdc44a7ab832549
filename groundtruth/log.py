"""The prediction log's writer: a bounded buffer the request path appends to without waiting,
and one thread that writes it to the database in chunks.

Serving never waits on the database. `record` takes the lock for an append and returns; when
the buffer is full (the database slow or down for long), the new rows are dropped, counted and
logged at most once per interval. A chunk the database refuses goes back to the front of the
buffer and is retried with a growing pause (up to `retry_max_s`), so rows written late are not
lost; what is still unwritten at shutdown (after `close`'s deadline) is counted and logged.
`written` counts the rows of chunks the database committed (a request id seen before keeps the
rows of its first request): an acknowledged prediction survives a restart. A chunk the
database refuses for its content (not for being down) is dropped and counted, not retried.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from common.database import DatabaseError
from common.throttled import Throttled

from .store import GroundTruthStore, Joined, ServedPrediction

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 20_000  # rows (~300 bytes each): minutes of a busy replica's answers
DEFAULT_CHUNK = 500  # rows in one INSERT
# A replica's rows reach the database within this: two transactions (the rows, then the labels
# that came first) per flush, so a busy replica pays them once a second, not per request.
FLUSH_INTERVAL_S = 1.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0  # a database back up is written to again within this
LOG_INTERVAL_S = 30.0  # drops and write failures are logged at most this often


class LogObserver(Protocol):
    """Where the writer reports what it did (the transformer's metrics)."""

    def written(self, rows: int) -> None: ...

    def dropped(self, rows: int) -> None: ...

    def pending(self, rows: int) -> None: ...

    def joined(self, joins: Sequence[Joined]) -> None: ...


class PredictionLog:
    """Writes served predictions to the database off the request path."""

    def __init__(
        self,
        store: GroundTruthStore,
        observer: LogObserver,
        capacity: int = DEFAULT_CAPACITY,
        chunk: int = DEFAULT_CHUNK,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.store = store
        self.observer = observer
        self.capacity = capacity
        self.chunk = chunk
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self._rows: deque[ServedPrediction] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Set by close() once it has counted what is left: a chunk in flight then (its write
        # outlived close's wait) is counted by the writer, written or dropped, never twice.
        self._closed = False
        self._drops = Throttled(logger, LOG_INTERVAL_S)
        self._failures = Throttled(logger, LOG_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, rows: Sequence[ServedPrediction]) -> None:
        """Queue rows for writing; drops (counted, logged) what does not fit. Never blocks on
        the database."""
        with self._lock:
            room = self.capacity - len(self._rows)
            if self._stopping.is_set():
                room = 0
            taken = rows[: max(0, room)]
            self._rows.extend(taken)
            queued = len(self._rows)
        lost = len(rows) - len(taken)
        if lost:
            self.observer.dropped(lost)
            self._drops.warning(
                "prediction log: %d rows dropped, %d waiting to be written (the database is "
                "slow or unreachable; --prediction_log_capacity %d)",
                lost,
                queued,
                self.capacity,
            )
        if queued >= self.chunk:
            self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued within `timeout_s`, then stop; counts and logs what is left.
        A chunk still being written then is counted when its write ends: written, or dropped
        if it fails."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        with self._lock:
            self._closed = True
            left = len(self._rows)
            self._rows.clear()
        if left:
            self.observer.dropped(left)
            logger.error("prediction log: %d rows not written at shutdown (database down?)", left)
        self.observer.pending(0)

    def _take(self) -> list[ServedPrediction]:
        with self._lock:
            count = min(self.chunk, len(self._rows))
            return [self._rows.popleft() for _ in range(count)]

    def _put_back(self, rows: list[ServedPrediction]) -> None:
        """Return an unwritten chunk to the front; past capacity the newest rows are dropped,
        and all of them once close() has counted what was left (nothing writes them now)."""
        with self._lock:
            if self._closed:
                excess = len(rows)
            else:
                self._rows.extendleft(reversed(rows))
                excess = len(self._rows) - self.capacity
                for _ in range(max(0, excess)):
                    self._rows.pop()
        if excess > 0:
            self.observer.dropped(excess)

    def _refused(self, rows: list[ServedPrediction], exc: Exception) -> None:
        """Drop a chunk the database will never take (counted and logged), keep writing."""
        self.observer.dropped(len(rows))
        self._failures.warning(
            "prediction log: %d rows refused and dropped (not retried): %s", len(rows), exc
        )

    def _run(self) -> None:
        try:  # the tables exist from the start (reports on them), when the database is up
            self.store.ensure_schema()
        except DatabaseError as exc:
            self._failures.warning("prediction log: the database is unavailable: %s", exc)
        pause = RETRY_FIRST_S
        while True:
            if not self._stopping.is_set():
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
            rows = self._take()
            self.observer.pending(len(self._rows) + len(rows))
            if not rows:
                if self._stopping.is_set():
                    return
                continue
            try:
                joins = self.store.write_predictions(rows)
            except DatabaseError as exc:
                if not exc.transient:  # the rows themselves are refused: again would fail
                    self._refused(rows, exc)
                    continue
                self._put_back(rows)
                if self._stopping.is_set():  # close() counts what is left, or _put_back did
                    logger.error(
                        "prediction log: writing %d rows failed at shutdown: %s", len(rows), exc
                    )
                    return
                self._failures.warning(
                    "prediction log: writing %d rows failed, retrying in %.1f s: %s",
                    len(rows),
                    pause,
                    exc,
                )
                self._stopping.wait(pause)
                pause = min(self.retry_max_s, pause * 2)
                continue
            except Exception as exc:  # a bug must not end the writer: the buffer would only fill
                logger.exception("prediction log: writing %d rows failed", len(rows))
                self._refused(rows, exc)
                continue
            pause = RETRY_FIRST_S
            self.observer.written(len(rows))
            if joins:
                self.observer.joined(joins)
