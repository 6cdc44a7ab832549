"""The benchmark's outputs: the printed table, bench.json and bench.png.

Pure formatting over the result records in `bench.stats`; matplotlib runs headless (Agg).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .batch import BatchResult
from .stats import (
    PEER,
    PROTOCOLS,
    SERVED,
    CellResult,
    HopResult,
    LimitResult,
    Ratios,
    Target,
    find_cell,
)

STAGE_LABELS = {
    "transformer_preprocess_ms": "xfm pre",
    "transformer_predict_ms": "xfm hop",
    "transformer_postprocess_ms": "xfm post",
    "predictor_predict_ms": "pred",
    "predictor_queue_ms": "queue",
    "predictor_batch_images": "batch",
}
CPU_LABELS = {"transformer": "xfm", "predictor": "pred", "client": "client"}
MACHINE_LABELS = {"busy_pct": "busy%", "steal_pct": "steal%"}


@dataclass
class Report:
    """Everything one run measured, in the shape the outputs need."""

    environment: dict[str, Any]
    image_set: dict[str, Any]
    settings: dict[str, Any]
    limit: LimitResult
    cells: list[CellResult]
    hop: HopResult | None
    ratios: Ratios
    targets: list[Target]
    top1_agreement: dict[str, str] = field(default_factory=dict)
    runtime_s: float | None = None
    batch: BatchResult | None = None  # python -m batch's two ratios (bench/batch.py)
    # TorchScript, ONNX FP32 and INT8 side by side ({"json": ..., "table": ...}; bench.engines).
    engines: dict[str, Any] | None = None
    # NVIDIA Triton beside our predictor ({"json": ..., "table": ...}; bench/triton/).
    triton: dict[str, Any] | None = None
    # 256 clients against the default bounds ({"json": ..., "table": ...}; bench/overload.py).
    overload: dict[str, Any] | None = None
    # Served c16 with the prediction log on against off ({"json": ..., "table": ...}).
    prediction_log: dict[str, Any] | None = None
    # Served c16 with tracing on (sampling 1.0) against off ({"json": ..., "table": ...}).
    tracing: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes null)."""
        data = {
            "environment": self.environment,
            "image_set": self.image_set,
            "settings": self.settings,
            "limit": {
                **dataclasses.asdict(self.limit),
                "best_batch_size": self.limit.best.batch_size,
                "best_images_per_s": self.limit.best.images_per_s,
            },
            "cells": [dataclasses.asdict(c) for c in self.cells],
            "hop": dataclasses.asdict(self.hop) if self.hop else None,
            "ratios": dataclasses.asdict(self.ratios),
            "targets": [{**dataclasses.asdict(t), "passed": t.passed} for t in self.targets],
            "top1_agreement": self.top1_agreement,
            "runtime_s": self.runtime_s,
            "batch": self.batch.to_json() if self.batch else None,
            "engines": None if self.engines is None else self.engines["json"],
            "triton": None if self.triton is None else self.triton["json"],
            "overload": None if self.overload is None else self.overload["json"],
            "prediction_log": None if self.prediction_log is None else self.prediction_log["json"],
            "tracing": None if self.tracing is None else self.tracing["json"],
        }
        return _without_nan(data)

    def write_json(self, path: Path) -> None:
        """Write bench.json."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def format_table(self) -> str:
        """The human-readable report printed at the end of a run."""
        lines: list[str] = []
        env, images = self.environment, self.image_set
        lines.append(
            f"Machine: {env.get('cpu_model', '?')}, {env.get('available_cpus', '?')} CPUs; "
            f"torch {env.get('torch', '?')}; git {str(env.get('git_commit', '?'))[:12]}"
            f"{' (dirty)' if env.get('git_dirty') else ''}"
        )
        lines.append(
            f"Images: {images['count']} ({images['originals']} originals 300-640 px, "
            f"{images['phone_sized']} phone-sized 4032x3024), JPEG q{images['jpeg_quality']}, "
            f"mean {images['mean_bytes'] / 1000:.1f} KB"
        )
        lines.append("")
        limit = self.limit
        lines.append(
            f"Limit (one process: decode+preprocess+forward, {limit.threads} torch threads)"
        )
        lines.append(f"  {'batch':>5}  {'images/s':>8}  {'batch p50 ms':>12}")
        for point in limit.points:
            lines.append(
                f"  {point.batch_size:>5}  {point.images_per_s:>8.1f}  {point.batch_p50_ms:>12.1f}"
            )
        by_kind = ", ".join(f"{k} {v:.1f}" for k, v in limit.single_image_ms_by_kind.items())
        lines.append(
            f"  best: batch {limit.best.batch_size}, {limit.best.images_per_s:.1f} images/s"
        )
        lines.append(
            f"  single image (batch 1): median {limit.single_image_ms:.1f} ms = decode+preprocess "
            f"{limit.decode_ms:.1f} + forward {limit.forward_ms:.1f}; mean "
            f"{limit.single_image_mean_ms:.1f}; median by kind: {by_kind}"
        )
        lines.append("")
        s = self.settings
        lines.append(
            f"Served and peer (closed loop, single-image requests, {s['duration_s']:g} s after "
            f"{s['warmup_s']:g} s warm-up; CPU and stage times per image/request in the window)"
        )
        lines.append(
            f"  {'pipeline':<8} {'protocol':<8} {'conc':>4} {'images/s':>8} {'p50 ms':>8} "
            f"{'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'errors':>6} | p50 ms by kind"
        )
        for cell in self.cells:
            lat = cell.latency
            lines.append(
                f"  {cell.pipeline:<8} {cell.protocol:<8} {cell.concurrency:>4} "
                f"{cell.images_per_s:>8.1f} {_num(lat.p50_ms, 8, 1)} {_num(lat.p90_ms, 8, 1)} "
                f"{_num(lat.p99_ms, 8, 1)} {_num(lat.mean_ms, 8, 1)} {cell.errors:>6} | "
                + ", ".join(f"{k} {v:.1f}" for k, v in cell.p50_ms_by_kind.items())
            )
        lines.append("")
        lines.append(
            "Where the time goes (in the window: CPU ms per image by process; stage means)"
        )
        lines.append(
            f"  {'pipeline':<8} {'protocol':<8} {'conc':>4} | cpu: "
            + " ".join(f"{v:>6}" for v in CPU_LABELS.values())
            + " | ms: "
            + " ".join(f"{v:>8}" for v in STAGE_LABELS.values())
            + " | all CPUs: "
            + " ".join(f"{v:>6}" for v in MACHINE_LABELS.values())
        )
        for cell in self.cells:
            cpu = " ".join(_num(cell.cpu_ms_per_image.get(k), 6, 1) for k in CPU_LABELS)
            stages = " ".join(
                _num(cell.stages.get(k), 8, 2 if k == "predictor_batch_images" else 1)
                for k in STAGE_LABELS
            )
            machine = " ".join(_num(cell.machine.get(k), 6, 0) for k in MACHINE_LABELS)
            lines.append(
                f"  {cell.pipeline:<8} {cell.protocol:<8} {cell.concurrency:>4} |      {cpu} |"
                f"     {stages} |           {machine}"
            )
        lines.append(
            "  (xfm pre/hop/post: the transformer's kserve preprocess, predict (the gRPC call "
            "to the predictor) and postprocess; pred: the predictor's predict (queue + forward);"
            " queue: our batcher's wait; batch: images per forward pass; busy%/steal%: share of"
            " all CPUs busy / stolen by the hypervisor, machine-wide)"
        )
        lines.append("")
        if self.hop is not None:
            hop = self.hop
            lines.append(
                "Internal hop (transformer -> predictor, one image, gRPC ModelInferRequest)"
            )
            lines.append(
                f"  served: {hop.served_bytes:,} B measured (ByteSize of the request built as the "
                f"transformer builds it) = UINT8 224x224x3 {hop.served_tensor_bytes:,} B + "
                f"{hop.served_bytes - hop.served_tensor_bytes} B framing"
            )
            lines.append(
                f"  peer:   {hop.peer_bytes:,} B measured = FP32 3x224x224 "
                f"{hop.peer_tensor_bytes:,} B + {hop.peer_bytes - hop.peer_tensor_bytes} B framing"
            )
            lines.append("")
        if self.top1_agreement:
            lines.append(
                "Top-1 agreement with the limit: "
                + "; ".join(f"{k} {v}" for k, v in self.top1_agreement.items())
            )
            lines.append("")
        r = self.ratios
        lines.append("Ratios")
        for protocol in PROTOCOLS:
            lines.append(
                f"  {protocol}: served c{r.high_concurrency} / limit best "
                f"{_ratio(r.served_over_limit[protocol])}; served c{r.high_concurrency} / peer "
                f"c{r.high_concurrency} {_ratio(r.served_over_peer[protocol])}; p50 "
                f"c{r.low_concurrency} / single-image time {_ratio(r.p50_over_single[protocol])}"
            )
        if r.hop_served_bytes is not None:
            lines.append(
                f"  hop: served {r.hop_served_bytes / 1000:.1f} KB/image; peer sends "
                f"{_ratio(r.hop_peer_over_served)} as many bytes"
            )
        if self.batch is not None:
            lines.append("")
            lines.extend(self.batch.format_lines())
        lines.append("")
        lines.append("Targets")
        for target in self.targets:
            lines.append(
                f"  {'PASS' if target.passed else 'FAIL'}  {target.name}: {_target_value(target)}"
            )
        if self.engines is not None:
            lines.append(self.engines["table"])
        if self.triton is not None:
            lines.append(self.triton["table"])
        if self.overload is not None:
            lines.append(self.overload["table"])
        if self.prediction_log is not None:
            lines.append(self.prediction_log["table"])
        if self.tracing is not None:
            lines.append(self.tracing["table"])
        if self.runtime_s is not None:
            lines.append("")
            lines.append(f"Runtime: {self.runtime_s:.0f} s")
        return "\n".join(lines)

    def plot(self, path: Path) -> None:
        """Throughput and p99 latency against concurrency, the limit as horizontal lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
        concurrencies = sorted({c.concurrency for c in self.cells})
        colors = {PROTOCOLS[0]: "tab:blue", PROTOCOLS[1]: "tab:orange"}
        styles = {SERVED: ("-", "o"), PEER: ("--", "s")}
        for pipeline in (SERVED, PEER):
            for protocol in PROTOCOLS:
                points = [
                    cell
                    for c in concurrencies
                    if (cell := find_cell(self.cells, pipeline, protocol, c)) is not None
                ]
                if not points:
                    continue
                line, marker = styles[pipeline]
                label = f"{pipeline} {protocol}"
                xs = [p.concurrency for p in points]
                ax_tp.plot(
                    xs,
                    [p.images_per_s for p in points],
                    line,
                    marker=marker,
                    color=colors[protocol],
                    label=label,
                )
                ax_lat.plot(
                    xs,
                    [p.latency.p99_ms for p in points],
                    line,
                    marker=marker,
                    color=colors[protocol],
                    label=label,
                )
        best = self.limit.best
        ax_tp.axhline(
            best.images_per_s,
            color="grey",
            linestyle=":",
            label=f"limit (batch {best.batch_size})",
        )
        ax_lat.axhline(
            self.limit.single_image_ms,
            color="grey",
            linestyle=":",
            label="limit single image",
        )
        for ax, title, ylabel in (
            (ax_tp, "Throughput", "images/s"),
            (ax_lat, "p99 latency", "ms (log scale)"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.set_xlabel("concurrency (closed-loop workers)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax_tp.set_ylim(bottom=0)
        ax_lat.set_yscale("log")
        env = self.environment
        fig.suptitle(
            f"Image classifier on {env.get('available_cpus', '?')} CPUs: served vs stock peer "
            f"vs in-process limit (mean image {self.image_set['mean_bytes'] / 1000:.0f} KB)"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _num(value: float | None, width: int, digits: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _target_value(target: Target) -> str:
    if target.value is None:
        return "not measured"
    if target.unit == "bytes":
        return f"{target.value / 1000:.1f} KB (limit {target.threshold / 1000:.0f} KB)"
    if target.unit == "count":
        return f"{target.value:.0f}"
    return f"{target.value:.2f}x (threshold {target.threshold:g}x)"


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return value
