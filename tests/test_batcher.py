"""The adaptive batcher: gathering, slicing, isolation and the no-wait path at low load."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from predictor.batcher import BATCH_SIZE, AdaptiveBatcher


class RecordingModel:
    """Doubles its input; records every batch it was given; optionally slow."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise RuntimeError("forward pass failed")
        return batch.astype(np.float32) * 2


def batcher_for(model: RecordingModel, max_batch_size: int, max_delay_s: float) -> AdaptiveBatcher:
    executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
    return AdaptiveBatcher(model, max_batch_size, max_delay_s, executor)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    model = RecordingModel(delay=0.02)
    batcher = batcher_for(model, 8, 0.01)

    async def scenario() -> list[np.ndarray]:
        arrays = [np.full((1 + i % 2, 3), i, dtype=np.uint8) for i in range(12)]
        results = await asyncio.gather(*(batcher.submit(a) for a in arrays))
        for array, result in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(result, array * 2)
        return results

    run(scenario())
    batcher.close()
    assert sum(model.batches) == sum(1 + i % 2 for i in range(12))
    assert max(model.batches) > 2 and all(size <= 8 for size in model.batches)
    assert len(model.batches) < 12
    assert all(name.startswith("forward") for name in model.threads)  # never the event loop


def test_lone_request_does_not_wait_for_the_delay() -> None:
    model = RecordingModel()
    batcher = batcher_for(model, 8, 0.5)

    async def scenario() -> float:
        start = time.perf_counter()
        await batcher.submit(np.zeros((1, 3), np.uint8))
        return time.perf_counter() - start

    assert run(scenario()) < 0.25
    batcher.close()


def test_a_failed_pass_fails_only_its_own_requests() -> None:
    model = RecordingModel(fail_on=7)
    batcher = batcher_for(model, 1, 0.0)

    async def scenario() -> list[object]:
        arrays = [np.full((1, 2), v, np.uint8) for v in (1, 7, 3)]
        return await asyncio.gather(*(batcher.submit(a) for a in arrays), return_exceptions=True)

    good, bad, other = run(scenario())
    batcher.close()
    assert isinstance(bad, RuntimeError)
    np.testing.assert_array_equal(good, [[2, 2]])
    np.testing.assert_array_equal(other, [[6, 6]])


def test_different_input_kinds_never_share_a_batch() -> None:
    model = RecordingModel(delay=0.01)
    batcher = batcher_for(model, 8, 0.01)

    async def scenario() -> None:
        await asyncio.gather(
            *(batcher.submit(np.zeros((1, 3), np.uint8)) for _ in range(3)),
            *(batcher.submit(np.zeros((1, 3, 1), np.float32)) for _ in range(3)),
        )

    run(scenario())
    batcher.close()
    assert sum(model.batches) == 6


def test_oversized_request_is_refused() -> None:
    batcher = batcher_for(RecordingModel(), 2, 0.0)
    with pytest.raises(ValueError, match="limit 2"):
        run(batcher.submit(np.zeros((3, 1), np.uint8)))
    batcher.close()


def test_batch_sizes_are_observed_in_the_histogram() -> None:
    before = BATCH_SIZE._sum.get()
    batcher = batcher_for(RecordingModel(), 4, 0.0)
    run(batcher.submit(np.zeros((3, 1), np.uint8)))
    batcher.close()
    assert BATCH_SIZE._sum.get() - before == 3
