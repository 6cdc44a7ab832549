"""Two configurations of the served pipeline measured in alternating rounds: the cost of a
feature (the prediction log, tracing) as the ratio of its throughput on to off.

Both pipelines run throughout; each round loads one, then the other (off, on; then on, off; ...)
with closed-loop V2 gRPC single-image clients while the other idles. This machine's speed
drifts by 10-20% over minutes, so the ratio is the median of each round's adjacent on/off
ratios. Beside it, the CPU each side's processes spent per image, which drift does not blur.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.servers import ServerProcess, start

from .stats import V2_GRPC, percentile

CONCURRENCY = 16


@dataclass(frozen=True)
class Side:
    """One configuration: the server the clients call and the CPU counters (seconds) whose use
    is charged to it: its processes, and whatever else works for it (a database)."""

    entry: ServerProcess
    cpu: Mapping[str, Callable[[], float | None]]


@dataclass
class Rounds:
    """Images per second of each round and CPU milliseconds per image, per side."""

    images_per_s: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms_per_image: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def ratio(self, on: str = "on", off: str = "off") -> float:
        """The median of the rounds' on/off ratios (each round's two cells are adjacent)."""
        pairs = zip(self.images_per_s[on], self.images_per_s[off], strict=True)
        return percentile([a / b for a, b in pairs], 50)


def alternate(
    sides: Mapping[str, Side],
    model_name: str,
    images: Sequence[bytes],
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    rounds: int,
) -> Rounds:
    """Load each side in turn for `rounds` rounds (the order reversed every other round)."""
    # Here, not at the top: tritonclient.grpc and kserve cannot share a process (the report
    # parts of the stages are tested beside kserve).
    from .load import client_for, closed_loop

    names = list(sides)
    result = Rounds({name: [] for name in names})
    spent = {name: dict.fromkeys(sides[name].cpu, 0.0) for name in names}
    done = dict.fromkeys(names, 0)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            side = sides[name]
            client = client_for(V2_GRPC, side.entry.url, side.entry.grpc_target, model_name, images)

            def probe(side: Side = side) -> dict[str, float]:
                return {key: read() or 0.0 for key, read in side.cpu.items()}

            run = closed_loop(
                client, len(images), CONCURRENCY, warmup_s, duration_s, max_requests, probe
            )
            ok = [s for s in run.in_window() if s.ok]
            result.images_per_s[name].append(len(ok) / run.window_seconds())
            done[name] += len(ok)
            for key in side.cpu:
                spent[name][key] += run.after[key] - run.before[key]
    result.cpu_ms_per_image = {
        name: {
            key: round(1000 * seconds / done[name], 3) if done[name] else None
            for key, seconds in spent[name].items()
        }
        for name in names
    }
    return result


def ms(value: float | None) -> str:
    """A CPU figure for a table."""
    return "-" if value is None else f"{value:.2f}"


@dataclass(frozen=True)
class OnOff:
    """A stage's result: throughput of each round with the feature off and on."""

    engine: str
    off_images_per_s: list[float]
    on_images_per_s: list[float]

    @property
    def ratio(self) -> float:
        """The median of the rounds' on/off ratios (each round's two cells are adjacent)."""
        pairs = zip(self.on_images_per_s, self.off_images_per_s, strict=True)
        return percentile([on / off for on, off in pairs], 50)

    def rounds_json(self) -> dict[str, Any]:
        """The fields every such stage reports."""
        return {
            "engine": self.engine,
            "concurrency": CONCURRENCY,
            "protocol": V2_GRPC,
            "off_images_per_s": [round(v, 1) for v in self.off_images_per_s],
            "on_images_per_s": [round(v, 1) for v in self.on_images_per_s],
            "ratio_on_over_off": round(self.ratio, 3),
        }

    def rounds_lines(self) -> list[str]:
        """The table lines every such stage prints."""
        return [
            "  off images/s: " + " ".join(f"{v:.1f}" for v in self.off_images_per_s),
            "  on  images/s: " + " ".join(f"{v:.1f}" for v in self.on_images_per_s),
        ]


def start_in(
    stack: ExitStack,
    name: str,
    module: str,
    args: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start a server, stopped when `stack` closes; returns once it is ready."""
    server = start(name, module, args, log_dir, env=env)
    stack.callback(server.stop)
    server.wait_ready()
    return server
