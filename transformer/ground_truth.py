"""The transformer's side of ground truth: the prediction log it writes, the labels it takes
(POST /v2/models/<name>/labels) and the accuracy it reports (GET /v2/models/<name>/accuracy).

On with --prediction_log_db (or its file or environment variable). The request path only
appends to the log's buffer (`groundtruth.log`); the database is reached from the log's own
thread and, for labels and reports, from worker threads, never from the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from common.database import Database, DatabaseError
from groundtruth import accuracy
from groundtruth.labels import ClassNames, LabelError, parse_labels
from groundtruth.log import PredictionLog
from groundtruth.schema import LOGGED_TOP_K, OUTCOMES
from groundtruth.store import GroundTruthStore, Joined, ServedPrediction, logged_request_id

from . import metrics

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = "24h"  # GET .../accuracy without ?since=
STATEMENT_TIMEOUT_S = 10.0  # a stalled PostgreSQL answers a label post 503, not never
DATABASE_THREADS = 4  # label posts and reports in flight at once


def image_digest(data: bytes) -> str:
    """What the log keeps of an image: the SHA-256 of its file's bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


class LogMetrics:
    """The prediction log's observer: Prometheus series in transformer.metrics."""

    def __init__(self, model_version: str) -> None:
        # Every series exists from the start at 0 (rates and ratios over them need it).
        for status in ("matched", "pending"):
            metrics.LABELS_RECEIVED.labels(status)
        self._versions: set[str] = set()
        self.version_seen(model_version)

    def version_seen(self, model_version: str) -> None:
        """Create a version's series at 0 the first time it answers (a canary's, say), before
        any of its predictions is labelled: an increase counts from a sample already there."""
        if model_version in self._versions:
            return
        self._versions.add(model_version)
        for outcome in OUTCOMES:
            metrics.LABELLED_PREDICTIONS.labels(model_version, outcome)
        metrics.LABEL_CORRECTIONS.labels(model_version)
        metrics.LABEL_DELAY.labels(model_version)

    def written(self, rows: int) -> None:
        metrics.LOG_ROWS_WRITTEN.inc(rows)

    def dropped(self, rows: int) -> None:
        metrics.LOG_ROWS_DROPPED.inc(rows)

    def pending(self, rows: int) -> None:
        metrics.LOG_ROWS_PENDING.set(rows)

    def joined(self, joins: Sequence[Joined]) -> None:
        for join in joins:
            if join.first:
                metrics.LABELLED_PREDICTIONS.labels(join.model_version, join.outcome).inc()
                metrics.LABEL_DELAY.labels(join.model_version).observe(join.delay_s)
            else:
                metrics.LABEL_CORRECTIONS.labels(join.model_version).inc()


class GroundTruth:
    """One transformer's prediction log, labels and accuracy routes."""

    def __init__(
        self, url: str, model_name: str, model_version: str, names: Sequence[str], capacity: int
    ) -> None:
        """Check the URL (no connection yet: a database down at start only delays the log);
        raises DatabaseError for an unusable URL."""
        self.db = Database(
            url,
            flag="--prediction_log_db",
            pool_timeout_s=5.0,
            statement_timeout_s=STATEMENT_TIMEOUT_S,
        )
        # Label posts and reports wait on the database here, never in the event loop, and
        # never in the default executor others share.
        self._pool = ThreadPoolExecutor(DATABASE_THREADS, thread_name_prefix="ground-truth")
        self.store = GroundTruthStore(self.db)
        self.model_name = model_name
        self.classes = ClassNames(names)
        self.observer = LogMetrics(model_version)
        self.log = PredictionLog(self.store, self.observer, capacity=capacity)
        logger.info(
            "prediction log: %s (buffer %d rows; labels at POST /v2/models/%s/labels)",
            self.db.url,
            capacity,
            model_name,
        )

    def record(
        self,
        request_id: str,
        digests: Sequence[str],
        class_ids: np.ndarray,
        scores: np.ndarray,
        names: np.ndarray,
        model_version: str,
    ) -> None:
        """Queue one answered request's images for the log (top LOGGED_TOP_K each), made by
        `model_version` (the version that answered: stable or canary)."""
        created = datetime.now(UTC)
        self.observer.version_seen(model_version)
        request_id = logged_request_id(request_id)
        ids = class_ids[:, :LOGGED_TOP_K].tolist()
        top = scores[:, :LOGGED_TOP_K].tolist()
        self.log.record(
            [
                ServedPrediction(
                    self.model_name,
                    model_version,
                    request_id,
                    index,
                    digests[index],
                    tuple(ids[index]),
                    tuple(top[index]),
                    tuple(names[ids[index]].tolist()),
                    created,
                )
                for index in range(len(digests))
            ]
        )

    def close(self) -> None:
        """Write what is queued (a few seconds at most), then release the database."""
        self.log.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.db.close()

    async def post_labels(self, model_name: str, request: Request) -> JSONResponse:
        """POST /v2/models/<name>/labels: store labels and join them to logged predictions."""
        if model_name != self.model_name:
            return _error(404, f"model {model_name} is not served here (this is {self.model_name})")
        body = await request.body()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON ({exc}); expected a list of labels")
        try:
            labels = parse_labels(parsed, self.classes)
        except LabelError as exc:
            return _error(400, str(exc))
        try:
            applied = await asyncio.get_running_loop().run_in_executor(
                self._pool, self.store.apply_labels, labels, self.model_name
            )
        except DatabaseError as exc:
            logger.warning("labels: %s", exc)
            return _error(503, f"the prediction log's database is unavailable; retry: {exc}")
        counts = applied.counts()
        metrics.LABELS_RECEIVED.labels("matched").inc(counts["matched"])
        metrics.LABELS_RECEIVED.labels("pending").inc(counts["pending"])
        self.observer.joined(applied.joins)
        return JSONResponse(applied.summary())

    async def get_accuracy(self, model_name: str, since: str = DEFAULT_WINDOW) -> JSONResponse:
        """GET /v2/models/<name>/accuracy?since=24h: accuracy per version over the window."""
        if model_name != self.model_name:
            return _error(404, f"model {model_name} is not served here (this is {self.model_name})")
        try:
            window = accuracy.parse_duration(since)
        except accuracy.WindowError as exc:
            return _error(400, str(exc))
        try:
            report = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._report, window
            )
        except DatabaseError as exc:
            return _error(503, f"the prediction log's database is unavailable; retry: {exc}")
        return JSONResponse(
            {"model_name": self.model_name, "since": since, **report.to_json(self.classes.names)}
        )

    def _report(self, window: timedelta) -> accuracy.AccuracyReport:
        self.store.ensure_schema()  # a database nothing was written to yet reports nothing
        return accuracy.report(self.db, window, self.model_name)


async def without_prediction_log(model_name: str) -> JSONResponse:
    """The labels and accuracy routes of a transformer whose prediction log is off."""
    return _error(
        501,
        "labels and accuracy need the prediction log: start the transformer with "
        "--prediction_log_db URL (or $PREDICTION_LOG_DB_URL)",
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def register(app: Any, ground_truth: GroundTruth | None) -> None:
    """Add the labels and accuracy routes to the REST app."""
    base = "/v2/models/{model_name}"
    if ground_truth is None:
        app.add_api_route(base + "/labels", without_prediction_log, methods=["POST"])
        app.add_api_route(base + "/accuracy", without_prediction_log, methods=["GET"])
        return
    app.add_api_route(base + "/labels", ground_truth.post_labels, methods=["POST"])
    app.add_api_route(base + "/accuracy", ground_truth.get_accuracy, methods=["GET"])
