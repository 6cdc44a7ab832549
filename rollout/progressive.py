"""A canary stepped through a traffic schedule, each step judged by `rollout.analysis`.

At each step the canary's share is set, then every `interval` the step so far is judged (one
interval, then two if the first had too little traffic, and so on): a failing check ends the
analysis at once (roll back); a passing evaluation moves to the next step; an evaluation
without enough traffic waits one more interval, up to `waits` intervals per step, then gives
up as inconclusive (roll back). Every step passed: promote. This module
decides and reports; the caller's callables change traffic and read Prometheus, so the loop is
the same for the CLI and for a test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TextIO

from rollout.analysis import Outcome, Verdict

MAX_STEPS = 20


class Decision(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"  # a check failed
    INCONCLUSIVE = "inconclusive"  # not enough traffic to judge: rolled back too


@dataclass(frozen=True)
class Schedule:
    """The canary's traffic percent at each step, the window judged, the windows a step may
    wait for enough traffic."""

    steps: tuple[int, ...]
    interval_s: int
    waits: int = 3

    def __post_init__(self) -> None:
        if not self.steps or len(self.steps) > MAX_STEPS:
            raise ValueError(f"expected 1 to {MAX_STEPS} steps, got {len(self.steps)}")
        if any(not 0 < s < 100 for s in self.steps):
            raise ValueError(f"each step must be a percent between 1 and 99, got {self.steps}")
        if list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must increase, got {','.join(map(str, self.steps))}")
        if self.interval_s < 1 or self.waits < 1:
            raise ValueError("the interval must be at least 1 s and waits at least 1")


@dataclass(frozen=True)
class Result:
    """How the analysis ended, at which step, and why (for people)."""

    decision: Decision
    step: int  # 1-based: the step that decided (the last one when promoted)
    reason: str


Evaluate = Callable[[int, int], Verdict]  # (window seconds, seconds since the analysis began)


class Reporter:
    """Prints each evaluation and the decision: aligned text, or one JSON object per line."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def evaluation(
        self, schedule: Schedule, step: int, attempt: int, at: float, verdict: Verdict
    ) -> None:
        percent = schedule.steps[step - 1]
        if self.as_json:
            self._line(
                {
                    "event": "evaluation",
                    "step": step,
                    "steps": len(schedule.steps),
                    "percent": percent,
                    "attempt": attempt,
                    "window_s": attempt * schedule.interval_s,
                    "at": round(at, 3),
                    **verdict.as_dict(),
                }
            )
            return
        print(
            f"step {step}/{len(schedule.steps)}: canary at {percent}%, last "
            f"{attempt * schedule.interval_s} s (window {attempt} of at most {schedule.waits}), "
            f"canary version {verdict.canary.version} against stable {verdict.stable.version}",
            file=self.out,
        )
        self._checks(verdict)

    def verdict(self, window_s: int, at: float, verdict: Verdict) -> None:
        """One evaluation outside a schedule (`analyze`)."""
        if self.as_json:
            self._line(
                {
                    "event": "evaluation",
                    "window_s": window_s,
                    "at": round(at, 3),
                    **verdict.as_dict(),
                }
            )
            return
        print(
            f"last {window_s} s: canary version {verdict.canary.version} against stable "
            f"{verdict.stable.version}",
            file=self.out,
        )
        self._checks(verdict)

    def _checks(self, verdict: Verdict) -> None:
        width = max(len(c.name) for c in verdict.checks)
        for check in verdict.checks:
            print(
                f"  {check.name:<{width}}  {check.outcome.value:<4}  {check.detail}", file=self.out
            )
        print(f"  => {verdict.outcome.value}", file=self.out, flush=True)

    def dry_run(self, schedule: Schedule, canary: str, stable: str, prometheus: str) -> None:
        """What a --dry-run would go on to do."""
        if self.as_json:
            self._line(
                {
                    "event": "dry-run",
                    "steps": list(schedule.steps),
                    "interval_s": schedule.interval_s,
                    "canary": canary,
                    "stable": stable,
                    "prometheus": prometheus,
                }
            )
            return
        steps = ", ".join(f"{p}%" for p in schedule.steps)
        print(
            f"dry run: then step through {steps}, judging every {schedule.interval_s} s "
            f"(canary model_version {canary} against {stable} at {prometheus})",
            file=self.out,
        )

    def decision(self, result: Result) -> None:
        if self.as_json:
            self._line({"event": "decision", **_result_dict(result)})
            return
        print(f"decision: {result.decision.value}: {result.reason}", file=self.out, flush=True)

    def _line(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, sort_keys=True), file=self.out, flush=True)


def run(
    schedule: Schedule,
    set_percent: Callable[[int], None],
    evaluate: Evaluate,
    reporter: Reporter,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Result:
    """Step the canary through `schedule` (the first step's traffic is already set when this
    is called); returns the decision, which the caller carries out."""
    started = clock()
    judged: set[str] = set()  # checks that counted at least once (not skipped)
    for index, percent in enumerate(schedule.steps):
        step = index + 1
        if index:
            set_percent(percent)
        for attempt in range(1, schedule.waits + 1):
            sleep(schedule.interval_s)
            now = clock()
            window = attempt * schedule.interval_s  # the whole step so far
            verdict = evaluate(window, max(window, int(now - started)))
            reporter.evaluation(schedule, step, attempt, now, verdict)
            judged |= {c.name for c in verdict.checks if c.outcome is not Outcome.SKIP}
            if verdict.outcome is Outcome.FAIL:
                failed = [c for c in verdict.checks if c.outcome is Outcome.FAIL]
                return Result(
                    Decision.ROLLBACK,
                    step,
                    f"{', '.join(c.name for c in failed)} failed at step {step} ({percent}%): "
                    + "; ".join(c.detail for c in failed),
                )
            if verdict.outcome is Outcome.PASS:
                break
        else:
            waiting = [c for c in verdict.checks if c.outcome is Outcome.WAIT]
            return Result(
                Decision.INCONCLUSIVE,
                step,
                f"not enough traffic at step {step} ({percent}%) after {schedule.waits} "
                f"windows of {schedule.interval_s} s: "
                + "; ".join(f"{c.name}: {c.detail}" for c in waiting),
            )
    never = [c.name for c in verdict.checks if c.name not in judged]
    return Result(
        Decision.PROMOTE,
        len(schedule.steps),
        f"every step passed ({', '.join(f'{p}%' for p in schedule.steps)})"
        + (f"; never judged (too few samples): {', '.join(never)}" if never else ""),
    )


def _result_dict(result: Result) -> dict[str, Any]:
    return {"decision": result.decision.value, "step": result.step, "reason": result.reason}
