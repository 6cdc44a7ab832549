"""The c1 floor: what two Python gRPC hops cost one request, beside what ours cost.

    python -m bench.floor --model_dir model_repository \
        [--engine_dir model_repository-openvino-int8] [--rounds 5] [--seconds 2] [--out DIR]

Issue 21 asks for p50 at concurrency 1 within 1.25x of the in-process single-image time. This
measures how much of that a Python request path can give back at all. With a zero-cost model
(`bench.zero_model`, the contract of `--model_dir`), so that only request paths are timed, it
serves on loopback:

- bare: `bench.bare_grpc`, a grpc.aio server answering a constant;
- bare relay: the same server with `--relay_to` the bare one: two hops, nothing else;
- our predictor alone, and our transformer in front of it.

One synchronous gRPC client sends one call at a time, pre-serialised: the transformer's hop
message (one image's UINT8 pixels) to the bare server, the relay and our predictor; one
original photo and one phone photo of the bench's image set to our transformer. Every round
measures each cell for `--seconds`, in an order reversed every other round (the machine
drifts). Per cell: the median of the rounds' p50 and each server's CPU-ms per call.

The hops' cost is the cell less the work: the bare relay's p50 is the floor; ours is the
transformer cell less the photo's decode, timed in this process with the transformer's own
function (`vision.imaging.preprocess`). With `--engine_dir`, `bench.limit` times that engine's
in-process single image for each photo in every round, and the report gives p50 c1 / single
image for each photo as the floor would reach it and as ours does (the hops' cost added to the
single-image time). Prints a table; writes `floor.json` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.cli import DEFAULT_MODEL_NAME
from common.modelrepo import resolve
from harness.servers import ServerProcess, start
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

from .ceiling import image_request, pixels_request, wait_grpc_ready
from .h2load import MODEL_INFER_PATH
from .images import ORIGINAL, PHONE, BenchImage, build_image_set
from .support import environment
from .zero_model import export_zero_cost

ROOT = Path(__file__).resolve().parent.parent
WARMUP_CALLS = 50
CALL_TIMEOUT_S = 10.0
BARE, RELAY = "bare", "relay"
PREDICTOR, TRANSFORMER = "predictor", "transformer"
BARE_TWO_HOPS = "bare, two hops (pixels)"


def ours_two_hops(kind: str) -> str:
    """The name of the cell that sends a photo of `kind` through our transformer."""
    return f"ours, two hops ({kind} photo)"


@dataclass(frozen=True)
class Cell:
    """One thing measured: a message sent to a server, and the servers it passes through."""

    name: str
    server: str  # the server the client calls
    message: bytes
    through: tuple[str, ...]  # every server process the call passes through


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; raises SystemExit with the usage for bad flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--engine_dir", type=Path, default=None)
    p.add_argument("--images", type=Path, default=ROOT / "tests" / "data")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        p.error(f"--rounds {args.rounds} must be >= 1 and --seconds {args.seconds} > 0")
    return args


def photos(images: Path) -> dict[str, BenchImage]:
    """The first original and the first phone photo of the bench's image set, by kind."""
    chosen: dict[str, BenchImage] = {}
    for image in build_image_set(images):
        chosen.setdefault(image.kind, image)
    missing = {ORIGINAL, PHONE} - set(chosen)
    if missing:
        raise SystemExit(f"bench.floor: no {sorted(missing)} photo built from {images}")
    return chosen


def decode_ms(params: Preprocessing, data: bytes, seconds: float) -> float:
    """Median time of the transformer's decode + preprocess of `data` in this process."""
    limits = DecodeLimits()  # the transformer's default
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 3:
        started = time.perf_counter()
        preprocess(data, params, limits)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def single_image_ms(
    engine_dir: Path, model_name: str, chosen: dict[str, BenchImage], seconds: float, work: Path
) -> dict[str, float]:
    """`bench.limit`'s in-process single-image time of each photo with the engine of
    `engine_dir` (in its own process, as the bench runs it); raises RuntimeError with its
    stderr when it fails."""
    folder = work / "limit-images"
    folder.mkdir(exist_ok=True)
    for kind, image in chosen.items():
        (folder / f"{kind}.jpg").write_bytes(image.data)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.limit",
            "--model_dir",
            str(engine_dir),
            "--model_name",
            model_name,
            "--images",
            str(folder),
            "--batch_sizes",
            "1",
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.limit exited {done.returncode}:\n{done.stderr[-3000:]}")
    by_image = json.loads(done.stdout)["single_image_ms_by_image"]
    return {kind: by_image[f"{kind}.jpg"] for kind in chosen}


def measure_cell(
    call: Callable[..., bytes], cell: Cell, servers: dict[str, ServerProcess], seconds: float
) -> tuple[float, dict[str, float]]:
    """One cell for `seconds`: p50 ms, and CPU-ms per call of every server it passes."""
    before = {name: servers[name].cpu_seconds() for name in cell.through}
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        call(cell.message, timeout=CALL_TIMEOUT_S)
        latencies.append(time.perf_counter() - started)
    cpu: dict[str, float] = {}
    for name in cell.through:
        first, last = before[name], servers[name].cpu_seconds()
        if first is not None and last is not None:
            cpu[name] = (last - first) / len(latencies) * 1000
    return statistics.median(latencies) * 1000, cpu


def median_of(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over rounds."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Start the servers, measure every cell in alternating rounds, and return the report."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as work:
        return measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """`run` with a working directory for the zero-cost model and the limit's images."""
    logs = args.out / "logs" / "floor"
    zero = work / "zero"
    export_zero_cost(args.model_dir, zero, args.model_name)
    version = resolve(zero, args.model_name)
    config, params = version.config, Preprocessing.read(version.model_dir)
    pixels_input, logits_output = config.inputs[0], config.outputs[0]
    chosen = photos(args.images)
    common = ["--model_dir", str(zero), "--model_name", args.model_name]
    bare_args = ["--output", logits_output.name, "--classes", str(logits_output.dims[-1])]
    servers: dict[str, ServerProcess] = {}
    try:
        servers[BARE] = start(BARE, "bench.bare_grpc", bare_args, logs)
        wait_grpc_ready(servers[BARE])
        relay_args = [*bare_args, "--relay_to", servers[BARE].grpc_target]
        servers[RELAY] = start(RELAY, "bench.bare_grpc", relay_args, logs)
        servers[PREDICTOR] = start(PREDICTOR, "predictor", common, logs)
        servers[PREDICTOR].wait_ready()
        upstream = ["--predictor_host", servers[PREDICTOR].grpc_target]
        servers[TRANSFORMER] = start(TRANSFORMER, "transformer", [*common, *upstream], logs)
        wait_grpc_ready(servers[RELAY])
        servers[TRANSFORMER].wait_ready()

        pixels = pixels_request(
            args.model_name, pixels_input.name, tuple(pixels_input.dims), rows=1
        )
        cells = [
            Cell("bare, one hop (pixels)", BARE, pixels, (BARE,)),
            Cell(BARE_TWO_HOPS, RELAY, pixels, (RELAY, BARE)),
            Cell("our predictor (pixels)", PREDICTOR, pixels, (PREDICTOR,)),
            *(
                Cell(
                    ours_two_hops(kind),
                    TRANSFORMER,
                    image_request(args.model_name, image.data),
                    (TRANSFORMER, PREDICTOR),
                )
                for kind, image in chosen.items()
            ),
        ]
        channels = {name: grpc.insecure_channel(s.grpc_target) for name, s in servers.items()}
        calls = {name: c.unary_unary(MODEL_INFER_PATH) for name, c in channels.items()}
        for cell in cells:
            for _ in range(WARMUP_CALLS):
                calls[cell.server](cell.message, timeout=CALL_TIMEOUT_S)

        p50: dict[str, list[float]] = {cell.name: [] for cell in cells}
        cpu: dict[str, list[dict[str, float]]] = {cell.name: [] for cell in cells}
        decode: list[dict[str, float]] = []
        single: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            for cell in cells if round_ % 2 == 0 else cells[::-1]:
                latency, per_call = measure_cell(calls[cell.server], cell, servers, args.seconds)
                p50[cell.name].append(latency)
                cpu[cell.name].append(per_call)
            decode.append(
                {
                    kind: decode_ms(params, image.data, args.seconds / 2)
                    for kind, image in chosen.items()
                }
            )
            if args.engine_dir is not None:
                single.append(
                    single_image_ms(args.engine_dir, args.model_name, chosen, args.seconds, work)
                )
        for channel in channels.values():
            channel.close()
    finally:
        for server in servers.values():
            server.stop()

    p50_ms = {cell.name: statistics.median(p50[cell.name]) for cell in cells}
    measured = {
        cell.name: {
            "p50_ms": p50_ms[cell.name],
            "p50_ms_by_round": p50[cell.name],
            "cpu_ms_per_call": median_of(cpu[cell.name]),
        }
        for cell in cells
    }
    decode_by_kind = median_of(decode)
    floor_ms = p50_ms[BARE_TWO_HOPS]
    ours_ms = {kind: p50_ms[ours_two_hops(kind)] - decode_by_kind[kind] for kind in chosen}
    report: dict[str, object] = {
        "environment": environment(),
        "photos": {kind: {"name": i.name, "bytes": i.size_bytes} for kind, i in chosen.items()},
        "cells": measured,
        "decode_ms": decode_by_kind,
        "hops_ms": {"floor": floor_ms, "ours": ours_ms},
    }
    if single:
        single_by_kind = median_of(single)
        report["engine_dir"] = str(args.engine_dir)
        report["single_image_ms"] = single_by_kind
        report["p50_c1_over_single_image"] = {
            kind: {
                "floor": (ms + floor_ms) / ms,
                "ours": (ms + ours_ms[kind]) / ms,
            }
            for kind, ms in single_by_kind.items()
        }
    return report


def print_report(report: dict[str, object]) -> None:
    """The table a person reads."""
    env = report["environment"]
    assert isinstance(env, dict)
    print(f"CPU: {env.get('cpu_model')} ({env.get('available_cpus')} CPUs available)")
    cells = report["cells"]
    assert isinstance(cells, dict)
    print(f"{'cell':36s} {'p50 ms':>8s}  CPU ms per call")
    for name, cell in cells.items():
        per_call = ", ".join(f"{k} {v:.2f}" for k, v in cell["cpu_ms_per_call"].items())
        print(f"{name:36s} {cell['p50_ms']:8.2f}  {per_call}")
    print("decode in-process (ms):", _fmt(report["decode_ms"]))
    hops = report["hops_ms"]
    assert isinstance(hops, dict)
    print(f"two hops cost (ms): floor {hops['floor']:.2f}; ours {_fmt(hops['ours'])}")
    ratios = report.get("p50_c1_over_single_image")
    if isinstance(ratios, dict):
        print("single image in-process (ms):", _fmt(report["single_image_ms"]))
        for kind, pair in ratios.items():
            print(
                f"p50 c1 / single image, {kind}: floor {pair['floor']:.2f}x, "
                f"ours {pair['ours']:.2f}x (issue 21's target 1.25x)"
            )


def _fmt(values: object) -> str:
    assert isinstance(values, dict)
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write floor.json."""
    args = parse(argv)
    report = run(args)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floor.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
