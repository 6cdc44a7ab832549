"""Overload measured in seconds (common.pacing), in both places it bounds: the transformer's
requests in flight (common.admission.InflightLimit) and the predictor's batch queue.

The rates here are recorded by the tests, never measured from this CPU: the bound must mean
the same time whatever the machine, and these tests check the arithmetic that makes it so.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_batcher import ArrayBatcher, RecordingModel, held_pass, run

from common import pacing
from common.admission import InflightLimit, Overloaded
from predictor.batcher import AdaptiveBatcher, QueueFull
from runtime.worker import ForwardWorker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_is_units_per_busy_second_and_forgets_by_half_lives() -> None:
    meter = pacing.Throughput(half_life_s=2.0)
    assert meter.per_second() is None
    meter.record(4, 0.01)  # too little busy time and too few units to trust
    assert meter.per_second() is None
    meter.record(96, 0.99)
    kept = 2 ** (-0.99 / 2.0)
    units, busy = 4 * kept + 96, 0.01 * kept + 0.99
    assert meter.per_second() == pytest.approx(units / busy, rel=1e-6)
    # Two half-lives of busy time at 10/s: what came before weighs a quarter of what it did.
    for _ in range(4):
        meter.record(10, 1.0)
    assert meter.per_second() == pytest.approx(
        (units * 0.25 + 10 * (1 + 0.5 + 0.5**1.5 + 0.5**0.5))
        / (busy * 0.25 + (1 + 0.5 + 0.5**1.5 + 0.5**0.5)),
        rel=1e-6,
    )
    assert meter.seconds_for(30) == pytest.approx(30 / meter.per_second(), rel=1e-6)  # type: ignore[operator]
    with pytest.raises(ValueError, match="must not be negative"):
        meter.record(-1, 1.0)


def test_a_stall_counts_for_at_most_max_record_seconds() -> None:
    meter = pacing.Throughput(half_life_s=2.0)
    meter.record(100, 1.0)
    meter.record(1, 30.0)  # one pass held for 30 s
    kept = 2 ** (-pacing.MAX_RECORD_S / 2.0)
    assert meter.per_second() == pytest.approx(
        (100 * kept + 1) / (1.0 * kept + pacing.MAX_RECORD_S), rel=1e-6
    )


def test_busy_clock_counts_overlapping_work_once_and_idle_time_not_at_all() -> None:
    clock = FakeClock()
    busy = pacing.BusyClock(clock)
    busy.start()
    clock.now += 1.0
    busy.start()  # overlaps the first
    clock.now += 1.0
    assert busy.finish() == pytest.approx(2.0)
    clock.now += 0.5
    assert busy.finish() == pytest.approx(0.5)
    assert busy.active == 0
    clock.now += 60.0  # idle: not busy time
    busy.start()
    clock.now += 0.25
    assert busy.finish() == pytest.approx(0.25)


def test_wait_target_refuses_past_the_target_and_says_what_it_measured() -> None:
    meter = pacing.Throughput()
    meter.record(50, 1.0)  # 50 units/s
    target = pacing.WaitTarget(1.0, "--max_expected_wait_seconds", "images")
    assert target.refusal(49, 1, meter) is None  # exactly 1 s
    assert target.refusal(0, 500, meter) is None  # alone: always let in, whatever its size
    why = target.refusal(52, 8, meter)
    assert why is not None
    for part in ("1.20 s", "60 images ahead", "50.0 images/s", "1 s target", "--max_expected"):
        assert part in why
    assert pacing.WaitTarget(None, "--f", "images").refusal(10_000, 1, meter) is None


def test_before_any_rate_is_known_a_cold_start_bound_applies() -> None:
    target = pacing.target(1.0, "requests")
    fresh = pacing.Throughput()
    assert target.refusal(pacing.COLD_START_UNITS - 1, 1, fresh) is None
    why = target.refusal(pacing.COLD_START_UNITS, 1, fresh)
    assert why is not None and "before this server has measured its throughput" in why
    assert pacing.target(0.0, "requests").target_s is None  # 0: no time bound at all
    assert pacing.target(1.0, "images", 64).refusal(32, 32, fresh) is None  # its own cold start


def test_inflight_limit_refuses_by_expected_wait_and_by_count() -> None:
    limit = InflightLimit(100, pacing.target(0.5, "requests"))
    limit.throughput.record(20, 1.0)  # 20 requests/s: 10 in flight is 0.5 s
    for _ in range(9):
        limit.acquire()
    assert limit.overloaded() is None  # the 10th would wait 0.5 s
    limit.acquire()
    with pytest.raises(Overloaded, match=r"expected wait 0\.55 s.*retry in 1 s"):
        limit.acquire()
    assert limit.current == 10
    for _ in range(10):
        limit.release()
    assert limit.current == 0
    counted = InflightLimit(1)
    counted.acquire()
    with pytest.raises(Overloaded, match="--max_inflight_requests 1"):
        counted.acquire()


def test_the_batch_queue_refuses_by_the_expected_wait_of_the_images_ahead() -> None:
    """A held pass of 1 image and 3 queued: at 10 images/s and a 0.5 s target, a request of 1
    more (5 images ahead, counting itself) is queued; the next one (6) is refused at once."""
    model = RecordingModel(held=True)
    inner = AdaptiveBatcher(
        ForwardWorker(lambda: model).run,
        1,
        0.0,
        max_queue_size=64,
        max_wait=pacing.target(0.5, "images"),
    )
    inner.throughput.record(10, 1.0)
    batcher = ArrayBatcher(inner)

    async def scenario() -> tuple[str, list[np.ndarray]]:
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 1), np.uint8)))
        await held_pass(model)
        queued = [asyncio.ensure_future(batcher.submit(np.zeros((1, 1), np.uint8))) for _ in "abcd"]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(np.zeros((1, 1), np.uint8))
        model.release.set()
        return str(refused.value), list(await asyncio.gather(running, *queued))

    why, served = run(scenario())
    batcher.close()
    assert "expected wait 0.60 s" in why and "6 images ahead" in why
    assert len(served) == 5
    # The passes just run were timed into the rate: it is no longer the 10/s recorded above.
    assert inner.throughput.per_second() != pytest.approx(10.0)
