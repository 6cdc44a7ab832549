"""Overload in the benchmark: 256 closed-loop V1 clients (harness/overload.py, a process of its
own) against the served pipeline with its default bounds, on each engine given.

The same load and bounds as tests/test_overload.py, reported with the rest of the run: what was
served and refused, and how fast each (accepted p99 <= 2.5 s, refusals p99 <= 250 ms).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.overload import in_another_process
from harness.servers import Pipeline, PipelineSpec, running
from harness.v1 import v1_body

CLIENTS = 256
SECONDS = 10.0
GRACE_S = 30.0
ACCEPTED_P99_TARGET_MS = 2500.0
REFUSED_P99_TARGET_MS = 250.0


@dataclass(frozen=True)
class OverloadRun:
    """One engine's overload: harness.overload's summary."""

    engine: str
    summary: dict[str, Any]

    def met(self) -> bool:
        """Whether every answer was a 200 or a refusal, and both p99 targets held."""
        statuses = set(self.summary["statuses"])
        accepted = self.summary["accepted_p99_ms"]
        refused = self.summary["refused_p99_ms"]
        return (
            statuses <= {"200", "503", "429"}
            and accepted is not None
            and accepted <= ACCEPTED_P99_TARGET_MS
            and (refused is None or refused <= REFUSED_P99_TARGET_MS)
        )


def load(pipeline: Pipeline, model_name: str, image: bytes, work_dir: Path) -> dict[str, Any]:
    """Run harness.overload against `pipeline`'s transformer; its summary."""
    url = f"{pipeline.transformer.url}/v1/models/{model_name}:predict"
    return in_another_process(url, v1_body(image), work_dir, CLIENTS, SECONDS, GRACE_S)


def measure(
    engines: list[tuple[str, Path]],
    spec: PipelineSpec,
    model_name: str,
    image: bytes,
    work_dir: Path,
    log_dir: Path,
) -> list[OverloadRun]:
    """Overload each (engine name, model repository) in turn, nothing else running."""
    runs = []
    for engine, model_dir in engines:
        print(f"[bench] overload: {CLIENTS} clients, {engine}", file=sys.stderr, flush=True)
        with running(spec, model_dir, model_name, log_dir) as pipeline:
            slug = engine.lower().replace(" ", "-")
            runs.append(OverloadRun(engine, load(pipeline, model_name, image, work_dir / slug)))
    return runs


def to_json(runs: list[OverloadRun]) -> dict[str, Any]:
    """The report's part."""
    return {
        "clients": CLIENTS,
        "seconds": SECONDS,
        "targets_ms": {
            "accepted_p99": ACCEPTED_P99_TARGET_MS,
            "refused_p99": REFUSED_P99_TARGET_MS,
        },
        "runs": [{"engine": r.engine, "met": r.met(), **r.summary} for r in runs],
    }


def format_table(runs: list[OverloadRun]) -> str:
    """A table: per engine, served and refused, their latency, and whether the targets held."""
    lines = [
        f"Overload: {CLIENTS} closed-loop V1 clients for {SECONDS:g} s through the transformer, "
        "default bounds (targets: accepted p99 <= 2.5 s, refusals p99 <= 250 ms)",
        f"{'engine':<16} {'200':>6} {'503':>6} {'other':>6} {'ok/s':>6} "
        f"{'acc p50':>8} {'acc p99':>8} {'ref p50':>8} {'ref p99':>8}  targets",
    ]
    for run in runs:
        s = run.summary
        statuses = s["statuses"]
        other = sum(n for k, n in statuses.items() if k not in ("200", "503"))
        lines.append(
            f"{run.engine:<16} {statuses.get('200', 0):>6} {statuses.get('503', 0):>6} "
            f"{other:>6} {s['accepted_per_s']:>6.1f} {_ms(s['accepted_p50_ms'])} "
            f"{_ms(s['accepted_p99_ms'])} {_ms(s['refused_p50_ms'])} "
            f"{_ms(s['refused_p99_ms'])}  {'met' if run.met() else 'MISSED'}"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{'-':>8}" if value is None else f"{value:>6.0f}ms"
