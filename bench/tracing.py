"""Tracing's cost in the benchmark (issue 24): served c16, V2 gRPC, single images, through a
predictor and transformer pair with OpenTelemetry on (sampling 1.0, every span exported over
OTLP/gRPC with the SDK's default batching) against an identical pair with it off, both on the
default engine for this CPU.

The spans go to a real OTLP receiver (harness/otlp.py) in a process of its own, as a collector
elsewhere in the cluster would take them; its CPU is reported, not charged to the servers. The
two pairs are loaded in alternating rounds (bench/alternating.py); target: on/off >= 0.95.
Tracing off is the same code with no exporter configured: every hook checks one variable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.otlp import received_spans, receiver_process
from harness.servers import process_cpu_seconds

from .alternating import CONCURRENCY, OnOff, Side, alternate, ms, start_in

DEFAULT_ROUNDS = 5
TARGET_RATIO = 0.95  # on / off: tracing everything costs at most 5% of throughput
SPANS_PER_REQUEST = 7  # transformer: server, preprocess, call, postprocess; predictor: 3


@dataclass(frozen=True)
class TracingCost(OnOff):
    """Throughput with tracing off and on, per round, and the spans that arrived."""

    spans_received: int | None = None
    # CPU ms per image: each server with tracing off and on, and the receiver's
    cpu_ms: dict[str, float | None] = field(default_factory=dict)

    def met(self) -> bool:
        return self.ratio >= TARGET_RATIO

    def to_json(self) -> dict[str, Any]:
        return {
            **self.rounds_json(),
            "sampling": 1.0,
            "target": TARGET_RATIO,
            "met": self.met(),
            "spans_received": self.spans_received,
            "cpu_ms_per_image": self.cpu_ms,
        }

    def format_table(self) -> str:
        cpu = self.cpu_ms
        return "\n".join(
            [
                "",
                f"Tracing (OpenTelemetry, sampling 1.0, OTLP/gRPC): served c{CONCURRENCY} V2 gRPC, "
                f"{self.engine}, rounds alternated (target: on/off >= {TARGET_RATIO})",
                *self.rounds_lines(),
                f"  on/off (median of the rounds): {self.ratio:.3f}  spans received "
                f"{self.spans_received}  {'met' if self.met() else 'MISSED'}",
                f"  CPU ms per image: transformer off {ms(cpu.get('transformer_off'))}, on "
                f"{ms(cpu.get('transformer_on'))}; predictor off {ms(cpu.get('predictor_off'))}, "
                f"on {ms(cpu.get('predictor_on'))}; receiver {ms(cpu.get('receiver'))}",
            ]
        )


def measure(
    engine: str,
    model_dir: Path,
    model_name: str,
    images: Sequence[bytes],
    log_dir: Path,
    predictor_args: Sequence[str],
    transformer_args: Sequence[str],
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    rounds: int = DEFAULT_ROUNDS,
) -> TracingCost:
    """Run the stage; raises RuntimeError or TimeoutError when a server does not start."""
    print("[bench] tracing: on against off", file=sys.stderr, flush=True)
    common = ["--model_dir", str(model_dir), "--model_name", model_name]
    with receiver_process(log_dir) as (endpoint, receiver), ExitStack() as stack:
        traced = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
        }
        untraced = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        pairs = {}
        for name, env in (("off", untraced), ("on", traced)):
            predictor = start_in(
                stack, f"tracing-{name}-predictor", "predictor",
                [*common, *predictor_args], log_dir, env,
            )  # fmt: skip
            transformer = start_in(
                stack, f"tracing-{name}-transformer", "transformer",
                [*common, "--predictor_host", predictor.grpc_target, *transformer_args],
                log_dir, env,
            )  # fmt: skip
            pairs[name] = (predictor, transformer)

        def receiver_cpu() -> float | None:
            return process_cpu_seconds(receiver.pid)

        sides = {}
        for name, (predictor, transformer) in pairs.items():
            counters = {"transformer": transformer.cpu_seconds, "predictor": predictor.cpu_seconds}
            if name == "on":
                counters["receiver"] = receiver_cpu
            sides[name] = Side(transformer, counters)
        result = alternate(sides, model_name, images, warmup_s, duration_s, max_requests, rounds)
        stack.close()  # the servers export what they hold as they stop
    cpu = result.cpu_ms_per_image
    return TracingCost(
        engine,
        result.images_per_s["off"],
        result.images_per_s["on"],
        received_spans(log_dir),
        {
            "transformer_off": cpu["off"]["transformer"],
            "transformer_on": cpu["on"]["transformer"],
            "predictor_off": cpu["off"]["predictor"],
            "predictor_on": cpu["on"]["predictor"],
            "receiver": cpu["on"]["receiver"],
        },
    )
