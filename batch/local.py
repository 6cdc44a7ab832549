"""The in-process engine (`--model_dir`): the servers' decoding and model runner, no serving.

Reading, hashing and decoding (transformer.imaging.preprocess, Pillow releases the GIL) run in
a thread pool while the forward thread runs the previous batch, so decoding and the forward
pass overlap; a serial loop (bench.limit) can only alternate them. Work is pulled only as fast
as it is used: at most a few batches of images are in memory at any time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput

from common.modelrepo import resolve
from transformer.imaging import DecodeLimits, preprocess
from transformer.postprocess import top_k

from .outcomes import Failure, Outcome, Prediction, read_unless_stored, top_up
from .runner import ForwardRunner
from .settings import DEFAULT_BATCH_SIZE, BatchSettings
from .sources import Image, Work

# Batches waiting for or in the forward pass: one running, one ready behind it.
FORWARD_QUEUE = 2


@dataclass(frozen=True)
class Decoded:
    """An image ready for the forward pass."""

    item: Work
    sha256: str
    pixels: np.ndarray


class LocalEngine:
    """Runs the model in this process, batches of decoded images on one forward thread."""

    kind = "model_dir"

    def __init__(self, settings: BatchSettings) -> None:
        """Resolve the model version, load and warm the runner; raises ModelRepositoryError."""
        assert settings.model_dir is not None
        version = resolve(settings.model_dir, settings.model_name, settings.model_version)
        self.model_name = settings.model_name
        self.model_version = version.version
        self.params = version.preprocessing()
        self.labels = version.labels()
        self.limits = DecodeLimits(max_pixels=settings.max_image_pixels)
        self.top_k = min(settings.top_k, len(self.labels))
        self.batch_size = settings.batch_size or min(
            version.config.max_batch_size or 1, DEFAULT_BATCH_SIZE
        )
        self.runner = ForwardRunner(version, self.batch_size, settings.num_threads)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        # Decodes in flight: enough to fill the next batch while one runs.
        self.decode_ahead = self.batch_size * FORWARD_QUEUE + settings.decode_workers

    def close(self) -> None:
        """Stop the decode threads and the forward thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.runner.close()

    def classify(self, work: Iterable[Work]) -> Iterator[Outcome]:
        """One outcome per work item; decoding overlaps the forward pass."""
        items = iter(work)
        decoding: set[Future[Outcome | Decoded]] = set()
        ready: list[Decoded] = []
        forwarding: deque[tuple[Future[np.ndarray], list[Decoded]]] = deque()
        exhausted = False
        while True:
            if not exhausted:
                exhausted = top_up(items, decoding, self.decode_ahead, self._start_decode)
            # Send a batch once it is full, or whatever is left at the end.
            while len(forwarding) < FORWARD_QUEUE and (
                len(ready) >= self.batch_size or (exhausted and not decoding and ready)
            ):
                chunk, ready = ready[: self.batch_size], ready[self.batch_size :]
                forwarding.append((self.runner.submit([d.pixels for d in chunk]), chunk))
            if forwarding and (forwarding[0][0].done() or not decoding):
                logits, chunk = forwarding.popleft()
                yield from self._predictions(logits.result(), chunk)
                continue
            if not decoding:
                if exhausted and not ready and not forwarding:
                    return
                continue
            waiting: list[Future[Any]] = [*decoding, *(f for f, _ in forwarding)]
            done, _ = wait(waiting, return_when=FIRST_COMPLETED)
            for future in [f for f in decoding if f in done]:
                decoding.discard(future)
                result = future.result()
                if isinstance(result, Decoded):
                    ready.append(result)
                else:
                    yield result

    def _start_decode(self, item: Work) -> Future[Outcome | Decoded]:
        return self.pool.submit(self._decode, item)

    def _decode(self, item: Work) -> Outcome | Decoded:
        """Read, hash and decode one image (a decode thread); a failure is an outcome."""
        image = read_unless_stored(item)
        if not isinstance(image, Image):
            return image
        try:
            return Decoded(item, image.sha256, preprocess(image.data, self.params, self.limits))
        except InvalidInput as exc:
            return Failure(item.key, image.sha256, str(exc.reason))

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
