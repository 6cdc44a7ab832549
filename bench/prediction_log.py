"""The prediction log's cost in the benchmark (issue 22): served c16, V2 gRPC, single images,
through a transformer with the log on (a fresh database on a real PostgreSQL) against one with
it off, both in front of one predictor on the default engine for this CPU.

Both transformers run throughout and are loaded in alternating rounds (bench/alternating.py);
target: the log costs at most 5%. Beside it, what the log costs in CPU, which drift does not
blur: the transformer's CPU milliseconds per image with the log on and off, and PostgreSQL's
(all its processes) with it on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness.databases import fresh_postgresql_database
from harness.servers import process_cpu_seconds

from .alternating import CONCURRENCY, OnOff, Side, alternate, ms, start_in

DEFAULT_ROUNDS = 5  # the ratio is a few percent: more rounds than the other stages
TARGET_RATIO = 0.95  # on / off: the log costs at most 5% of throughput
LOG_ENV = "PREDICTION_LOG_DB_URL"


@dataclass(frozen=True)
class LogCost(OnOff):
    """Throughput with the log off and on, per round, and what the log wrote."""

    rows_written: float = 0.0
    rows_dropped: float = 0.0
    # CPU ms per image in the windows: the transformer's with the log off and on, PostgreSQL's
    cpu_ms: dict[str, float | None] = field(default_factory=dict)

    def met(self) -> bool:
        return self.ratio >= TARGET_RATIO and self.rows_dropped == 0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.rounds_json(),
            "target": TARGET_RATIO,
            "met": self.met(),
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "cpu_ms_per_image": self.cpu_ms,
        }

    def format_table(self) -> str:
        return "\n".join(
            [
                "",
                f"Prediction log (PostgreSQL): served c{CONCURRENCY} V2 gRPC, {self.engine}, "
                f"rounds alternated (target: on/off >= {TARGET_RATIO})",
                *self.rounds_lines(),
                f"  on/off (median of the rounds): {self.ratio:.3f}  rows written "
                f"{self.rows_written:.0f}, dropped {self.rows_dropped:.0f}  "
                f"{'met' if self.met() else 'MISSED'}",
                "  CPU ms per image: transformer off "
                + ", on ".join(
                    ms(self.cpu_ms.get(k)) for k in ("transformer_off", "transformer_on")
                )
                + f"; PostgreSQL {ms(self.cpu_ms.get('postgresql'))}",
            ]
        )


def measure(
    engine: str,
    model_dir: Path,
    model_name: str,
    admin_url: str,
    images: Sequence[bytes],
    log_dir: Path,
    predictor_args: Sequence[str],
    transformer_args: Sequence[str],
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    rounds: int = DEFAULT_ROUNDS,
) -> LogCost:
    """Run the stage; raises RuntimeError or TimeoutError when a server does not start."""
    print("[bench] prediction log: on against off", file=sys.stderr, flush=True)
    common = ["--model_dir", str(model_dir), "--model_name", model_name]
    with fresh_postgresql_database(admin_url, "bench_log") as url, ExitStack() as stack:
        predictor = start_in(
            stack, "log-predictor", "predictor", [*common, *predictor_args], log_dir
        )
        forward = [*common, "--predictor_host", predictor.grpc_target, *transformer_args]
        off = start_in(stack, "log-off-transformer", "transformer", forward, log_dir)
        on = start_in(
            stack,
            "log-on-transformer",
            "transformer",
            forward,
            log_dir,
            env={**os.environ, LOG_ENV: url},
        )
        result = alternate(
            {
                "off": Side(off, {"transformer": off.cpu_seconds}),
                "on": Side(on, {"transformer": on.cpu_seconds, "postgresql": postgres_cpu_seconds}),
            },
            model_name,
            images,
            warmup_s,
            duration_s,
            max_requests,
            rounds,
        )
        samples = _samples(on.metrics())
        cpu = result.cpu_ms_per_image
        return LogCost(
            engine,
            result.images_per_s["off"],
            result.images_per_s["on"],
            samples.get("transformer_prediction_log_rows_written_total", 0.0),
            samples.get("transformer_prediction_log_rows_dropped_total", 0.0),
            {
                "transformer_off": cpu["off"]["transformer"],
                "transformer_on": cpu["on"]["transformer"],
                "postgresql": cpu["on"]["postgresql"],
            },
        )


def postgres_cpu_seconds() -> float:
    """User + system CPU of every process named postgres on this machine (the server and its
    backends; the log's connection is one of them)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
        except OSError:
            continue
        total += process_cpu_seconds(int(entry.name)) or 0.0
    return total


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
