"""One batch run: list, shard, look up what is stored, classify, upsert in chunks, summarise.

The main thread owns the database: it looks up a chunk of keys (one query), feeds them to the
engine, and writes the outcomes back a chunk per transaction. The engine's threads only read,
decode and classify.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common.modelrepo import ModelRepositoryError

from .outcomes import Engine, EngineConfigError, EngineUnavailable, Failure, Prediction, Skipped
from .progress import Progress
from .settings import BatchSettings, parse
from .sources import SourceError, Work, list_images, select
from .store import RunCounts, Store, StoreError

logger = logging.getLogger("batch")

EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


@dataclass(frozen=True)
class Summary:
    """What a run did, for the final table and --json."""

    run_id: int
    status: str
    model_name: str
    model_version: str
    engine: str
    shard: str
    images: int
    predicted: int
    skipped: int
    failed: int
    seconds: float
    db_seconds: float

    @property
    def images_per_s(self) -> float:
        """Images handled (predicted, skipped or failed) per second of the run."""
        return (self.predicted + self.skipped + self.failed) / max(self.seconds, 1e-9)

    def table(self) -> str:
        """The final plain-text table."""
        rows = [
            ("images", str(self.images)),
            ("predicted", str(self.predicted)),
            ("skipped", str(self.skipped)),
            ("failed", str(self.failed)),
            ("images/s", f"{self.images_per_s:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("database share", f"{self.db_seconds / max(self.seconds, 1e-9):.1%}"),
        ]
        head = (
            f"run {self.run_id} {self.status}: {self.model_name} version {self.model_version}, "
            f"engine {self.engine}, shard {self.shard}"
        )
        width = max(len(name) for name, _ in rows)
        return "\n".join([head, *(f"  {name:<{width}}  {value:>10}" for name, value in rows)])

    def to_json(self) -> str:
        """The summary as one JSON object (with images_per_s)."""
        return json.dumps({**asdict(self), "images_per_s": self.images_per_s})


def open_engine(settings: BatchSettings) -> Engine:
    """Build the chosen engine; imports only what that engine needs."""
    if settings.engine == "url":
        from .remote import RemoteEngine

        return RemoteEngine(settings)
    from predictor.tuning import keep_freed_memory, prepare_environment

    prepare_environment()  # as the predictor does, before torch loads
    keep_freed_memory()
    from .local import LocalEngine

    return LocalEngine(settings)


def work_items(
    store: Store, engine: Engine, keys: dict[str, Path], chunk_size: int
) -> Iterator[Work]:
    """Work for every key, with the sha256 already stored for it (one query per chunk)."""
    names = list(keys)
    for start in range(0, len(names), chunk_size):
        chunk = names[start : start + chunk_size]
        stored = store.stored_hashes(engine.model_name, engine.model_version, chunk)
        for key in chunk:
            yield Work(key, keys[key], stored.get(key))


def run(settings: BatchSettings, store: Store, engine: Engine) -> Summary:
    """Classify this shard's images and store the outcomes; raises EngineUnavailable,
    StoreError or SourceError (the run is then recorded as stopped)."""
    started = time.perf_counter()
    keys = select(list_images(settings.source), settings.shard)
    run_id = store.start_run(
        str(settings.source),
        engine.model_name,
        engine.model_version,
        engine.kind,
        str(settings.shard),
    )
    counts = {"predicted": 0, "skipped": 0, "failed": 0}
    done: list[Prediction] = []
    failed: list[Failure] = []
    status = "stopped"
    progress = Progress(len(keys), settings.progress)

    def flush() -> None:
        store.write(run_id, engine.model_name, engine.model_version, done, failed)
        done.clear()
        failed.clear()

    try:
        for outcome in engine.classify(work_items(store, engine, keys, settings.chunk_size)):
            if isinstance(outcome, Prediction):
                done.append(outcome)
                counts["predicted"] += 1
            elif isinstance(outcome, Skipped):
                counts["skipped"] += 1
            else:
                failed.append(outcome)
                counts["failed"] += 1
                logger.warning("%s: %s", outcome.key, outcome.reason)
            progress.update(counts)
            if len(done) + len(failed) >= settings.chunk_size:
                flush()
        flush()
        status = "finished"
    finally:
        progress.close()
        if status != "finished":
            try:  # keep whole chunks that are done; a re-run skips them
                flush()
            except StoreError:
                pass
        try:
            store.finish_run(run_id, status, RunCounts(len(keys), **counts))
        except StoreError:
            if status == "finished":
                raise
    return Summary(
        run_id=run_id,
        status=status,
        model_name=engine.model_name,
        model_version=engine.model_version,
        engine=engine.kind,
        shard=str(settings.shard),
        images=len(keys),
        seconds=time.perf_counter() - started,
        db_seconds=store.seconds,
        **counts,
    )


def _stop(signum: int, frame: object) -> None:
    """SIGTERM (Kubernetes deleting or evicting the pod): stop like an unreachable service, so
    the chunks already done are kept and the run is recorded as stopped."""
    raise SystemExit(EXIT_STOPPED)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; see the exit statuses in `batch.settings.parser`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse(argv)
    signal.signal(signal.SIGTERM, _stop)
    store: Store | None = None
    engine: Engine | None = None
    try:
        store = Store(settings.db_url)
        engine = open_engine(settings)
        summary = run(settings, store, engine)
    except (EngineUnavailable, StoreError, SourceError) as exc:
        print(f"batch: stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except (ModelRepositoryError, EngineConfigError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if engine is not None:
            engine.close()
        if store is not None:
            store.close()
    print(summary.to_json() if settings.json_summary else summary.table())
    return EXIT_FAILED_IMAGES if summary.failed else EXIT_OK
