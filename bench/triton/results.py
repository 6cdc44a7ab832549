"""What the Triton comparison found, as plain records: cells, agreement, the table, JSON.

Pure functions over the records `compare` fills, so the tests drive them with made-up
numbers. Each concurrency is measured in several rounds, ours and Triton's cells adjacent in
each (the machine's speed drifts over minutes); a row gives the median of each server's
images/s and p50 over the rounds, and the median of the rounds' ratios.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stats import LatencySummary

OURS, TRITON = "ours", "triton"
DIRECT, VIA_TRANSFORMER = "direct", "via transformer"
# onnxruntime's kernels differ by these (AVX2 vs AVX-512, VNNI for INT8, AMX).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@dataclass(frozen=True)
class Cell:
    """One server (ours or Triton), one front, one concurrency, one round of closed-loop load."""

    front: str  # DIRECT (pixels to the server) or VIA_TRANSFORMER (images to our transformer)
    server: str  # OURS or TRITON
    concurrency: int
    round: int
    images_per_s: float
    latency: LatencySummary
    requests: int
    errors: int
    # CPU ms per image of the processes under load (the server, and the transformer in front).
    cpu_ms_per_image: float | None
    # Mean images per forward pass in the window (our batcher's histogram, Triton's counters).
    batch_images: float | None
    # CPU the other side's processes used meanwhile, in % of one CPU (they should idle).
    idle_cpu_pct: float | None


@dataclass(frozen=True)
class Agreement:
    """Triton's logits against our predictor's on the same pixels."""

    images: int
    top1_matches: int
    max_abs_diff: float
    rtol: float
    atol: float
    allclose: bool


@dataclass(frozen=True)
class Row:
    """One front and concurrency: medians over the rounds."""

    front: str
    concurrency: int
    triton_images_per_s: float | None
    ours_images_per_s: float | None
    ours_over_triton: float | None  # the median of the rounds' ratios
    triton_p50_ms: float | None
    ours_p50_ms: float | None
    rounds: int


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rows(cells: Sequence[Cell]) -> list[Row]:
    """One row per front and concurrency, in the order first measured."""
    keys = list(dict.fromkeys((c.front, c.concurrency) for c in cells))
    result = []
    for front, concurrency in keys:
        mine = [c for c in cells if (c.front, c.concurrency) == (front, concurrency)]
        by_round: dict[int, dict[str, Cell]] = {}
        for cell in mine:
            by_round.setdefault(cell.round, {})[cell.server] = cell
        ratios = [
            pair[OURS].images_per_s / pair[TRITON].images_per_s
            for pair in by_round.values()
            if OURS in pair and TRITON in pair and pair[TRITON].images_per_s > 0
        ]
        served = {server: [c for c in mine if c.server == server] for server in (OURS, TRITON)}
        # A cell with no answers has no latency (NaN percentiles): it is left out of the p50.
        p50 = {
            server: _median([c.latency.p50_ms for c in found if c.latency.count])
            for server, found in served.items()
        }
        result.append(
            Row(
                front=front,
                concurrency=concurrency,
                triton_images_per_s=_median([c.images_per_s for c in served[TRITON]]),
                ours_images_per_s=_median([c.images_per_s for c in served[OURS]]),
                ours_over_triton=_median(ratios),
                triton_p50_ms=p50[TRITON],
                ours_p50_ms=p50[OURS],
                rounds=len(by_round),
            )
        )
    return result


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The SIMD flags (of SIMD_FLAGS) the first CPU reports; [] when /proc/cpuinfo is absent."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            found = set(line.split(":", 1)[1].split())
            return [flag for flag in SIMD_FLAGS if flag in found]
    return []


@dataclass
class TritonComparison:
    """The stage's result: every cell, the agreement and where it ran."""

    cells: list[Cell]
    agreement: Agreement
    versions: dict[str, str | None]
    machine: dict[str, Any]  # cpu_model, available_cpus, simd_flags
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The comparison's part of bench.json."""
        return {
            "rows": [dataclasses.asdict(r) for r in rows(self.cells)],
            "cells": [dataclasses.asdict(c) for c in self.cells],
            "agreement": dataclasses.asdict(self.agreement),
            "versions": self.versions,
            "machine": self.machine,
            "settings": self.settings,
        }

    def format_table(self) -> str:
        """The report's Triton section."""
        s, m, v, a = self.settings, self.machine, self.versions, self.agreement
        flags = " ".join(m.get("simd_flags") or []) or "?"
        runtimes = (v.get("onnxruntime"), v.get("onnxruntime_ours", v.get("onnxruntime")))
        engine = (
            f"onnxruntime {runtimes[0]} in both"
            if runtimes[0] == runtimes[1]
            else f"onnxruntime {runtimes[0]} in Triton, {runtimes[1]} in ours"
        )
        lines = [
            "",
            f"Triton beside ours (same ONNX file, {engine}, "
            f"{s.get('intra_op_threads')} intra-op threads, sequential; tritonserver "
            f"{v.get('tritonserver')} from nvidia-pytriton {v.get('nvidia-pytriton')}, python "
            "backend, dynamic_batching {}, 1 CPU instance)",
            f"  CPU: {m.get('cpu_model', '?')}, {m.get('available_cpus', '?')} CPUs; "
            f"SIMD flags: {flags}",
            f"  closed loop, single-image gRPC requests, {s.get('duration_s', 0):g} s after "
            f"{s.get('warmup_s', 0):g} s warm-up, {s.get('rounds')} alternating rounds; "
            "direct: pixels (UINT8 1x224x224x3) to the server; via transformer: JPEG to our "
            "transformer, which forwards pixels to it",
        ]
        head = [
            "front",
            "conc",
            "Triton img/s",
            "ours img/s",
            "ours/Triton",
            "Triton p50 ms",
            "ours p50 ms",
        ]
        table = [head]
        for row in rows(self.cells):
            table.append(
                [
                    row.front,
                    str(row.concurrency),
                    _num(row.triton_images_per_s, 1),
                    _num(row.ours_images_per_s, 1),
                    "-" if row.ours_over_triton is None else f"{row.ours_over_triton:.2f}x",
                    _num(row.triton_p50_ms, 1),
                    _num(row.ours_p50_ms, 1),
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for line in table:
            lines.append(
                "  "
                + "  ".join(
                    text.ljust(w) if i == 0 else text.rjust(w)
                    for i, (text, w) in enumerate(zip(line, widths, strict=True))
                )
            )
        lines.append(
            "  per cell (round server conc: img/s, p50/p99 ms, errors, CPU ms/img, images per "
            "forward pass, idle side's CPU %):"
        )
        for c in self.cells:
            lines.append(
                f"    r{c.round + 1} {c.front:<15} {c.server:<6} c{c.concurrency:<3} "
                f"{c.images_per_s:7.1f} img/s  p50 {_num(c.latency.p50_ms, 1)} "
                f"p99 {_num(c.latency.p99_ms, 1)}  err {c.errors}  cpu "
                f"{_num(c.cpu_ms_per_image, 1)}  batch {_num(c.batch_images, 2)}  idle "
                f"{_num(c.idle_cpu_pct, 1)}%"
            )
        verdict = "identical within" if a.allclose else "DIFFER beyond"
        lines.append(
            f"  logits: Triton vs ours on {a.images} images {verdict} rtol {a.rtol:g} atol "
            f"{a.atol:g} (max |diff| {a.max_abs_diff:.2e}); top-1 {a.top1_matches}/{a.images}"
        )
        if "transformer_top1_agreement" in s:
            lines.append(
                "  top-1 through our transformer, Triton vs ours: "
                f"{s['transformer_top1_agreement']}"
            )
        return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"
