"""The ceiling benchmark's results: cells, ratios, targets, the printed table, JSON and plot.

Plain data and pure functions over it (no servers, no kserve), so the tests drive it with
made-up numbers. `bench.ceiling` fills it in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BARE, PREDICTOR = "bare grpc.aio", "predictor"
# The targets, as ratios within one run.
PREDICTOR_OVER_BARE_MIN = 0.8  # single-image requests, the most calls in flight
TRANSFORMER_OVER_DECODE_MIN = 0.8


@dataclass(frozen=True)
class CeilingCell:
    """One h2load run against one server: what it answered and what it cost."""

    server: str  # BARE, PREDICTOR or a transformer label
    images_per_request: int
    in_flight: int
    requests_per_s: float
    short_answers: int  # answers without the expected response (gRPC errors)
    failed: int  # HTTP/2 failures, errors and timeouts h2load counted
    server_cpu_ms_per_request: float | None  # all server processes behind the target
    client_cpu_ms_per_request: float | None
    cpu_ms_by_process: dict[str, float | None] = field(default_factory=dict)
    # Transformer cells: predictor calls per client request (below 1 when calls are shared).
    predictor_calls_per_request: float | None = None

    @property
    def images_per_s(self) -> float:
        """Images answered per second."""
        return self.requests_per_s * self.images_per_request

    @property
    def errors(self) -> int:
        """Every request that did not get a good answer."""
        return self.short_answers + self.failed


@dataclass(frozen=True)
class DecodeRate:
    """The transformer's decode-only rate in-process on the image the transformer cells send."""

    images_per_s: float
    cpu_ms_per_image: float
    threads: int
    single_decode_ms: float
    image: str
    image_bytes: int


@dataclass(frozen=True)
class Target:
    """One target of the issue, with what this run measured."""

    name: str
    value: float | None
    threshold: float

    @property
    def met(self) -> bool | None:
        """True/False, or None when the run did not measure it."""
        return None if self.value is None else self.value >= self.threshold


@dataclass
class CeilingReport:
    """Everything one ceiling run measured."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    cells: list[CeilingCell]
    decode: DecodeRate | None
    transformers: list[str] = field(default_factory=list)  # labels, in run order
    runtime_s: float | None = None

    def find(self, server: str, images: int, in_flight: int) -> CeilingCell | None:
        """The cell of that server, request size and concurrency, if measured."""
        for cell in self.cells:
            if (cell.server, cell.images_per_request, cell.in_flight) == (
                server,
                images,
                in_flight,
            ):
                return cell
        return None

    def in_flights(self) -> list[int]:
        """Every concurrency measured, ascending."""
        return sorted({c.in_flight for c in self.cells})

    def sizes(self) -> list[int]:
        """Every request size (images per request) the predictor and bare server got."""
        return sorted({c.images_per_request for c in self.cells if c.server in (BARE, PREDICTOR)})

    def predictor_over_bare(self, images: int, in_flight: int) -> float | None:
        """Predictor requests/s over the bare server's, same request size and concurrency."""
        ours, bare = self.find(PREDICTOR, images, in_flight), self.find(BARE, images, in_flight)
        if ours is None or bare is None:
            return None
        return _ratio(ours.requests_per_s, bare.requests_per_s)

    def predictor_cpu_over_bare(self, images: int, in_flight: int) -> float | None:
        """Predictor CPU-ms per request over the bare server's: the request path's cost, which
        other work on the machine skews far less than requests/s."""
        ours, bare = self.find(PREDICTOR, images, in_flight), self.find(BARE, images, in_flight)
        if ours is None or bare is None:
            return None
        if ours.server_cpu_ms_per_request is None or bare.server_cpu_ms_per_request is None:
            return None
        return _ratio(ours.server_cpu_ms_per_request, bare.server_cpu_ms_per_request)

    def transformer_over_decode(self, label: str, in_flight: int) -> float | None:
        """A transformer's images/s over the decode-only rate."""
        cell = self.find(label, 1, in_flight)
        if cell is None or self.decode is None:
            return None
        return _ratio(cell.images_per_s, self.decode.images_per_s)

    def transformer_cpu_over_decode(self, label: str, in_flight: int) -> float | None:
        """Decode CPU-ms per image over what the served pair spends per image (transformer and
        predictor processes): the rate ratio a quiet, CPU-bound machine would show."""
        cell = self.find(label, 1, in_flight)
        if cell is None or self.decode is None or cell.server_cpu_ms_per_request is None:
            return None
        return _ratio(self.decode.cpu_ms_per_image, cell.server_cpu_ms_per_request)

    def targets(self) -> list[Target]:
        """The issue's ratio targets at the highest concurrency measured."""
        if not self.cells:
            return []
        top = self.in_flights()[-1]
        found = [
            Target(
                f"predictor / bare, 1-image requests, {top} in flight",
                self.predictor_over_bare(1, top),
                PREDICTOR_OVER_BARE_MIN,
            )
        ]
        for label in self.transformers:
            best = max(
                (r for f in self.in_flights() if (r := self.transformer_over_decode(label, f))),
                default=None,
            )
            found.append(
                Target(f"{label} / decode-only rate (best)", best, TRANSFORMER_OVER_DECODE_MIN)
            )
        return found

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, cells with their derived values and the ratios."""
        return _without_nan(
            {
                "environment": self.environment,
                "settings": self.settings,
                "decode_only": dataclasses.asdict(self.decode) if self.decode else None,
                "cells": [
                    {
                        **dataclasses.asdict(c),
                        "images_per_s": c.images_per_s,
                        "errors": c.errors,
                    }
                    for c in self.cells
                ],
                "ratios": {
                    "predictor_over_bare": {
                        f"{size}x{f}": self.predictor_over_bare(size, f)
                        for size in self.sizes()
                        for f in self.in_flights()
                    },
                    "predictor_cpu_over_bare": {
                        f"{size}x{f}": self.predictor_cpu_over_bare(size, f)
                        for size in self.sizes()
                        for f in self.in_flights()
                    },
                    "transformer_over_decode": {
                        f"{label} {f}": self.transformer_over_decode(label, f)
                        for label in self.transformers
                        for f in self.in_flights()
                    },
                    "decode_cpu_over_transformer_cpu": {
                        f"{label} {f}": self.transformer_cpu_over_decode(label, f)
                        for label in self.transformers
                        for f in self.in_flights()
                    },
                },
                "targets": [
                    {"name": t.name, "value": t.value, "threshold": t.threshold, "met": t.met}
                    for t in self.targets()
                ],
                "runtime_s": self.runtime_s,
            }
        )

    def write_json(self, path: Path) -> None:
        """Write to_json() to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def format_table(self) -> str:
        """The printed summary: both ceilings, the transformers, ratios and targets."""
        flights = self.in_flights()
        head = "".join(f"{f'{f} in flight':>14}" for f in flights)
        lines = [
            "Ceiling: zero-cost model, load from h2load (requests/s; images/s where noted)",
            f"{'':34}{head}",
        ]
        for size in self.sizes():
            for server in (BARE, PREDICTOR):
                unit = "req/s" if size == 1 else "images/s"
                row = f"{server}, {size}-image requests ({unit})"
                values = []
                for f in flights:
                    cell = self.find(server, size, f)
                    values.append(None if cell is None else cell.images_per_s)
                lines.append(f"{row:34}" + "".join(_num(v, 14, 0) for v in values))
            ratios = [self.predictor_over_bare(size, f) for f in flights]
            lines.append(f"{'  predictor / bare':34}" + "".join(_ratio_text(r, 14) for r in ratios))
            cpu = [self.predictor_cpu_over_bare(size, f) for f in flights]
            lines.append(
                f"{'  CPU per request, pred / bare':34}" + "".join(_ratio_text(r, 14) for r in cpu)
            )
        if self.decode is not None:
            d = self.decode
            lines.append("")
            lines.append(
                f"Transformer, 1-image requests ({d.image}, {d.image_bytes / 1000:.0f} KB): "
                f"decode-only rate {d.images_per_s:.0f} images/s in-process "
                f"({d.threads} threads, {d.single_decode_ms:.2f} ms per decode, "
                f"{d.cpu_ms_per_image:.2f} CPU-ms per image)"
            )
        for label in self.transformers:
            cells = [self.find(label, 1, f) for f in flights]
            lines.append(
                f"{label + ' (images/s)':34}"
                + "".join(_num(c.images_per_s if c else None, 14, 0) for c in cells)
            )
            ratios = [self.transformer_over_decode(label, f) for f in flights]
            lines.append(f"{'  / decode-only':34}" + "".join(_ratio_text(r, 14) for r in ratios))
            cpu = [self.transformer_cpu_over_decode(label, f) for f in flights]
            lines.append(
                f"{'  decode CPU / served CPU':34}" + "".join(_ratio_text(r, 14) for r in cpu)
            )
        lines.append("")
        lines.append("CPU-ms per request: server processes (each) | h2load; errors")
        for cell in self.cells:
            calls = cell.predictor_calls_per_request
            shared = "" if calls is None else f", {calls:.2f} predictor calls per request"
            each = ", ".join(
                f"{name} {_num(ms, 0, 2)}" for name, ms in cell.cpu_ms_by_process.items()
            )
            lines.append(
                f"  {cell.server:28} {cell.images_per_request}x{cell.in_flight:<4}"
                f"{_num(cell.server_cpu_ms_per_request, 8, 2)} ({each}) |"
                f"{_num(cell.client_cpu_ms_per_request, 6, 2)}   errors {cell.errors}{shared}"
            )
        lines.append("")
        lines.append("Targets")
        for target in self.targets():
            verdict = {True: "met", False: "NOT met", None: "not measured"}[target.met]
            value = "n/a" if target.value is None else f"{target.value:.2f}x"
            lines.append(f"  {target.name}: {value} (>= {target.threshold}x) {verdict}")
        if self.runtime_s is not None:
            lines.append(f"\nRuntime: {self.runtime_s:.0f} s")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """Requests/s of both ceilings and images/s of the transformers against concurrency."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        flights = self.in_flights()
        fig, (ax_pred, ax_xfm) = plt.subplots(1, 2, figsize=(12, 4.8))
        for size, color in zip(self.sizes(), ("tab:blue", "tab:orange", "tab:green"), strict=False):
            for server, style in ((BARE, ":"), (PREDICTOR, "-")):
                points = [(f, c.images_per_s) for f in flights if (c := self.find(server, size, f))]
                if points:
                    ax_pred.plot(
                        *zip(*points, strict=True),
                        style,
                        marker="o",
                        color=color,
                        label=f"{server}, {size}-image requests",
                    )
        for label, color in zip(self.transformers, ("tab:red", "tab:purple"), strict=False):
            points = [(f, c.images_per_s) for f in flights if (c := self.find(label, 1, f))]
            if points:
                ax_xfm.plot(*zip(*points, strict=True), "-", marker="o", color=color, label=label)
        if self.decode is not None:
            ax_xfm.axhline(
                self.decode.images_per_s, color="grey", linestyle=":", label="decode-only rate"
            )
        for ax, title in (
            (ax_pred, "Predictor vs bare grpc.aio (zero-cost model)"),
            (ax_xfm, "Transformer in front of the zero-cost predictor"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(flights, [str(f) for f in flights])
            ax.set_xlabel("calls in flight (h2load)")
            ax.set_ylabel("images/s")
            ax.set_ylim(bottom=0)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(
            f"Request-path ceiling on {self.environment.get('available_cpus', '?')} CPUs "
            "(ratios within this run; the machine's load skews absolute numbers)"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _num(value: float | None, width: int, digits: int) -> str:
    if value is None or math.isnan(value):
        return f"{'n/a':>{width}}"
    return f"{value:>{width},.{digits}f}"


def _ratio_text(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{f'{value:.2f}x':>{width}}"


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value
