"""Waiting on observed state: poll the InferenceService until it matches an Expectation, fails,
or the deadline passes. One progress line goes to stderr each time the observed state changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from rollout.errors import RolloutFailed, WaitTimeout
from rollout.kube import ISVC, KserveApi
from rollout.plans import Expectation
from rollout.state import Snapshot, snapshot


@dataclass(frozen=True)
class Verdict:
    """done: the expectation holds; failure: why it never will ("" if it may); state: a summary."""

    done: bool
    failure: str
    state: str


def judge(snap: Snapshot, generation: int, expect: Expectation) -> Verdict:
    """Compare one snapshot against the generation written and the expected traffic."""
    # The object's own generation may be newer than the one written if someone else changed it.
    target = max(generation, snap.generation)
    observed = snap.observed_generation
    ready = snap.condition("Ready")
    parts = [f"generation {target} observed {observed}"]
    parts.append(f"Ready={ready.status}" + (f" ({ready.reason})" if ready.reason else ""))
    unmet = []
    for component, want in sorted(expect.latest_percent.items()):
        got = snap.latest_percent(component)
        parts.append(f"{component} latest={_pct(got)} (want {want}%)")
        comp = snap.components.get(component)
        if got != want or (comp and comp.latest_created != comp.latest_ready):
            unmet.append(component)
    if expect.canaries is not None:
        seen = {c.name: c for c in snap.canaries}
        parts.append(
            "canaries "
            + (", ".join(f"{c.name}={c.percent}% ready={c.ready}" for c in snap.canaries) or "none")
            + f" (want {', '.join(f'{n}={p}%' for n, p in expect.canaries.items()) or 'none'})"
        )
        matches = seen.keys() == expect.canaries.keys() and all(
            seen[n].ready and seen[n].percent == p for n, p in expect.canaries.items()
        )
        if not matches:
            unmet.append("canaries")
    state = ", ".join(parts)
    if observed is None or observed < target:
        return Verdict(done=False, failure="", state=state)
    failure = snap.failure()
    return Verdict(done=not failure and snap.ready and not unmet, failure=failure, state=state)


def wait_for(
    api: KserveApi,
    namespace: str,
    name: str,
    generation: int,
    expect: Expectation,
    timeout_s: float,
    poll_interval_s: float,
    progress: TextIO,
    clock: Callable[[], float] = time.monotonic,
) -> Snapshot:
    """Poll until `expect` is observed at `generation`; returns the final snapshot.

    Raises RolloutFailed when the controller reports a terminal failure, WaitTimeout after
    `timeout_s` with the last observed state.
    """
    deadline = clock() + timeout_s
    last = ""
    while True:
        snap = snapshot(api.get_required(ISVC, namespace, name))
        verdict = judge(snap, generation, expect)
        if verdict.state != last:
            print(f"waiting: {verdict.state}", file=progress, flush=True)
            last = verdict.state
        if verdict.failure:
            raise RolloutFailed(f"{namespace}/{name} failed: {verdict.failure}")
        if verdict.done:
            return snap
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(
                f"timed out after {timeout_s:g}s waiting for {namespace}/{name}: {last}"
            )
        time.sleep(min(poll_interval_s, remaining))


def _pct(value: int | None) -> str:
    return "none" if value is None else f"{value}%"
