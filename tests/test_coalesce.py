"""The transformer's coalescer: no wait at low load, shared calls under load, split answers,
failures confined to their call. The chained servers in test_serving run it for real."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from transformer.coalesce import Coalescer


class RecordingPredictor:
    """Answers rows x 2; records each call's row count and tags; can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def send(self, pixels: np.ndarray, tags: Sequence[Any]) -> np.ndarray:
        self.calls.append((pixels.shape[0], list(tags)))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("predictor failed")
        return pixels.astype(np.float32) * 2


def rows(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 2), value, dtype=np.uint8)


async def _started(coalescer: Coalescer, *items: tuple[np.ndarray, Any]) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(coalescer.submit(p, t)) for p, t in items]
    await asyncio.sleep(0)
    return tasks


def test_a_lone_request_goes_at_once_with_its_tag() -> None:
    async def scenario() -> None:
        predictor = RecordingPredictor()
        coalescer = Coalescer(predictor.send, max_images=8, max_delay_s=10.0)
        answer = await asyncio.wait_for(coalescer.submit(rows(3), "a"), 1.0)
        assert predictor.calls == [(1, ["a"])]
        assert answer.tolist() == [[6.0, 6.0]]

    asyncio.run(scenario())


def test_requests_behind_a_call_in_flight_share_the_next_call() -> None:
    async def scenario() -> None:
        predictor = RecordingPredictor()
        predictor.gate.clear()
        coalescer = Coalescer(predictor.send, max_images=8, max_delay_s=10.0)
        first = await _started(coalescer, (rows(1), "first"))
        rest = await _started(coalescer, (rows(2), "b"), (rows(3, 2), "c"), (rows(4), "d"))
        assert predictor.calls == [(1, ["first"])]  # the others wait behind it
        predictor.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*first, *rest), 1.0)
        assert predictor.calls == [(1, ["first"]), (4, ["b", "c", "d"])]
        assert [a.tolist() for a in answers] == [
            [[2.0, 2.0]],
            [[4.0, 4.0]],
            [[6.0, 6.0], [6.0, 6.0]],
            [[8.0, 8.0]],
        ]

    asyncio.run(scenario())


def test_a_call_never_exceeds_max_images_and_the_delay_bounds_the_wait() -> None:
    async def scenario() -> None:
        predictor = RecordingPredictor()
        predictor.gate.clear()
        coalescer = Coalescer(predictor.send, max_images=2, max_delay_s=0.05)
        blocker = await _started(coalescer, (rows(9), "x"))
        waiting = await _started(coalescer, (rows(1), 1), (rows(2), 2), (rows(3), 3))
        # Two rows filled a call at once; the third row leaves when its delay runs out.
        await asyncio.sleep(0.2)
        assert [c[0] for c in predictor.calls] == [1, 2, 1]
        predictor.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*blocker, *waiting), 1.0)
        assert [a[0, 0] for a in answers] == [18.0, 2.0, 4.0, 6.0]

    asyncio.run(scenario())


def test_a_failed_call_fails_only_its_requests() -> None:
    async def scenario() -> None:
        predictor = RecordingPredictor()
        predictor.gate.clear()
        coalescer = Coalescer(predictor.send, max_images=8, max_delay_s=10.0)
        predictor.fail_next = True
        failing = await _started(coalescer, (rows(1), "f"))
        shared = await _started(coalescer, (rows(2), "g"), (rows(3), "h"))
        predictor.gate.set()
        results = await asyncio.gather(*failing, *shared, return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert [r[0, 0] for r in results[1:]] == [4.0, 6.0]  # type: ignore[index]
        again = await coalescer.submit(rows(5), "later")
        assert again[0, 0] == 10.0 and coalescer.in_flight == 0

    asyncio.run(scenario())


def test_a_caller_that_went_away_is_left_out() -> None:
    async def scenario() -> None:
        predictor = RecordingPredictor()
        predictor.gate.clear()
        coalescer = Coalescer(predictor.send, max_images=8, max_delay_s=10.0)
        blocker = await _started(coalescer, (rows(1), "x"))
        gone, kept = await _started(coalescer, (rows(2), "gone"), (rows(3), "kept"))
        gone.cancel()
        predictor.gate.set()
        assert (await asyncio.wait_for(kept, 1.0))[0, 0] == 6.0
        await asyncio.gather(*blocker)
        assert predictor.calls[-1] == (1, ["kept"])

    asyncio.run(scenario())


@pytest.mark.parametrize(("max_images", "delay"), [(0, 1.0), (4, -1.0)])
def test_settings_are_checked(max_images: int, delay: float) -> None:
    with pytest.raises(ValueError, match="max_images"):
        Coalescer(RecordingPredictor().send, max_images, delay)


def test_more_rows_than_a_call_holds_are_refused() -> None:
    async def scenario() -> None:
        coalescer = Coalescer(RecordingPredictor().send, max_images=2, max_delay_s=0.0)
        with pytest.raises(ValueError, match="3 rows, expected 1 to 2"):
            await coalescer.submit(rows(1, 3))

    asyncio.run(scenario())
