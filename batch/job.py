"""One batch run: list, shard, look up what is stored, classify, upsert in chunks, summarise.

The main thread owns the database: it looks up a chunk of keys (one query), feeds them to the
engine, and writes the outcomes back a chunk per transaction. The engine's threads only read,
decode and classify. Entries of SOURCE left out by the listing (FIFOs, dangling links, ...) are
failures too, written to batch_errors before the images, and counted by kind in the summary.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common.modelrepo import ModelRepositoryError

from .outcomes import (
    Classifier,
    ClassifierConfigError,
    ClassifierUnavailable,
    Failure,
    Outcome,
    Prediction,
    Skipped,
)
from .progress import Progress
from .settings import BatchSettings, parse
from .sources import LEFT_OUT_KINDS, LeftOut, SourceError, Work, list_source
from .store import RunCounts, Store, StoreError

logger = logging.getLogger("batch")

EXIT_OK, EXIT_FAILED_IMAGES, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
# Keys of left-out entries named per kind in the summary (all of them are in batch_errors).
LEFT_OUT_EXAMPLES = 3


def left_out_summary(entries: Iterable[LeftOut]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Counts of left-out entries by kind (every kind, 0 included) and a few keys of each."""
    counts = dict.fromkeys(LEFT_OUT_KINDS, 0)
    examples: dict[str, list[str]] = {}
    for entry in entries:
        counts[entry.kind] += 1
        named = examples.setdefault(entry.kind, [])
        if len(named) < LEFT_OUT_EXAMPLES:
            named.append(entry.key)
    return counts, examples


@dataclass(frozen=True)
class Summary:
    """What a run did, for the final table and --json. `images` counts this shard's image
    files and left-out entries; `failed` counts both kinds of failure, `left_out` the second
    by kind (LEFT_OUT_KINDS), with a few of their keys in `left_out_examples`."""

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
    left_out: dict[str, int]
    left_out_examples: dict[str, list[str]]

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
            ("left out", str(sum(self.left_out.values()))),
            ("images/s", f"{self.images_per_s:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
            ("database share", f"{self.db_seconds / max(self.seconds, 1e-9):.1%}"),
        ]
        head = (
            f"run {self.run_id} {self.status}: {self.model_name} version {self.model_version}, "
            f"engine {self.engine}, shard {self.shard}"
        )
        width = max(len(name) for name, _ in rows)
        lines = [head, *(f"  {name:<{width}}  {value:>10}" for name, value in rows)]
        kinds = [
            f"{kind} {count} ({', '.join(self.left_out_examples.get(kind, []))}"
            + (", ...)" if count > LEFT_OUT_EXAMPLES else ")")
            for kind, count in self.left_out.items()
            if count
        ]
        if kinds:
            lines.append(f"  left out (failed, see batch_errors): {'; '.join(kinds)}")
        return "\n".join(lines)

    def to_json(self) -> str:
        """The summary as one JSON object (with images_per_s)."""
        return json.dumps({**asdict(self), "images_per_s": self.images_per_s})


def open_classifier(settings: BatchSettings) -> Classifier:
    """Build the chosen classifier (--engine url or model_dir); imports only what it needs."""
    if settings.engine == "url":
        from .remote import RemoteClassifier

        return RemoteClassifier(settings)
    from runtime.tuning import keep_freed_memory, prepare_environment

    prepare_environment()  # as the predictor does, before torch loads
    keep_freed_memory()
    from .local import LocalClassifier

    return LocalClassifier(settings)


def work_items(
    store: Store, classifier: Classifier, keys: dict[str, Path], chunk_size: int
) -> Iterator[Work]:
    """Work for every key, with the sha256 already stored for it (one query per chunk)."""
    names = list(keys)
    for start in range(0, len(names), chunk_size):
        chunk = names[start : start + chunk_size]
        stored = store.stored_hashes(classifier.model_name, classifier.model_version, chunk)
        for key in chunk:
            yield Work(key, keys[key], stored.get(key))


def run(settings: BatchSettings, store: Store, classifier: Classifier) -> Summary:
    """Classify this shard's images and store the outcomes; raises ClassifierUnavailable,
    StoreError or SourceError (the run is then recorded as stopped)."""
    started = time.perf_counter()
    listing = list_source(settings.source).shard(settings.shard)
    keys = listing.images
    images = len(keys) + len(listing.left_out)
    run_id = store.start_run(
        str(settings.source),
        classifier.model_name,
        classifier.model_version,
        classifier.kind,
        str(settings.shard),
    )
    counts = {"predicted": 0, "skipped": 0, "failed": 0}
    done: list[Prediction] = []
    failed: list[Failure] = []
    status = "stopped"
    left_out_counts, left_out_examples = left_out_summary(listing.left_out.values())
    progress = Progress(images, settings.progress)

    def flush() -> None:
        store.write(run_id, classifier.model_name, classifier.model_version, done, failed)
        done.clear()
        failed.clear()

    def record(outcome: Outcome) -> None:
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

    try:
        # Asked for (under SOURCE) but not classified: recorded as failures, never opened.
        for entry in listing.left_out.values():
            record(Failure(entry.key, None, entry.reason))
        work = work_items(store, classifier, keys, settings.chunk_size)
        for outcome in classifier.classify(work):
            record(outcome)
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
            store.finish_run(run_id, status, RunCounts(images, **counts))
        except StoreError:
            if status == "finished":
                raise
    return Summary(
        run_id=run_id,
        status=status,
        model_name=classifier.model_name,
        model_version=classifier.model_version,
        engine=classifier.kind,
        shard=str(settings.shard),
        images=images,
        seconds=time.perf_counter() - started,
        db_seconds=store.seconds,
        left_out=left_out_counts,
        left_out_examples=left_out_examples,
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
    classifier: Classifier | None = None
    try:
        store = Store(settings.db_url)
        classifier = open_classifier(settings)
        summary = run(settings, store, classifier)
    except (ClassifierUnavailable, StoreError, SourceError) as exc:
        print(f"batch: stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except (ModelRepositoryError, ClassifierConfigError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if classifier is not None:
            classifier.close()
        if store is not None:
            store.close()
    print(summary.to_json() if settings.json_summary else summary.table())
    return EXIT_FAILED_IMAGES if summary.failed else EXIT_OK
