"""Overload measured in seconds: the throughput a server showed recently, and the wait it implies.

A bound that counts requests or images means a different wait on every engine and CPU (64 images
are a second on one machine and a fifth of one on another). So both servers shed by time: the
work queued or in flight now, over the rate this process has completed work at recently, is the
wait a new request would see; past a target in seconds it is refused at once (503 + Retry-After,
by the caller), whatever the engine.

The rate is work done per second *of busy time* (time with any work in progress), so an idle
spell neither lowers it nor ages it: after a quiet hour the first burst meets the rate the last
busy seconds showed. It is an exponentially weighted average whose weights halve every
`HALF_LIFE_BUSY_S` of busy time, so it follows a change of load (batches growing under pressure)
within a few seconds. One stretch of busy time counts for at most `MAX_RECORD_S`: a stall (a
pass held up by CPU throttling, a paused process) says little about the next second, and at full
weight it would have the server refuse most work for seconds after it. Until `MIN_BUSY_S` of
work and `MIN_UNITS` units have been timed there is no estimate, and a new server admits at most
`COLD_START_UNITS` ahead (a slow start, as TCP's): a first burst of hundreds of requests must
not all be let in to wait behind each other before the server has learnt how fast it is.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

from .cli import non_negative_float

# Weights halve every this many seconds of busy time: long enough to average over many forward
# passes (tens of milliseconds each on a CPU), short enough to follow batches growing under a
# burst within a couple of seconds.
HALF_LIFE_BUSY_S = 2.0
# The most busy time one record counts for. Forward passes and requests of the models served
# here take milliseconds to a few hundred (a 32-image CPU pass); a longer one is a stall.
MAX_RECORD_S = 1.0
# Busy time and units timed before the rate is trusted: a few passes, not one outlier (a first
# pass that pays for lazy initialisation, say).
MIN_BUSY_S = 0.05
MIN_UNITS = 8
# Work admitted ahead of a request before any rate is known (the transformer's requests; the
# predictor allows two of its largest batches instead): enough for the first estimate to come
# from concurrent work within a fraction of a second, and small enough that a first burst of
# 256 requests does not all wait behind each other (measured: a first burst's refusals then
# took ~150 ms, not ~250 ms with 32, as the admitted ones' decoding competes with them).
COLD_START_UNITS = 16


class Throughput:
    """Units of work (requests, images) completed per second of busy time, recently."""

    def __init__(self, half_life_s: float = HALF_LIFE_BUSY_S) -> None:
        self.half_life_s = half_life_s
        self._units = 0.0
        self._busy_s = 0.0

    def record(self, units: float, busy_s: float) -> None:
        """Add `units` completed over `busy_s` seconds of busy time (at most MAX_RECORD_S);
        older records weigh less by 2 ** (-busy_s / half_life_s). Raises ValueError for
        negative values."""
        if busy_s < 0 or units < 0:
            raise ValueError(f"units {units} and busy_s {busy_s} must not be negative")
        busy_s = min(busy_s, MAX_RECORD_S)
        keep = math.exp2(-busy_s / self.half_life_s)
        self._units = self._units * keep + units
        self._busy_s = self._busy_s * keep + busy_s

    def per_second(self) -> float | None:
        """The recent rate, or None while under MIN_BUSY_S of (weighted) busy time is known."""
        if self._busy_s < MIN_BUSY_S or self._units < MIN_UNITS:
            return None
        return self._units / self._busy_s

    def seconds_for(self, units: float) -> float | None:
        """How long `units` of work take at the recent rate (None: no estimate yet)."""
        rate = self.per_second()
        return None if rate is None else units / rate


class BusyClock:
    """Busy time of work that overlaps (requests in flight): the time during which at least one
    is in progress, handed out as each one finishes (`finish` returns the busy seconds since the
    previous start or finish)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._active = 0
        self._since = 0.0
        self._unclaimed = 0.0  # busy seconds not yet handed out by finish()

    @property
    def active(self) -> int:
        """Work in progress now."""
        return self._active

    def start(self) -> None:
        """One more in progress."""
        self._advance()
        self._active += 1

    def finish(self) -> float:
        """One fewer in progress; returns the busy seconds not yet handed out."""
        self._advance()
        self._active -= 1
        busy, self._unclaimed = self._unclaimed, 0.0
        return busy

    def _advance(self) -> None:
        now = self._clock()
        if self._active:
            self._unclaimed += now - self._since
        self._since = now


class WaitTarget:
    """The longest expected wait a server admits, in seconds, and the refusal past it."""

    def __init__(
        self, target_s: float | None, flag: str, unit: str, cold_start: float = COLD_START_UNITS
    ) -> None:
        """`target_s` None: no time bound. `flag` and `unit` ("requests", "images") name the
        setting and the work in the refusal's message; `cold_start` is how much may be ahead
        before any rate is known."""
        self.target_s = target_s
        self.flag = flag
        self.unit = unit
        self.cold_start = cold_start

    def refusal(self, queued: float, own: float, throughput: Throughput) -> str | None:
        """Why a request of `own` units behind `queued` ones is refused, or None when its wait is
        within the target (or there is no target, or nothing is queued: a request alone is
        always let in, whatever its size)."""
        if self.target_s is None or queued <= 0:
            return None
        ahead = queued + own
        rate = throughput.per_second()
        if rate is None:
            if ahead <= self.cold_start:
                return None
            return (
                f"{ahead:g} {self.unit} ahead before this server has measured its throughput "
                f"(at most {self.cold_start:g} until then; {self.flag} {self.target_s:g} s)"
            )
        wait = ahead / rate
        if wait <= self.target_s:
            return None
        return (
            f"expected wait {wait:.2f} s: {ahead:g} {self.unit} ahead at the {rate:.1f} "
            f"{self.unit}/s measured recently, over the {self.target_s:g} s target ({self.flag})"
        )


WAIT_FLAG = "--max_expected_wait_seconds"


def add_flag(parser: argparse.ArgumentParser, default_s: float, wait: str) -> None:
    """Add WAIT_FLAG (both components take it; `wait` says what is waited for)."""
    parser.add_argument(
        WAIT_FLAG,
        type=non_negative_float,
        default=default_s,
        help=f"Longest expected wait admitted: {wait}, at the throughput measured over the "
        "last few busy seconds. Past it requests are refused at once with 503 (Retry-After) / "
        "UNAVAILABLE. 0: no time bound (the count bound alone).",
    )


def target(seconds: float, unit: str, cold_start: float = COLD_START_UNITS) -> WaitTarget:
    """The WaitTarget a parsed WAIT_FLAG value gives (0: none)."""
    return WaitTarget(seconds or None, WAIT_FLAG, unit, cold_start)
