"""The benchmark stage: our predictor and Triton on the same ONNX file, the same pixels.

Both servers run the ONNX repository's model.onnx with onnxruntime (ours: the predictor's
engine; Triton: the python backend's `model.py`, same session options and threads). Both are
started, checked to give the same logits for every image of the set, then measured one at a
time with single-image V2 gRPC requests at each concurrency, ours and Triton's cells adjacent
and their order swapped every time, for `rounds` rounds: the machine's speed drifts by 10-20%
over minutes, which cells measured far apart would turn into the ratio. The server not under
load idles meanwhile (its CPU in the window is recorded, to show it does).

Then, when asked, the same with our transformer in front of each (JPEG in, pixels forwarded
over gRPC to our predictor or to Triton): the transformer needs only ModelReady and
ModelInfer from the server behind it, which Triton answers.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from common.cpus import available_cpus
from common.modelrepo import resolve
from harness.servers import ServerProcess, start

from ..load import Client, LoadRun, client_for, closed_loop
from ..observe import mean_between
from ..stats import V2_GRPC, summarize
from ..support import environment
from .install import TritonInstall
from .pixels import PixelSender, TensorNames, build_inputs, decode_all, pixel_client
from .repository import write_repository
from .results import (
    DIRECT,
    OURS,
    TRITON,
    VIA_TRANSFORMER,
    Agreement,
    Cell,
    TritonComparison,
    cpu_flags,
)
from .server import TritonProcess, rows_per_execution, running_triton

DEFAULT_ROUNDS = 3
# Same file, same onnxruntime, same options, batch 1 each: the logits should be the same bits;
# these bounds allow only for a different kernel order, nothing a model change would pass.
RTOL, ATOL = 1e-5, 1e-5


@dataclass(frozen=True)
class StageSettings:
    """What the stage needs from the benchmark's settings."""

    install: TritonInstall
    onnx_model_dir: Path
    model_name: str
    concurrency: tuple[int, ...]
    warmup_s: float
    duration_s: float
    max_requests: int
    work_dir: Path  # the Triton repository and server log go here
    log_dir: Path  # our servers' logs
    rounds: int = DEFAULT_ROUNDS
    via_transformer: bool = True
    threads: int | None = None  # intra-op threads of both engines: the predictor's default
    predictor_args: tuple[str, ...] = ()
    transformer_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Side:
    """One side of the comparison: the processes it runs and the one serving the model."""

    name: str  # OURS or TRITON
    processes: tuple[ServerProcess, ...]
    server: ServerProcess  # our predictor, or tritonserver


@dataclass(frozen=True)
class Probe:
    """CPU seconds of every process, and the measured server's /metrics, at a window edge."""

    cpu: Mapping[str, float | None]
    metrics: str


def batch_images(side: Side, before: str, after: str) -> float | None:
    """Mean images per forward pass between two scrapes of the side's server."""
    if isinstance(side.server, TritonProcess):
        return rows_per_execution(before, after)
    return mean_between(before, after, "predictor_batch_size")


def measure_cell(
    front: str,
    side: Side,
    idle: Sequence[ServerProcess],
    client: Client,
    concurrency: int,
    round_: int,
    settings: StageSettings,
    image_count: int,
) -> Cell:
    """Closed-loop load on one side at one concurrency; the other side's processes idle."""
    everyone = [*side.processes, *idle]

    def probe() -> Probe:
        return Probe({p.name: p.cpu_seconds() for p in everyone}, side.server.metrics())

    run: LoadRun[Probe] = closed_loop(
        client,
        image_count,
        concurrency,
        settings.warmup_s,
        settings.duration_s,
        settings.max_requests,
        probe,
    )
    window = run.in_window()
    ok = [s for s in window if s.ok]
    window_s = run.window_seconds()

    def cpu_seconds(processes: Sequence[ServerProcess]) -> float | None:
        total = 0.0
        for process in processes:
            before, after = run.before.cpu[process.name], run.after.cpu[process.name]
            if before is None or after is None:
                return None
            total += after - before
        return total

    busy, idled = cpu_seconds(side.processes), cpu_seconds(idle)
    cell = Cell(
        front=front,
        server=side.name,
        concurrency=concurrency,
        round=round_,
        images_per_s=len(ok) / window_s,
        latency=summarize([s.latency_s for s in ok]),
        requests=len(window),
        errors=sum(not s.ok for s in run.samples),
        cpu_ms_per_image=None if busy is None or not ok else busy * 1000 / len(ok),
        batch_images=batch_images(side, run.before.metrics, run.after.metrics),
        idle_cpu_pct=None if idled is None else 100 * idled / window_s,
    )
    print(
        f"[bench] triton stage, {front}, {side.name} c{concurrency} round {round_ + 1}: "
        f"{cell.images_per_s:.1f} images/s, p50 {cell.latency.p50_ms:.0f} ms, "
        f"{cell.errors} errors",
        file=sys.stderr,
        flush=True,
    )
    return cell


def alternate(
    front: str,
    sides: tuple[Side, Side],
    clients: Mapping[str, Client],
    settings: StageSettings,
    image_count: int,
) -> list[Cell]:
    """Every concurrency for `rounds` rounds, the two sides' cells adjacent; which goes first
    swaps from one concurrency to the next and, for each concurrency, from round to round."""
    cells = []
    for round_ in range(settings.rounds):
        for index, concurrency in enumerate(settings.concurrency):
            order = sides if (round_ + index) % 2 == 0 else sides[::-1]
            for side in order:
                other = sides[1] if side is sides[0] else sides[0]
                cells.append(
                    measure_cell(
                        front,
                        side,
                        other.processes,
                        clients[side.name],
                        concurrency,
                        round_,
                        settings,
                        image_count,
                    )
                )
    return cells


def logits_agreement(
    ours: str, triton: str, model: str, pixels: Sequence[np.ndarray], names: TensorNames
) -> Agreement:
    """Every image's logits from both servers (gRPC targets `ours`, `triton`), compared."""
    inputs = build_inputs(pixels, names)
    senders = [PixelSender(target, model, inputs, names) for target in (ours, triton)]
    try:
        pairs = [(senders[0].logits(i), senders[1].logits(i)) for i in range(len(pixels))]
    finally:
        for sender in senders:
            sender.close()
    return Agreement(
        images=len(pairs),
        top1_matches=sum(int(np.argmax(a)) == int(np.argmax(b)) for a, b in pairs),
        max_abs_diff=max(float(np.max(np.abs(a - b))) for a, b in pairs),
        rtol=RTOL,
        atol=ATOL,
        allclose=all(np.allclose(b, a, rtol=RTOL, atol=ATOL) for a, b in pairs),
    )


def transformer_top1(clients: Mapping[str, Client], image_count: int) -> str:
    """'k/n' images whose top-1 class is the same through both transformers (untimed)."""
    senders = {name: client.make() for name, client in clients.items()}
    try:
        matches = sum(senders[OURS].top1(i) == senders[TRITON].top1(i) for i in range(image_count))
    finally:
        for sender in senders.values():
            sender.close()
    return f"{matches}/{image_count}"


def model_args(settings: StageSettings) -> list[str]:
    """The flags both our servers take for the ONNX repository."""
    return ["--model_dir", str(settings.onnx_model_dir), "--model_name", settings.model_name]


def with_transformer(side: Side, settings: StageSettings, stack: ExitStack) -> Side:
    """`side` with our transformer started in front of its server (stopped by `stack`);
    raises RuntimeError or TimeoutError when the transformer does not become ready."""
    transformer = start(
        f"triton-stage-transformer-{side.name}",
        "transformer",
        [
            *model_args(settings),
            "--predictor_host",
            side.server.grpc_target,
            "--predictor_protocol",
            "grpc-v2",
            *settings.transformer_args,
        ],
        settings.log_dir,
    )
    stack.callback(transformer.stop)
    transformer.wait_ready()
    return Side(side.name, (transformer, side.server), side.server)


def measure(settings: StageSettings, images: Sequence[bytes]) -> TritonComparison:
    """Start both servers on the same ONNX file, compare their logits, measure them one at a
    time (then with our transformer in front of each). Raises RuntimeError or TimeoutError
    when a server does not start, ModelRepositoryError for a repository that is not ONNX."""
    version = resolve(settings.onnx_model_dir, settings.model_name)
    names = TensorNames.of(version)
    pixels = decode_all(images, version)
    intra_op = settings.threads or available_cpus()  # the predictor's default thread count
    repository = write_repository(
        settings.onnx_model_dir, settings.model_name, settings.work_dir / "repository", intra_op
    )
    extra: dict[str, str] = {}
    with ExitStack() as stack:
        print(
            "[bench] triton stage: starting our predictor and Triton", file=sys.stderr, flush=True
        )
        predictor = start(
            "triton-stage-predictor",
            "predictor",
            [*model_args(settings), "--num_threads", str(intra_op), *settings.predictor_args],
            settings.log_dir,
        )
        stack.callback(predictor.stop)
        predictor.wait_ready()
        triton = stack.enter_context(
            running_triton(settings.install, repository, settings.work_dir / "server")
        )
        agreement = logits_agreement(
            predictor.grpc_target, triton.grpc_target, settings.model_name, pixels, names
        )
        sides = (Side(OURS, (predictor,), predictor), Side(TRITON, (triton,), triton))
        clients = {
            side.name: pixel_client(side.server.grpc_target, settings.model_name, pixels, names)
            for side in sides
        }
        cells = alternate(DIRECT, sides, clients, settings, len(pixels))
        if settings.via_transformer:
            via = (
                with_transformer(sides[0], settings, stack),
                with_transformer(sides[1], settings, stack),
            )
            clients = {
                side.name: client_for(
                    V2_GRPC,
                    side.processes[0].url,
                    side.processes[0].grpc_target,
                    settings.model_name,
                    images,
                )
                for side in via
            }
            extra["transformer_top1_agreement"] = transformer_top1(clients, len(images))
            cells += alternate(VIA_TRANSFORMER, via, clients, settings, len(images))
        versions: dict[str, str | None] = {
            "tritonserver": triton.server_version(),
            **settings.install.versions(),
            "onnxruntime_ours": _version("onnxruntime"),
        }
    env = environment()
    return TritonComparison(
        cells=cells,
        agreement=agreement,
        versions=versions,
        machine={
            "cpu_model": env.get("cpu_model"),
            "available_cpus": env.get("available_cpus"),
            "simd_flags": cpu_flags(),
        },
        settings={
            "rounds": settings.rounds,
            "concurrency": list(settings.concurrency),
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "intra_op_threads": intra_op,
            "via_transformer": settings.via_transformer,
            "triton_repository": str(repository),
            **extra,
        },
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
