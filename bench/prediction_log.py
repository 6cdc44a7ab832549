"""The prediction log's cost in the benchmark (issue 22): served c16, V2 gRPC, single images,
through a transformer with the log on (a fresh database on a real PostgreSQL) against one with
it off, both in front of one predictor on the default engine for this CPU.

Both transformers run throughout; the cells alternate (off, on, then on, off, ...) for `rounds`
rounds and the one not under load idles. This machine's speed drifts by 10-20% over minutes, so
the ratio is the median of each round's adjacent on/off ratios; target: the log costs at most
5%. Beside it, what the log costs in CPU, which drift does not blur: the transformer's CPU
milliseconds per image with the log on and off, and PostgreSQL's (all its processes) with it on.
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
from harness.servers import ServerProcess, process_cpu_seconds, start

from .stats import V2_GRPC, percentile

CONCURRENCY = 16
DEFAULT_ROUNDS = 5  # the ratio is a few percent: more rounds than the other stages
TARGET_RATIO = 0.95  # on / off: the log costs at most 5% of throughput
LOG_ENV = "PREDICTION_LOG_DB_URL"


@dataclass(frozen=True)
class LogCost:
    """Throughput with the log off and on, per round, and what the log wrote."""

    engine: str
    off_images_per_s: list[float]
    on_images_per_s: list[float]
    rows_written: float
    rows_dropped: float
    # CPU ms per image in the windows: the transformer's with the log off and on, PostgreSQL's
    cpu_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """The median of the rounds' on/off ratios (each round's two cells are adjacent)."""
        pairs = zip(self.on_images_per_s, self.off_images_per_s, strict=True)
        return percentile([on / off for on, off in pairs], 50)

    def met(self) -> bool:
        return self.ratio >= TARGET_RATIO and self.rows_dropped == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "concurrency": CONCURRENCY,
            "protocol": V2_GRPC,
            "off_images_per_s": [round(v, 1) for v in self.off_images_per_s],
            "on_images_per_s": [round(v, 1) for v in self.on_images_per_s],
            "ratio_on_over_off": round(self.ratio, 3),
            "target": TARGET_RATIO,
            "met": self.met(),
            "rows_written": self.rows_written,
            "rows_dropped": self.rows_dropped,
            "cpu_ms_per_image": self.cpu_ms,
        }

    def format_table(self) -> str:
        off = " ".join(f"{v:.1f}" for v in self.off_images_per_s)
        on = " ".join(f"{v:.1f}" for v in self.on_images_per_s)
        return "\n".join(
            [
                "",
                f"Prediction log (PostgreSQL): served c{CONCURRENCY} V2 gRPC, {self.engine}, "
                f"rounds alternated (target: on/off >= {TARGET_RATIO})",
                f"  off images/s: {off}",
                f"  on  images/s: {on}",
                f"  on/off (median of the rounds): {self.ratio:.3f}  rows written "
                f"{self.rows_written:.0f}, dropped {self.rows_dropped:.0f}  "
                f"{'met' if self.met() else 'MISSED'}",
                "  CPU ms per image: transformer off "
                + ", on ".join(
                    _ms(self.cpu_ms.get(k)) for k in ("transformer_off", "transformer_on")
                )
                + f"; PostgreSQL {_ms(self.cpu_ms.get('postgresql'))}",
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
    # Here, not at the top: tritonclient.grpc and kserve cannot share a process (the report
    # part above is tested beside kserve).
    from .load import client_for, closed_loop

    print("[bench] prediction log: on against off", file=sys.stderr, flush=True)
    common = ["--model_dir", str(model_dir), "--model_name", model_name]
    with fresh_postgresql_database(admin_url, "bench_log") as url, ExitStack() as stack:
        predictor = _started(
            stack, "log-predictor", "predictor", [*common, *predictor_args], log_dir
        )
        forward = [*common, "--predictor_host", predictor.grpc_target, *transformer_args]
        off = _started(stack, "log-off-transformer", "transformer", forward, log_dir)
        on = _started(
            stack,
            "log-on-transformer",
            "transformer",
            forward,
            log_dir,
            env={**os.environ, LOG_ENV: url},
        )
        results: dict[str, list[float]] = {"off": [], "on": []}
        cpu = {"transformer_off": 0.0, "transformer_on": 0.0, "postgresql": 0.0}
        images_done = {"off": 0, "on": 0}
        for round_ in range(rounds):
            order = [("off", off), ("on", on)] if round_ % 2 == 0 else [("on", on), ("off", off)]
            for name, server in order:
                client = client_for(V2_GRPC, server.url, server.grpc_target, model_name, images)

                def probe(server: ServerProcess = server) -> tuple[float, float]:
                    return server.cpu_seconds() or 0.0, postgres_cpu_seconds()

                run = closed_loop(
                    client, len(images), CONCURRENCY, warmup_s, duration_s, max_requests, probe
                )
                done = [s for s in run.in_window() if s.ok]
                results[name].append(len(done) / run.window_seconds())
                images_done[name] += len(done)
                cpu[f"transformer_{name}"] += run.after[0] - run.before[0]
                if name == "on":
                    cpu["postgresql"] += run.after[1] - run.before[1]
        samples = _samples(on.metrics())
        return LogCost(
            engine,
            results["off"],
            results["on"],
            samples.get("transformer_prediction_log_rows_written_total", 0.0),
            samples.get("transformer_prediction_log_rows_dropped_total", 0.0),
            {
                "transformer_off": _per_image(cpu["transformer_off"], images_done["off"]),
                "transformer_on": _per_image(cpu["transformer_on"], images_done["on"]),
                "postgresql": _per_image(cpu["postgresql"], images_done["on"]),
            },
        )


def _started(
    stack: ExitStack,
    name: str,
    module: str,
    args: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    server = start(name, module, args, log_dir, env=env)
    stack.callback(server.stop)
    server.wait_ready()
    return server


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


def _per_image(seconds: float, images: int) -> float | None:
    return round(1000 * seconds / images, 3) if images else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
