"""The in-process classifier (`--model_dir`): the servers' decoding and model runner, no serving.

Reading, hashing and decoding (vision.imaging.preprocess, Pillow releases the GIL) run in
a thread pool while the forward threads (`batch.runner`: on the CPU one engine instance per
CPU) run earlier batches, so decoding and the forward pass overlap and every CPU stays busy; a
serial loop (bench.limit) can only alternate them. Work is pulled only as fast as it is used:
at most a few batches of images are in memory at any time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from common.cpus import available_cpus
from common.modelrepo import resolve
from runtime.engines import describe
from vision.imaging import DecodeLimits, ImageError, preprocess
from vision.postprocess import top_k
from vision.preprocessing import Preprocessing

from .outcomes import (
    ClassifierConfigError,
    Failure,
    Finished,
    Outcome,
    Prediction,
    read_unless_stored,
    top_up,
)
from .runner import ForwardRunner, plan_runner
from .settings import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE, BatchSettings
from .sources import Image, Work

logger = logging.getLogger("batch")

# Batches waiting for or in the forward pass beyond one running per instance: one ready
# behind them, so an instance that finishes finds its next batch decoded.
READY_BATCHES = 1


@dataclass(frozen=True)
class Decoded:
    """An image ready for the forward pass."""

    item: Work
    sha256: str
    pixels: np.ndarray


class LocalClassifier:
    """Runs the model in this process, batches of decoded images on its forward threads."""

    kind = "model_dir"

    def __init__(self, settings: BatchSettings) -> None:
        """Resolve the model version, load and warm the runner; raises ModelRepositoryError."""
        assert settings.model_dir is not None
        version = resolve(settings.model_dir, settings.model_name, settings.model_version)
        self.model_name = settings.model_name
        self.model_version = version.version
        self.params = Preprocessing.read(version.model_dir)
        self.labels = version.labels()
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self.max_image_bytes = settings.max_image_bytes
        self.top_k = min(settings.top_k, len(self.labels))
        try:
            plan = plan_runner(
                version,
                available_cpus(),
                settings.instances,
                settings.num_threads,
                settings.device,
                settings.precision,
                settings.cuda_graphs,
            )
        except ValueError as exc:
            raise ClassifierConfigError(str(exc)) from exc
        default_batch = DEFAULT_CPU_BATCH_SIZE if plan.on_cpu else DEFAULT_BATCH_SIZE
        self.batch_size = settings.batch_size or min(
            version.config.max_batch_size or 1, default_batch
        )
        self.runner = ForwardRunner(version, plan, self.batch_size)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self.forward_queue = plan.instances + READY_BATCHES
        # Decodes in flight: enough to fill the next batch while the others run.
        self.decode_ahead = self.batch_size * self.forward_queue + settings.decode_workers
        logger.info(
            "%s each; %d instance(s), batches of %d, %d decode worker(s)",
            describe(version, plan.execution, self.runner.workers[0].engine),
            plan.instances,
            self.batch_size,
            settings.decode_workers,
        )

    def close(self) -> None:
        """Stop the decode threads and the forward threads."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.runner.close()

    def classify(self, work: Iterable[Work]) -> Iterator[Outcome]:
        """One outcome per work item; decoding overlaps the forward pass.

        Images read ahead (decoding, or decoded and waiting for a batch) stay within
        `decode_ahead`, and batches within `forward_queue`, however slow the forward pass: the
        job's memory does not grow with the number of images.
        """
        items = iter(work)
        finished = Finished()  # decodes and batches
        decoding: set[Future[Outcome | Decoded]] = set()
        ready: list[Decoded] = []
        forwarding: dict[Future[np.ndarray], list[Decoded]] = {}
        exhausted = False
        while True:
            if not exhausted:
                exhausted = top_up(
                    items,
                    decoding,
                    self.decode_ahead - len(ready),
                    lambda item: finished.track(self.pool.submit(self._decode, item)),
                )
            # Send a batch once it is full, or whatever is left at the end.
            while len(forwarding) < self.forward_queue and (
                len(ready) >= self.batch_size or (exhausted and not decoding and ready)
            ):
                chunk, ready = ready[: self.batch_size], ready[self.batch_size :]
                forwarding[finished.track(self.runner.submit([d.pixels for d in chunk]))] = chunk
            if not decoding and not forwarding:
                return  # and so nothing is ready or left to read
            future = finished.next()
            if future in forwarding:
                yield from self._predictions(future.result(), forwarding.pop(future))
                continue
            decoding.discard(future)
            result = future.result()
            if isinstance(result, Decoded):
                ready.append(result)
            else:
                yield result

    def _decode(self, item: Work) -> Outcome | Decoded:
        """Read, hash and decode one image (a decode thread); a failure is an outcome."""
        image = read_unless_stored(item, self.max_image_bytes)
        if not isinstance(image, Image):
            return image
        try:
            return Decoded(item, image.sha256, preprocess(image.data, self.params, self.limits))
        except ImageError as exc:
            return Failure(item.key, image.sha256, str(exc))

    def _predictions(self, logits: np.ndarray, chunk: list[Decoded]) -> Iterator[Prediction]:
        class_ids, scores = top_k(logits, self.top_k)
        for decoded, ids, row in zip(chunk, class_ids, scores, strict=True):
            yield Prediction(
                decoded.item.key,
                decoded.sha256,
                tuple(int(c) for c in ids),
                tuple(self.labels[c] for c in ids),
                tuple(float(s) for s in row),
            )
