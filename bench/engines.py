"""The engines in one run: TorchScript, ONNX Runtime FP32 and ONNX Runtime INT8.

Each engine is the same predictor serving a different model repository (the config's platform
picks the engine): its in-process limit (`bench.limit`, which reports the forward pass per batch
size) and the served pipeline (transformer + predictor, every protocol and concurrency of the
run). TorchScript's figures are the main run's; the two ONNX repositories are measured after it,
one at a time. Then the ratios the targets are set on, and INT8's agreement with FP32 on the
built-in held-out set (`bench.fidelity`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .stats import CellResult, LimitPoint, LimitResult, Target

TORCHSCRIPT, ONNX_FP32, ONNX_INT8 = "TorchScript", "ONNX FP32", "ONNX INT8"
OPENVINO_FP32, OPENVINO_INT8 = "OpenVINO FP32", "OpenVINO INT8"
TARGET_PROTOCOL, TARGET_CONCURRENCY = "v2-grpc", 16
FORWARD_BATCHES = (1, 8)


@dataclass(frozen=True)
class EngineRun:
    """One engine's limit and served cells."""

    engine: str
    limit: LimitResult
    cells: list[CellResult]

    def point(self, batch_size: int) -> LimitPoint | None:
        """The limit measured at `batch_size`, None when not measured."""
        return next((p for p in self.limit.points if p.batch_size == batch_size), None)

    def forward_ms(self, batch_size: int) -> float | None:
        """Median forward pass at `batch_size`, None when not measured."""
        point = self.point(batch_size)
        return point.forward_p50_ms if point is not None else None

    def served(self, protocol: str, concurrency: int) -> CellResult | None:
        """The served cell for one protocol and concurrency."""
        return next(
            (c for c in self.cells if c.protocol == protocol and c.concurrency == concurrency),
            None,
        )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def engine_ratios(runs: list[EngineRun]) -> dict[str, float | None]:
    """Served c16 gRPC throughput ONNX FP32 / TorchScript; INT8 vs FP32 forward speed-ups."""
    by = {r.engine: r for r in runs}
    ratios: dict[str, float | None] = {}
    if TORCHSCRIPT in by and ONNX_FP32 in by:
        cells = [
            by[e].served(TARGET_PROTOCOL, TARGET_CONCURRENCY) for e in (ONNX_FP32, TORCHSCRIPT)
        ]
        ratios["served_c16_grpc_onnx_fp32_over_torchscript"] = _ratio(
            *(c.images_per_s if c else None for c in cells)
        )
        for size in FORWARD_BATCHES:
            ratios[f"forward_b{size}_torchscript_over_onnx_fp32"] = _ratio(
                by[TORCHSCRIPT].forward_ms(size), by[ONNX_FP32].forward_ms(size)
            )
    if ONNX_FP32 in by and ONNX_INT8 in by:
        for size in FORWARD_BATCHES:
            ratios[f"forward_b{size}_onnx_fp32_over_int8"] = _ratio(
                by[ONNX_FP32].forward_ms(size), by[ONNX_INT8].forward_ms(size)
            )
    # OpenVINO against the default (ONNX Runtime FP32), the same files: forward speed-ups.
    for other, slug in ((OPENVINO_FP32, "openvino_fp32"), (OPENVINO_INT8, "openvino_int8")):
        if ONNX_FP32 in by and other in by:
            for size in FORWARD_BATCHES:
                ratios[f"forward_b{size}_onnx_fp32_over_{slug}"] = _ratio(
                    by[ONNX_FP32].forward_ms(size), by[other].forward_ms(size)
                )
    return ratios


def engine_targets(
    ratios: dict[str, float | None], fidelity: dict[str, Any] | None
) -> list[Target]:
    """The issue's targets for the engines."""
    targets = []
    if "served_c16_grpc_onnx_fp32_over_torchscript" in ratios:
        targets.append(
            Target(
                "served c16 V2 gRPC: ONNX FP32 / TorchScript",
                ratios["served_c16_grpc_onnx_fp32_over_torchscript"],
                1.4,
                at_least=True,
            )
        )
    for size in FORWARD_BATCHES:
        key = f"forward_b{size}_onnx_fp32_over_int8"
        if key in ratios:
            targets.append(
                Target(
                    f"forward batch {size}: ONNX INT8 speed-up over ONNX FP32",
                    ratios[key],
                    1.8,
                    at_least=True,
                )
            )
    if fidelity is not None:
        targets.append(
            Target(
                "INT8 top-1 agreement with FP32 where FP32 p >= 0.5",
                fidelity.get("confident_agreement"),
                0.95,
                at_least=True,
                unit="fraction",
            )
        )
    return targets


# Issue 21's targets for the default engine (common.cpus picks it for this CPU kind): served
# V2 gRPC c16 against its own in-process limit, p50 at c1 against its in-process single image,
# and, on the CPUs with INT8 and BF16 units (AMX, AVX-512 VNNI), its forward pass at batch 8
# against ONNX Runtime FP32 and OpenVINO's INT8 against its FP32.
SERVED_OVER_OWN_LIMIT_MIN = 0.95
C1_OVER_OWN_SINGLE_MAX = 1.25
DEFAULT_OVER_ONNX_FP32_MIN = 2.0
OPENVINO_INT8_OVER_FP32_MIN = 1.8
VECTOR_INT8_KINDS = ("amx", "avx512_vnni")


def c1_over_single(c1: CellResult | None, run: EngineRun) -> tuple[float | None, str]:
    """The served p50 at concurrency 1 over the in-process single-image time, and how it was
    taken. Per image kind where both sides have kinds: the worst kind's ratio, every kind's
    named (", worst kind of: phone 1.40x, original 1.90x"). The image set is bimodal (small
    originals, 12 MP phone photos), and the median of the whole set falls in the gap between
    the two: two runs a few minutes apart read 1.76x and 1.18x while by kind they were no
    better. Without kinds, the whole set's medians ("")."""
    single = run.point(1)  # decode + preprocess + forward of one image, in process
    if c1 is None:
        return None, ""
    served, alone = c1.p50_ms_by_kind, run.limit.single_image_ms_by_kind
    kinds = [kind for kind in served if kind in alone]
    if not kinds:
        return _ratio(c1.latency.p50_ms, single.batch_p50_ms if single else None), ""
    ratios = {kind: served[kind] / alone[kind] for kind in kinds if alone[kind] > 0}
    if not ratios:
        return None, ""
    named = ", ".join(f"{kind} {ratio:.2f}x" for kind, ratio in ratios.items())
    return max(ratios.values()), f", worst kind of: {named}"


def default_engine_targets(runs: list[EngineRun], default: str, cpu_kind: str) -> list[Target]:
    """Issue 21's targets for the engine `default` (a label of `runs`) on a CPU of `cpu_kind`;
    the forward-pass targets only where the CPU has INT8/BF16 units."""
    by = {r.engine: r for r in runs}
    if default not in by:
        return []
    run = by[default]
    c16, c1 = run.served(TARGET_PROTOCOL, TARGET_CONCURRENCY), run.served(TARGET_PROTOCOL, 1)
    c1_ratio, c1_kinds = c1_over_single(c1, run)
    targets = [
        Target(
            f"served c16 V2 gRPC / in-process limit, {default}",
            _ratio(c16.images_per_s if c16 else None, run.limit.best.images_per_s),
            SERVED_OVER_OWN_LIMIT_MIN,
            at_least=True,
        ),
        Target(
            f"p50 c1 V2 gRPC / in-process single image, {default}{c1_kinds}",
            c1_ratio,
            C1_OVER_OWN_SINGLE_MAX,
            at_least=False,
        ),
    ]
    if cpu_kind in VECTOR_INT8_KINDS:
        size = max(FORWARD_BATCHES)
        if ONNX_FP32 in by:
            targets.append(
                Target(
                    f"forward batch {size}: {default} speed-up over ONNX FP32 ({cpu_kind})",
                    _ratio(by[ONNX_FP32].forward_ms(size), run.forward_ms(size)),
                    DEFAULT_OVER_ONNX_FP32_MIN,
                    at_least=True,
                )
            )
        if OPENVINO_FP32 in by and OPENVINO_INT8 in by:
            targets.append(
                Target(
                    f"forward batch {size}: OpenVINO INT8 speed-up over OpenVINO FP32 ({cpu_kind})",
                    _ratio(by[OPENVINO_FP32].forward_ms(size), by[OPENVINO_INT8].forward_ms(size)),
                    OPENVINO_INT8_OVER_FP32_MIN,
                    at_least=True,
                )
            )
    return targets


def format_engines(
    runs: list[EngineRun],
    ratios: dict[str, float | None],
    targets: list[Target],
    fidelity: dict[str, Any] | None,
) -> str:
    """The engines' table, ratios, fidelity and targets."""
    concurrencies = sorted({c.concurrency for r in runs for c in r.cells})
    protocols = sorted({c.protocol for r in runs for c in r.cells})

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    head = ["engine", "fwd b1 ms", "fwd b8 ms", "limit img/s"]
    head += [f"{p} c{c}" for p in protocols for c in concurrencies]
    rows = []
    for run in runs:
        row = [run.engine, ms(run.forward_ms(1)), ms(run.forward_ms(8))]
        row.append(f"{run.limit.best.images_per_s:.1f}")
        for protocol in protocols:
            for concurrency in concurrencies:
                cell = run.served(protocol, concurrency)
                row.append("-" if cell is None else f"{cell.images_per_s:.1f}")
        rows.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(head, *rows, strict=True)]
    lines = ["", "Engines (served: images/s through the transformer; limit: best batch)"]
    for row in [head, *rows]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    lines.append(
        "Ratios: "
        + ", ".join(f"{k} {ms(v) if v is None else f'{v:.2f}'}" for k, v in ratios.items())
    )
    if fidelity is not None:
        confident = fidelity.get("confident_agreement")
        lines.append(
            f"INT8 vs FP32 on {fidelity['images']} held-out images: top-1 agreement "
            f"{fidelity['agreement']:.1%}, where FP32 p >= 0.5 "
            f"{'n/a' if confident is None else f'{confident:.1%}'} "
            f"({fidelity['confident_images']} images), mean shift of FP32's top-1 p "
            f"{fidelity['mean_probability_shift']:.3f}"
        )
    lines.append("Engine targets:")
    for target in targets:
        value = "n/a" if target.value is None else f"{target.value:.2f}"
        verdict = "PASS" if target.passed else "FAIL"
        bound = ">=" if target.at_least else "<="
        lines.append(f"  {verdict}  {target.name}: {value} (target {bound} {target.threshold})")
    return "\n".join(lines)


def to_json(
    runs: list[EngineRun],
    ratios: dict[str, float | None],
    targets: list[Target],
    fidelity: dict[str, Any] | None,
) -> dict[str, Any]:
    """The engines' part of bench.json."""
    return {
        "runs": [
            {
                "engine": r.engine,
                "limit": dataclasses.asdict(r.limit),
                "cells": [dataclasses.asdict(c) for c in r.cells],
            }
            for r in runs
        ],
        "ratios": ratios,
        "fidelity": fidelity,
        "targets": [{**dataclasses.asdict(t), "passed": t.passed} for t in targets],
    }
