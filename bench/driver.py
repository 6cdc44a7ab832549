"""The benchmark run: image set, limit, hop size, served pipeline, stock peer, report.

With --triton_dir, last: NVIDIA Triton beside our predictor on the ONNX FP32 file
(`bench/triton/`, its own section of the report).

Order matters on a small machine: nothing else runs while the limit is measured, and the two
pipelines run one after the other, never side by side (they would share the same cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from common.cli import DEFAULT_MODEL_NAME, LOCAL_MODEL_REPOSITORY, positive_ints
from common.cpus import cpu_kind, default_engine
from harness.servers import ROOT, Pipeline, PipelineSpec, running

from . import engines, overload, prediction_log, tracing
from .batch import BatchPlan, repeated_source
from .images import build_image_set, describe, write_image_set
from .load import Client, LoadRun, client_for, closed_loop
from .observe import cpu_shares, mean_between, system_cpu_jiffies
from .report import Report
from .stats import (
    PEER,
    PROTOCOLS,
    SERVED,
    V2_GRPC,
    CellResult,
    HopResult,
    LimitPoint,
    LimitResult,
    compute_ratios,
    evaluate_targets,
    median_by_kind,
    summarize,
)
from .support import environment, run_json_module
from .triton import compare as triton_compare
from .triton.install import TritonInstall

DEFAULT_CONCURRENCY = "1,4,16"
MAX_REQUESTS_PER_CELL = 20_000  # a bound, far above what 2 CPUs serve in one cell

OURS = PipelineSpec(SERVED, "predictor", "transformer")
STOCK = PipelineSpec(
    PEER,
    "bench.stock.predictor",
    "bench.stock.transformer",
    transformer_args=("--predictor_protocol", "grpc-v2"),
)


@dataclass(frozen=True)
class BenchSettings:
    """The run's settings, parsed once."""

    model_dir: Path
    model_name: str
    out: Path
    images_from: Path
    concurrency: tuple[int, ...]
    warmup_s: float
    duration_s: float
    limit_seconds: float
    max_requests: int
    quick: bool
    served_predictor_args: tuple[str, ...]
    served_transformer_args: tuple[str, ...]
    skip_peer: bool
    onnx_model_dir: Path | None = None  # ONNX FP32 repository: measured as a second engine
    int8_model_dir: Path | None = None  # ONNX INT8 repository: a third
    openvino_model_dir: Path | None = None  # the FP32 file as OpenVINO IR: a fourth
    openvino_int8_model_dir: Path | None = None  # the INT8 file as OpenVINO IR: a fifth
    triton_dir: Path | None = None  # the Triton venv (make triton): Triton beside ONNX FP32
    triton_rounds: int = triton_compare.DEFAULT_ROUNDS
    # A PostgreSQL URL of a role that may create databases: the prediction log's cost
    prediction_log_db: str | None = None


def parse(argv: list[str] | None = None) -> BenchSettings:
    """Parse the command line; exits with a usage message on bad flags."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the in-process limit, the served pipeline and the stock pattern.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_dir", type=Path, default=Path(LOCAL_MODEL_REPOSITORY))
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument(
        "--images_from",
        type=Path,
        default=ROOT / "tests" / "data",
        help="Source photos the image set is built from.",
    )
    p.add_argument(
        "--concurrency",
        type=positive_ints,
        default=positive_ints(DEFAULT_CONCURRENCY),
        help="Closed-loop worker counts, comma-separated.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="Shorter warm-up and windows (a smoke run, noisier numbers).",
    )
    p.add_argument("--warmup", type=float, default=None, help="Seconds (default 2, quick 1).")
    p.add_argument("--duration", type=float, default=None, help="Seconds (default 8, quick 3).")
    p.add_argument("--max_requests", type=int, default=MAX_REQUESTS_PER_CELL)
    p.add_argument(
        "--served_predictor_args",
        default="",
        help="Extra flags for the served predictor, e.g. '--num_threads 1' (experiments).",
    )
    p.add_argument(
        "--served_transformer_args",
        default="",
        help="Extra flags for the served transformer, e.g. '--decode_workers 1' (experiments).",
    )
    p.add_argument(
        "--prediction_log_db",
        default=None,
        help="PostgreSQL URL of a role that may create databases (make bench: the machine's, "
        "from .ci/postgres): measure served c16 with the prediction log on against off. "
        "Without it that stage is skipped.",
    )
    p.add_argument(
        "--skip_peer",
        action="store_true",
        help="Measure only the served pipeline (experiments; peer ratios become n/a).",
    )
    p.add_argument(
        "--onnx_model_dir",
        type=Path,
        default=None,
        help="ONNX FP32 repository: its limit and served pipeline beside TorchScript's.",
    )
    p.add_argument(
        "--int8_model_dir",
        type=Path,
        default=None,
        help="ONNX INT8 repository: likewise, with its agreement with FP32.",
    )
    p.add_argument(
        "--openvino_model_dir",
        type=Path,
        default=None,
        help="OpenVINO repository of the FP32 file (python -m modelbuild openvino): likewise.",
    )
    p.add_argument(
        "--openvino_int8_model_dir",
        type=Path,
        default=None,
        help="OpenVINO repository of the INT8 file: likewise.",
    )
    p.add_argument(
        "--triton_dir",
        type=Path,
        default=None,
        help="The Triton venv `make triton` builds (.venv-triton): measure NVIDIA Triton "
        "beside our predictor on the --onnx_model_dir file (needs --onnx_model_dir).",
    )
    p.add_argument(
        "--triton_rounds",
        type=int,
        default=None,
        help=f"Alternating rounds of the Triton comparison (default "
        f"{triton_compare.DEFAULT_ROUNDS}, quick 1).",
    )
    args = p.parse_args(argv)
    if args.triton_dir is not None and args.onnx_model_dir is None:
        p.error("--triton_dir needs --onnx_model_dir (Triton runs the ONNX FP32 file)")
    model_dir = args.model_dir if args.model_dir.is_absolute() else Path.cwd() / args.model_dir

    def absolute(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else Path.cwd() / path

    return BenchSettings(
        model_dir=model_dir,
        model_name=args.model_name,
        out=args.out.resolve(),  # absolute: tritonserver runs with another cwd
        images_from=args.images_from,
        concurrency=args.concurrency,
        warmup_s=args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0),
        duration_s=args.duration if args.duration is not None else (3.0 if args.quick else 8.0),
        limit_seconds=1.0 if args.quick else 2.0,
        max_requests=args.max_requests,
        quick=args.quick,
        served_predictor_args=tuple(shlex.split(args.served_predictor_args)),
        served_transformer_args=tuple(shlex.split(args.served_transformer_args)),
        skip_peer=args.skip_peer,
        onnx_model_dir=absolute(args.onnx_model_dir) or args.onnx_model_dir,
        int8_model_dir=absolute(args.int8_model_dir) or args.int8_model_dir,
        openvino_model_dir=absolute(args.openvino_model_dir) or args.openvino_model_dir,
        openvino_int8_model_dir=(
            absolute(args.openvino_int8_model_dir) or args.openvino_int8_model_dir
        ),
        triton_dir=absolute(args.triton_dir) or args.triton_dir,
        triton_rounds=args.triton_rounds or (1 if args.quick else triton_compare.DEFAULT_ROUNDS),
        prediction_log_db=args.prediction_log_db or None,
    )


def measure_limit(
    settings: BenchSettings,
    image_dir: Path,
    log_dir: Path,
    kinds: dict[str, str],
    log_name: str = "limit.log",
) -> tuple[LimitResult, dict[str, int]]:
    """The in-process limit (a child process) and each image's top-1 class."""
    raw = run_json_module(
        "bench.limit",
        [
            "--model_dir",
            str(settings.model_dir),
            "--model_name",
            settings.model_name,
            "--images",
            str(image_dir),
            "--seconds",
            str(settings.limit_seconds),
        ],
        log_dir / log_name,
    )
    limit = LimitResult(
        points=tuple(LimitPoint(**point) for point in raw["points"]),
        single_image_ms=raw["single_image_ms"],
        decode_ms=raw["decode_ms"],
        forward_ms=raw["forward_ms"],
        threads=raw["threads"],
        single_image_mean_ms=raw["single_image_mean_ms"],
        single_image_ms_by_kind=median_by_kind(
            [(kinds[name], ms) for name, ms in raw["single_image_ms_by_image"].items()]
        ),
    )
    return limit, {str(k): int(v) for k, v in raw["top1"].items()}


def measure_hop(settings: BenchSettings, image: Path, log_dir: Path) -> HopResult:
    """Request bytes per image on the internal hop (a child process, it imports kserve)."""
    raw = run_json_module(
        "bench.hop",
        [
            "--model_dir",
            str(settings.model_dir),
            "--model_name",
            settings.model_name,
            "--image",
            str(image),
        ],
        log_dir / "hop.log",
    )
    return HopResult(**raw)


@dataclass(frozen=True)
class Probe:
    """What the driver observes at a window edge."""

    at: float
    transformer_cpu: float | None
    predictor_cpu: float | None
    client_cpu: float
    system: tuple[int, int, int] | None
    transformer_metrics: str
    predictor_metrics: str


def probe(pipeline: Pipeline) -> Probe:
    """CPU counters of both servers and the driver, and both servers' /metrics."""
    return Probe(
        at=time.perf_counter(),
        transformer_cpu=pipeline.transformer.cpu_seconds(),
        predictor_cpu=pipeline.predictor.cpu_seconds(),
        client_cpu=time.process_time(),
        system=system_cpu_jiffies(),
        transformer_metrics=pipeline.transformer.metrics(),
        predictor_metrics=pipeline.predictor.metrics(),
    )


def cell_result(
    pipeline: str, protocol: str, concurrency: int, run: LoadRun[Probe], kinds: list[str]
) -> CellResult:
    """Throughput, latency, CPU per image and stage means of one cell."""
    window = run.in_window()
    ok = [s for s in window if s.ok]
    window_s = run.window_seconds()
    images = len(ok)
    before, after = run.before, run.after

    def per_image(start: float | None, end: float | None) -> float | None:
        if start is None or end is None or images == 0:
            return None
        return (end - start) * 1000 / images

    def stage(text_before: str, text_after: str, metric: str, scale: float) -> float | None:
        mean = mean_between(text_before, text_after, metric)
        return None if mean is None else mean * scale

    t_before, t_after = before.transformer_metrics, after.transformer_metrics
    p_before, p_after = before.predictor_metrics, after.predictor_metrics
    return CellResult(
        pipeline=pipeline,
        protocol=protocol,
        concurrency=concurrency,
        window_s=window_s,
        requests=len(window),
        errors=sum(not s.ok for s in run.samples),
        images_per_s=images / window_s,
        latency=summarize([s.latency_s for s in ok]),
        p50_ms_by_kind=median_by_kind([(kinds[s.index], s.latency_s * 1000) for s in ok]),
        cpu_ms_per_image={
            "transformer": per_image(before.transformer_cpu, after.transformer_cpu),
            "predictor": per_image(before.predictor_cpu, after.predictor_cpu),
            "client": per_image(before.client_cpu, after.client_cpu),
        },
        stages={
            "transformer_preprocess_ms": stage(
                t_before, t_after, "request_preprocess_seconds", 1e3
            ),
            "transformer_predict_ms": stage(t_before, t_after, "request_predict_seconds", 1e3),
            "transformer_postprocess_ms": stage(
                t_before, t_after, "request_postprocess_seconds", 1e3
            ),
            "predictor_predict_ms": stage(p_before, p_after, "request_predict_seconds", 1e3),
            "predictor_queue_ms": stage(p_before, p_after, "predictor_queue_seconds", 1e3),
            "predictor_batch_images": stage(p_before, p_after, "predictor_batch_size", 1.0),
        },
        machine=cpu_shares(before.system, after.system),
    )


def agreement(client: Client, names: list[str], expected: dict[str, int]) -> str:
    """'k/n' images whose top-1 class matches the limit's, through one client (untimed)."""
    sender = client.make()
    try:
        matches = sum(sender.top1(i) == expected.get(name) for i, name in enumerate(names))
    finally:
        sender.close()
    return f"{matches}/{len(names)}"


def limit_again(
    settings: BenchSettings, image_dir: Path, log_dir: Path, kinds: dict[str, str], log_stem: str
) -> Callable[[int], LimitResult]:
    """Measures the limit once more for the batch run of round `round_`."""

    def measure(round_: int) -> LimitResult:
        return measure_limit(
            settings, image_dir, log_dir, kinds, f"{log_stem}-batch-{round_ + 1}.log"
        )[0]

    return measure


# Measures one cell (protocol, concurrency) of a running pipeline.
CellMeasure = Callable[[str, int], CellResult]


def measure_pipeline(
    spec: PipelineSpec,
    settings: BenchSettings,
    images: list[bytes],
    names: list[str],
    kinds: list[str],
    expected_top1: dict[str, int],
    log_dir: Path,
    agreements: dict[str, str],
    then: Callable[[Pipeline, CellMeasure], None] | None = None,
) -> list[CellResult]:
    """Start one pipeline and run every protocol and concurrency against it (then `then`,
    while it still runs, with a way to measure a cell again)."""
    cells: list[CellResult] = []
    print(f"[bench] starting the {spec.name} pipeline", file=sys.stderr, flush=True)
    with running(spec, settings.model_dir, settings.model_name, log_dir) as pipeline:
        clients = {
            protocol: client_for(
                protocol,
                pipeline.transformer.url,
                pipeline.transformer.grpc_target,
                settings.model_name,
                images,
            )
            for protocol in PROTOCOLS
        }

        def measure_cell(protocol: str, concurrency: int) -> CellResult:
            run = closed_loop(
                clients[protocol],
                len(images),
                concurrency,
                settings.warmup_s,
                settings.duration_s,
                settings.max_requests,
                lambda: probe(pipeline),
            )
            cell = cell_result(spec.name, protocol, concurrency, run, kinds)
            print(
                f"[bench] {spec.name} {protocol} c{concurrency}: "
                f"{cell.images_per_s:.1f} images/s, p50 {cell.latency.p50_ms:.0f} ms, "
                f"{cell.errors} errors",
                file=sys.stderr,
                flush=True,
            )
            return cell

        for protocol in PROTOCOLS:
            agreements[f"{spec.name} {protocol}"] = agreement(
                clients[protocol], names, expected_top1
            )
            cells.extend(measure_cell(protocol, c) for c in settings.concurrency)
        if then is not None:
            then(pipeline, measure_cell)
    return cells


def batch_through(batch: BatchPlan) -> Callable[[Pipeline, CellMeasure], None]:
    """The --url runs of `batch` through a pipeline, each after its served V2 gRPC cell."""

    def through(pipeline: Pipeline, measure_cell: CellMeasure) -> None:
        batch.through(pipeline, lambda: measure_cell(V2_GRPC, batch.concurrency))

    return through


def run(settings: BenchSettings) -> Report:
    """The whole benchmark; writes images and logs under settings.out."""
    started = time.perf_counter()
    # Checked first: a missing Triton install should not surface after the rest of the run.
    triton_install = (
        None if settings.triton_dir is None else TritonInstall.find(settings.triton_dir)
    )
    out = settings.out
    image_dir, log_dir = out / "images", out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    image_set = build_image_set(settings.images_from)
    paths = write_image_set(image_set, image_dir)
    blobs = [image.data for image in image_set]
    names = [image.name for image in image_set]
    kinds = [image.kind for image in image_set]
    load_before = os.getloadavg()

    print("[bench] measuring the in-process limit", file=sys.stderr, flush=True)
    kind_of = dict(zip(names, kinds, strict=True))
    limit, expected_top1 = measure_limit(settings, image_dir, log_dir, kind_of)
    hop = measure_hop(settings, paths[0], log_dir)
    # python -m batch runs on the engine a CPU deployment serves: ONNX FP32 when given, else
    # the main run's; its yardsticks (limit, served cell) are that engine's.
    batch = BatchPlan(
        settings.onnx_model_dir or settings.model_dir,
        settings.model_name,
        repeated_source(image_dir, out / "batch" / "images"),
        out / "batch",
        log_dir,
        max(settings.concurrency),
    )
    batch_here = batch.model_dir == settings.model_dir
    if batch_here:
        batch.in_process(limit, limit_again(settings, image_dir, log_dir, kind_of, "limit"))

    agreements: dict[str, str] = {}
    ours = dataclasses.replace(
        OURS,
        predictor_args=settings.served_predictor_args,
        transformer_args=settings.served_transformer_args,
    )
    cells = measure_pipeline(
        ours,
        settings,
        blobs,
        names,
        kinds,
        expected_top1,
        log_dir,
        agreements,
        batch_through(batch) if batch_here else None,
    )
    if not settings.skip_peer:
        cells += measure_pipeline(
            STOCK, settings, blobs, names, kinds, expected_top1, log_dir, agreements
        )

    engine_part = measure_engines(
        settings,
        image_dir,
        blobs,
        names,
        kinds,
        log_dir,
        limit,
        cells,
        expected_top1,
        agreements,
        batch,
    )
    overloads = measure_overload(settings, ours, blobs[0], out, log_dir)
    log_cost = measure_prediction_log(settings, blobs, log_dir)
    tracing_cost = measure_tracing(settings, blobs, log_dir)
    triton = None if triton_install is None else measure_triton(settings, triton_install, blobs)
    ratios = compute_ratios(cells, limit, hop)
    return Report(
        environment={
            **environment(),
            # Other work on the machine skews every number; a high load before the run says so.
            "loadavg_before": [round(v, 2) for v in load_before],
        },
        image_set=describe(image_set),
        settings={
            "concurrency": list(settings.concurrency),
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "limit_seconds_per_batch_size": settings.limit_seconds,
            "max_requests_per_cell": settings.max_requests,
            "quick": settings.quick,
            "served_predictor_args": list(settings.served_predictor_args),
            "served_transformer_args": list(settings.served_transformer_args),
            "skip_peer": settings.skip_peer,
            "model_dir": str(settings.model_dir),
            "model_name": settings.model_name,
        },
        limit=limit,
        cells=cells,
        hop=hop,
        ratios=ratios,
        targets=evaluate_targets(ratios, cells),
        top1_agreement=agreements,
        runtime_s=time.perf_counter() - started,
        batch=batch.result(),
        engines=(
            None
            if engine_part is None
            else {"json": engine_part["json"], "table": engine_part["table"]}
        ),
        triton=(
            None if triton is None else {"json": triton.to_json(), "table": triton.format_table()}
        ),
        overload={"json": overload.to_json(overloads), "table": overload.format_table(overloads)},
        prediction_log=(
            None
            if log_cost is None
            else {"json": log_cost.to_json(), "table": log_cost.format_table()}
        ),
        tracing={"json": tracing_cost.to_json(), "table": tracing_cost.format_table()},
    )


class EnginePart(TypedDict):
    """measure_engines' answer: the report's parts and the other engines' served cells."""

    json: dict[str, Any]
    table: str
    cells: list[CellResult]


def measure_engines(
    settings: BenchSettings,
    image_dir: Path,
    blobs: list[bytes],
    names: list[str],
    kinds: list[str],
    log_dir: Path,
    limit: LimitResult,
    cells: list[CellResult],
    expected_top1: dict[str, int],
    agreements: dict[str, str],
    batch: BatchPlan,
) -> EnginePart | None:
    """The ONNX repositories' limits and served pipelines beside TorchScript's (the main run's),
    the ratios between them and INT8's fidelity; None when no ONNX repository was given.
    `batch` runs on the ONNX FP32 engine, after its limit and while its pipeline serves."""
    others = [
        (name, directory)
        for name, directory in (
            (engines.ONNX_FP32, settings.onnx_model_dir),
            (engines.ONNX_INT8, settings.int8_model_dir),
            (engines.OPENVINO_FP32, settings.openvino_model_dir),
            (engines.OPENVINO_INT8, settings.openvino_int8_model_dir),
        )
        if directory is not None
    ]
    if not others:
        return None
    runs = [
        engines.EngineRun(engines.TORCHSCRIPT, limit, [c for c in cells if c.pipeline == SERVED])
    ]
    kind_of = dict(zip(names, kinds, strict=True))
    for name, directory in others:
        engine_settings = dataclasses.replace(settings, model_dir=directory)
        slug = name.lower().replace(" ", "-")
        print(f"[bench] measuring the {name} limit", file=sys.stderr, flush=True)
        engine_limit, top1 = measure_limit(
            engine_settings, image_dir, log_dir, kind_of, f"limit-{slug}.log"
        )
        spec = dataclasses.replace(OURS, name=f"{SERVED} ({name})")
        batch_here = directory == batch.model_dir
        if batch_here:
            batch.in_process(
                engine_limit,
                limit_again(engine_settings, image_dir, log_dir, kind_of, f"limit-{slug}"),
            )
        engine_cells = measure_pipeline(
            spec,
            engine_settings,
            blobs,
            names,
            kinds,
            top1,
            log_dir,
            agreements,
            batch_through(batch) if batch_here else None,
        )
        agreements[f"{name} limit vs TorchScript limit"] = (
            f"{sum(top1.get(n) == expected_top1.get(n) for n in names)}/{len(names)}"
        )
        runs.append(engines.EngineRun(name, engine_limit, engine_cells))
    fidelity = None
    if settings.onnx_model_dir is not None and settings.int8_model_dir is not None:
        fidelity = run_json_module(
            "bench.fidelity",
            [
                "--fp32",
                str(settings.onnx_model_dir),
                "--int8",
                str(settings.int8_model_dir),
                "--model_name",
                settings.model_name,
            ],
            log_dir / "fidelity.log",
        )
    ratios = engines.engine_ratios(runs)
    default = default_engine_repository(settings)[0]
    targets = engines.engine_targets(ratios, fidelity)
    targets += engines.default_engine_targets(runs, default, cpu_kind())
    return {
        "json": engines.to_json(runs, ratios, targets, fidelity),
        "table": engines.format_engines(runs, ratios, targets, fidelity),
        "cells": [cell for run in runs[1:] for cell in run.cells],
    }


# --- overload: 256 clients, the default engine and TorchScript (issue 21) ----------------------


def default_engine_repository(settings: BenchSettings) -> tuple[str, Path | None]:
    """The default engine for this CPU and its repository (None: not given to this run)."""
    repositories = {
        "openvino-int8": (engines.OPENVINO_INT8, settings.openvino_int8_model_dir),
        "openvino": (engines.OPENVINO_FP32, settings.openvino_model_dir),
        "onnx": (engines.ONNX_FP32, settings.onnx_model_dir),
        "int8": (engines.ONNX_INT8, settings.int8_model_dir),
    }
    return repositories.get(default_engine(), (engines.TORCHSCRIPT, None))


def served_engine(settings: BenchSettings) -> tuple[str, Path]:
    """The default engine for this CPU and its repository, TorchScript's when that one was not
    given to this run."""
    name, model_dir = default_engine_repository(settings)
    return (name, model_dir) if model_dir is not None else (engines.TORCHSCRIPT, settings.model_dir)


def measure_overload(
    settings: BenchSettings, spec: PipelineSpec, image: bytes, out: Path, log_dir: Path
) -> list[overload.OverloadRun]:
    """bench.overload on the default engine for this CPU (when its repository was given) and on
    TorchScript (the main run's repository)."""
    runs: list[tuple[str, Path]] = []
    name, model_dir = default_engine_repository(settings)
    if model_dir is not None:
        runs.append((f"{name} (default)", model_dir))
    runs.append((engines.TORCHSCRIPT, settings.model_dir))
    return overload.measure(
        runs, spec, settings.model_name, image, out / "overload", log_dir / "overload"
    )


# --- the prediction log's cost (issue 22): only with --prediction_log_db -----------------------


def measure_prediction_log(
    settings: BenchSettings, blobs: list[bytes], log_dir: Path
) -> prediction_log.LogCost | None:
    """Served c16 with the log on against off, on the default engine (TorchScript when its
    repository was not given); None without a PostgreSQL."""
    if settings.prediction_log_db is None:
        print("[bench] prediction log: skipped (no --prediction_log_db)", file=sys.stderr)
        return None
    name, model_dir = served_engine(settings)
    return prediction_log.measure(
        name,
        model_dir,
        settings.model_name,
        settings.prediction_log_db,
        blobs,
        log_dir / "prediction-log",
        settings.served_predictor_args,
        settings.served_transformer_args,
        settings.warmup_s,
        settings.duration_s,
        settings.max_requests,
        rounds=1 if settings.quick else prediction_log.DEFAULT_ROUNDS,
    )


# --- tracing's cost (issue 24) -----------------------------------------------------------------


def measure_tracing(
    settings: BenchSettings, blobs: list[bytes], log_dir: Path
) -> tracing.TracingCost:
    """Served c16 with tracing on (sampling 1.0) against off, on the default engine
    (TorchScript when its repository was not given)."""
    name, model_dir = served_engine(settings)
    return tracing.measure(
        name,
        model_dir,
        settings.model_name,
        blobs,
        log_dir / "tracing",
        settings.served_predictor_args,
        settings.served_transformer_args,
        settings.warmup_s,
        settings.duration_s,
        settings.max_requests,
        rounds=1 if settings.quick else tracing.DEFAULT_ROUNDS,
    )


# --- Triton beside our predictor (issue 21): only with --triton_dir ---------------------------


def measure_triton(
    settings: BenchSettings, install: TritonInstall, blobs: list[bytes]
) -> triton_compare.TritonComparison:
    """NVIDIA Triton and our predictor on the ONNX FP32 file, one at a time (bench/triton/);
    raises RuntimeError or TimeoutError when a server does not start."""
    if settings.onnx_model_dir is None:
        raise ValueError("--triton_dir needs --onnx_model_dir (Triton runs the ONNX FP32 file)")
    print("[bench] measuring NVIDIA Triton beside our predictor", file=sys.stderr, flush=True)
    stage = triton_compare.StageSettings(
        install=install,
        onnx_model_dir=settings.onnx_model_dir,
        model_name=settings.model_name,
        concurrency=settings.concurrency,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        max_requests=settings.max_requests,
        work_dir=settings.out / "triton",
        log_dir=settings.out / "logs",
        rounds=settings.triton_rounds,
        predictor_args=settings.served_predictor_args,
        transformer_args=settings.served_transformer_args,
    )
    return triton_compare.measure(stage, blobs)


def main(argv: list[str] | None = None) -> int:
    """Run, write bench.json and bench.png under --out, print the table; 1 on a failed start."""
    settings = parse(argv)
    try:
        report = run(settings)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    report.write_json(settings.out / "bench.json")
    report.plot(settings.out / "bench.png")
    print(report.format_table())
    print(f"\nWrote {settings.out / 'bench.json'} and {settings.out / 'bench.png'}")
    return 0
