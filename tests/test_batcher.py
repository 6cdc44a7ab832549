"""The adaptive batcher: gathering, slicing, isolation and the no-wait path at low load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from predictor.batcher import (
    BATCH_SIZE,
    AdaptiveBatcher,
    BatcherClosed,
    BatchFailed,
    DeadlineExpired,
    QueueFull,
)
from runtime.tensors import Tensors
from runtime.worker import ForwardWorker


class RecordingModel:
    """Doubles its input; records every batch it was given.

    With `held`, every pass waits for `release` after setting `entered`, so a test makes a
    busy worker (a pass in progress, requests queued behind it) by holding it, never by
    guessing how long a pass takes on this CPU.
    """

    def __init__(self, held: bool = False, fail_on: int | None = None) -> None:
        self.batches: list[int] = []
        self.held = held
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        batch = inputs["x"]
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch.shape[0])
        if self.held:
            self.entered.set()
            assert self.release.wait(HOLD_LIMIT_S), "the test never released the pass"
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise RuntimeError("forward pass failed")
        return {"y": batch.astype(np.float32) * 2}


HOLD_LIMIT_S = 10.0  # a held pass gives up after this (a test that forgot to release it)


async def held_pass(model: RecordingModel) -> None:
    """Wait until the worker is inside a held pass."""
    assert await asyncio.to_thread(model.entered.wait, HOLD_LIMIT_S), "no pass started"


class ArrayBatcher:
    """An AdaptiveBatcher seen through one input "x" and one output "y", as most tests here
    need (the named-tensor tests below use the batcher itself)."""

    def __init__(self, batcher: AdaptiveBatcher) -> None:
        self.batcher = batcher

    async def submit(self, array: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return (await self.batcher.submit({"x": array}, deadline))["y"]

    @property
    def queued_images(self) -> int:
        return self.batcher.queued_images

    def close(self) -> None:
        self.batcher.close()


def batcher_for(model: RecordingModel, max_batch_size: int, max_delay_s: float) -> ArrayBatcher:
    return ArrayBatcher(
        AdaptiveBatcher(ForwardWorker(lambda: model).run, max_batch_size, max_delay_s)
    )


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    model = RecordingModel(held=True)
    batcher = batcher_for(model, 8, 0.01)

    async def scenario() -> list[np.ndarray]:
        arrays = [np.full((1 + i % 2, 3), i, dtype=np.uint8) for i in range(12)]
        jobs = [asyncio.ensure_future(batcher.submit(a)) for a in arrays]
        await held_pass(model)  # the rest queue behind the first pass
        model.release.set()
        results = await asyncio.gather(*jobs)
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
    model = RecordingModel(held=True)
    batcher = batcher_for(model, 8, 0.01)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 3), np.uint8)))
        await held_pass(model)
        jobs = [
            *(batcher.submit(np.zeros((1, 3), np.uint8)) for _ in range(3)),
            *(batcher.submit(np.zeros((1, 3, 1), np.float32)) for _ in range(3)),
        ]
        queued = [asyncio.ensure_future(job) for job in jobs]
        await asyncio.sleep(0)  # all six queued while the first pass is held
        model.release.set()
        await asyncio.gather(first, *queued)

    run(scenario())
    batcher.close()
    # The first pass, then one pass per kind (8 fits either kind's three).
    assert model.batches == [1, 3, 3], model.batches


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


class WrongRows:
    """Answers one row too few for the first batch, then behaves."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        self.calls += 1
        rows = inputs["x"].shape[0] - (1 if self.calls == 1 else 0)
        return {"y": np.zeros((rows, 2), np.float32)}


def test_a_result_with_the_wrong_rows_fails_its_batch_and_the_worker_carries_on() -> None:
    batcher = ArrayBatcher(AdaptiveBatcher(ForwardWorker(WrongRows).run, 4, 0.0))

    async def scenario() -> tuple[BaseException | np.ndarray, np.ndarray]:
        first = await asyncio.gather(
            batcher.submit(np.zeros((2, 1), np.uint8)), return_exceptions=True
        )
        return first[0], await batcher.submit(np.zeros((3, 1), np.uint8))

    failed, later = run(scenario())
    batcher.close()
    assert isinstance(failed, BatchFailed) and "for a batch of 2 rows" in str(failed)
    assert later.shape == (3, 2)


def test_a_bug_outside_the_forward_pass_fails_only_that_batch() -> None:
    async def not_an_array(inputs: Tensors) -> Tensors:
        if inputs["x"][0, 0] == 9:
            raise KeyError("boom")  # as if the engine wrapper itself were broken
        return {"y": inputs["x"] * 2}

    batcher = ArrayBatcher(AdaptiveBatcher(not_an_array, 1, 0.0))

    async def scenario() -> list[object]:
        arrays = [np.full((1, 1), v, np.uint8) for v in (9, 1)]
        return await asyncio.gather(*(batcher.submit(a) for a in arrays), return_exceptions=True)

    bad, good = run(scenario())
    batcher.close()
    assert isinstance(bad, KeyError)
    np.testing.assert_array_equal(good, [[2]])


def test_a_full_queue_refuses_at_once_and_accepts_again_when_drained() -> None:
    model = RecordingModel(held=True)
    batcher = ArrayBatcher(
        AdaptiveBatcher(ForwardWorker(lambda: model).run, 2, 0.0, max_queue_size=4)
    )

    async def scenario() -> tuple[list[object], float, np.ndarray]:
        first = asyncio.ensure_future(batcher.submit(np.zeros((2, 1), np.uint8)))
        await held_pass(model)  # the worker took it: the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(np.zeros((2, 1), np.uint8))) for _ in "ab"]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(QueueFull, match="max_queue_size 4"):
            await batcher.submit(np.zeros((1, 1), np.uint8))
        refused_in = time.monotonic() - started
        model.release.set()
        results: list[object] = list(await asyncio.gather(first, *queued))
        return results, refused_in, await batcher.submit(np.zeros((1, 1), np.uint8))

    results, refused_in, after = run(scenario())
    batcher.close()
    assert len(results) == 3 and refused_in < 0.1  # refused without waiting for a pass
    assert after.shape == (1, 1)


def test_expired_and_abandoned_requests_leave_the_queue_without_running() -> None:
    model = RecordingModel(held=True)
    batcher = ArrayBatcher(
        AdaptiveBatcher(ForwardWorker(lambda: model).run, 1, 0.0, max_queue_size=8)
    )

    async def scenario() -> tuple[list[object], int]:
        busy = asyncio.ensure_future(batcher.submit(np.full((1, 1), 1, np.uint8)))
        await held_pass(model)
        expiring = asyncio.ensure_future(
            batcher.submit(np.full((1, 1), 2, np.uint8), deadline=time.monotonic() + 0.1)
        )
        abandoned = asyncio.ensure_future(batcher.submit(np.full((1, 1), 3, np.uint8)))
        await asyncio.sleep(0)
        abandoned.cancel()
        expired = await asyncio.gather(expiring, return_exceptions=True)  # while still held
        left = batcher.queued_images
        model.release.set()
        outcomes = await asyncio.gather(busy, abandoned, return_exceptions=True)
        return [outcomes[0], expired[0], outcomes[1]], left

    (busy, expired, abandoned), left = run(scenario())
    batcher.close()
    np.testing.assert_array_equal(busy, [[2]])
    assert isinstance(expired, DeadlineExpired)
    assert isinstance(abandoned, asyncio.CancelledError)
    assert model.batches == [1] and left == 0  # only the first request ever ran


def test_close_fails_what_is_queued_and_refuses_what_comes_later() -> None:
    model = RecordingModel(held=True)
    batcher = ArrayBatcher(AdaptiveBatcher(ForwardWorker(lambda: model).run, 1, 0.0))

    async def scenario() -> list[object]:
        jobs = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1), np.uint8))) for _ in "abc"]
        await held_pass(model)
        batcher.close()
        model.release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 5)
        with pytest.raises(BatcherClosed):
            await batcher.submit(np.zeros((1, 1), np.uint8))
        return list(outcomes)

    outcomes = run(scenario())
    assert all(isinstance(o, BatcherClosed) for o in outcomes)  # none left hanging


class SumAndDifference:
    """Two named inputs, two named outputs (Triton's `simple` model, in numpy)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        self.batches.append(len(a))
        return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def test_every_named_input_is_concatenated_and_every_output_split_by_request() -> None:
    model = SumAndDifference()
    batcher = AdaptiveBatcher(ForwardWorker(lambda: model).run, 8, 0.05)
    requests = [
        {
            "INPUT0": np.full((rows, 4), i, np.int32),
            "INPUT1": np.full((rows, 4), 10 * i, np.int32),
        }
        for i, rows in enumerate((1, 3, 2), start=1)
    ]

    async def scenario() -> list[Tensors]:
        return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))

    answers = run(scenario())
    batcher.close()
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["OUTPUT0"], request["INPUT0"] + request["INPUT1"])
        np.testing.assert_array_equal(answer["OUTPUT1"], request["INPUT0"] - request["INPUT1"])
    assert sum(model.batches) == 6 and len(model.batches) < 3  # passes were shared


def test_requests_differing_in_any_named_input_never_share_a_pass() -> None:
    model = SumAndDifference()
    batcher = AdaptiveBatcher(ForwardWorker(lambda: model).run, 8, 0.05)
    narrow = {"INPUT0": np.ones((1, 4), np.int32), "INPUT1": np.ones((1, 4), np.int32)}
    wide = {"INPUT0": np.ones((1, 4), np.int32), "INPUT1": np.ones((1, 5), np.int32)}

    async def scenario() -> list[object]:
        return list(
            await asyncio.gather(
                batcher.submit(narrow), batcher.submit(wide), return_exceptions=True
            )
        )

    good, bad = run(scenario())
    batcher.close()
    assert isinstance(good, dict) and good["OUTPUT0"].tolist() == [[2, 2, 2, 2]]
    assert isinstance(bad, ValueError)  # numpy refused [1, 4] + [1, 5]: its own pass only
    assert model.batches == [1, 1]


def test_inputs_of_different_batch_sizes_are_refused() -> None:
    batcher = AdaptiveBatcher(ForwardWorker(SumAndDifference).run, 8, 0.0)
    mismatched = {"INPUT0": np.ones((2, 4), np.int32), "INPUT1": np.ones((3, 4), np.int32)}
    with pytest.raises(ValueError, match="batch sizes differ"):
        run(batcher.submit(mismatched))
    batcher.close()


def test_several_instances_run_batches_at_once_each_taking_the_next_when_free() -> None:
    """Two model instances (Triton's instance_group count): with both held, two passes are in
    progress at once and a third batch waits for whichever is freed first."""
    first, second = RecordingModel(held=True), RecordingModel(held=True)
    batcher = ArrayBatcher(
        AdaptiveBatcher(
            [ForwardWorker(lambda: first).run, ForwardWorker(lambda: second).run], 1, 0.0
        )
    )

    async def scenario() -> list[np.ndarray]:
        jobs = [
            asyncio.ensure_future(batcher.submit(np.full((1, 1), i, np.uint8))) for i in range(3)
        ]
        await held_pass(first)
        await held_pass(second)  # both instances busy at once
        assert batcher.queued_images == 1  # the third waits for a free instance
        second.release.set()  # the second instance is freed: it runs the waiting batch too
        while len(second.batches) < 2:
            await asyncio.sleep(0.01)
        assert first.batches == [1]  # the first instance still holds its one pass
        first.release.set()
        return list(await asyncio.gather(*jobs))

    results = run(scenario())
    batcher.close()
    assert [int(r[0, 0]) for r in results] == [0, 2, 4]
    assert (len(first.batches), len(second.batches)) == (1, 2)
