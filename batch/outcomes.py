"""What a classifier answers per image (predicted, skipped or failed), and the classifier contract.

Classifiers take an iterator of `Work` and yield one outcome per item, in any order; they pull
work only as fast as they can use it, so the job's database look-ups stay a bounded step ahead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, Protocol, TypeVar

from .sources import FileRefused, Image, Work, read_image

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    """An image's top-k classes, best first."""

    key: str
    sha256: str
    class_ids: tuple[int, ...]
    labels: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Skipped:
    """An image whose stored prediction has the same sha256: nothing to do."""

    key: str


@dataclass(frozen=True)
class Failure:
    """An image that cannot be classified, and why (the reason the servers would give)."""

    key: str
    sha256: str | None
    reason: str


Outcome = Prediction | Skipped | Failure


class ClassifierUnavailable(RuntimeError):
    """The classifier cannot go on (service unreachable after retries): the job stops."""


class ClassifierConfigError(ValueError):
    """The classifier cannot run with these settings (e.g. no version known): a usage error."""


class Classifier(Protocol):
    """Classifies images; one instance per run."""

    model_name: str
    model_version: str
    kind: str  # "url" or "model_dir", recorded in batch_runs

    def classify(self, work: Iterable[Work]) -> Iterator[Outcome]:
        """One outcome per work item, in any order; raises ClassifierUnavailable."""
        ...

    def close(self) -> None:
        """Release threads and connections."""
        ...


def read_unless_stored(item: Work, max_bytes: int) -> Image | Skipped | Failure:
    """The image's bytes and sha256; Skipped when its stored prediction is for these very
    bytes, Failure when the file cannot be read, is not a regular file or has more than
    `max_bytes` (--max_image_bytes: then it is not read at all)."""
    try:
        image = read_image(item.path, max_bytes)
    except FileRefused as exc:
        return Failure(item.key, None, str(exc))
    except OSError as exc:
        return Failure(item.key, None, f"cannot read {item.path}: {exc.strerror or exc}")
    return Skipped(item.key) if item.stored_sha256 == image.sha256 else image


def top_up(
    items: Iterator[Work], in_flight: set[Future[T]], limit: int, start: Callable[[Work], Future[T]]
) -> bool:
    """Start work until `limit` are in flight; returns True once `items` is exhausted."""
    while len(in_flight) < limit:
        item = next(items, None)
        if item is None:
            return True
        in_flight.add(start(item))
    return False


class Finished:
    """Futures in the order they end: their done-callbacks feed a queue, so waiting for the
    next one costs the same however many are in flight (`concurrent.futures.wait` walks and
    locks every one of them at each call)."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Future[Any]] = SimpleQueue()

    def track(self, future: Future[T]) -> Future[T]:
        """Have `future` come out of `next` once it ends; returns it."""
        future.add_done_callback(self._queue.put)
        return future

    def next(self) -> Future[Any]:
        """The next tracked future to end (blocks until one does)."""
        return self._queue.get()
