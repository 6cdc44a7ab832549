"""The request-path ceiling: how many calls the servers answer when the model costs nothing.

    python -m bench.ceiling --model_dir model_repository [--duration 5] [--out bench-results]

On a GPU the model stops being the bottleneck and the Python request path takes its place. This
measures that path here, without a GPU, in one run:

1. a zero-cost model with the real tensor contract (`bench.zero_model`) in a temporary
   repository;
2. a bare grpc.aio server answering a constant (`bench.bare_grpc`): the most Python gRPC
   alone answers on this machine;
3. the predictor serving the zero-cost model, with 1- and 8-image requests at each number of
   calls in flight, beside (2);
4. the transformer in front of that predictor (decoding is its only real work), against its
   decode-only rate measured in-process on the same image (`bench.decode_rate`).

Load comes from h2load (`bench.h2load`), one framed ModelInferRequest replayed from C, so the
client is not the limit. Before any load, each server's answer to that exact request is checked;
during it, the bytes received say whether any call failed. Writes ceiling.json and ceiling.png.
This process imports kserve's protobuf module (never tritonclient.grpc).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from common.cli import DEFAULT_MODEL_NAME, LOCAL_MODEL_REPOSITORY, positive_ints
from common.codecs import serialize_bytes
from common.modelrepo import resolve
from harness.servers import ROOT, ServerProcess, process_cpu_seconds, start

from . import h2load
from .ceiling_report import BARE, PREDICTOR, CeilingCell, CeilingReport, DecodeRate
from .images import ORIGINAL, PHONE, build_image_set
from .observe import histogram_totals
from .support import environment, run_json_module

TRANSFORMER = "transformer"
# As shipped, and with coalescing off (every client request its own predictor call).
DEFAULT_TRANSFORMERS = (
    (TRANSFORMER, ()),
    ("transformer, no coalescing", ("--coalesce_max_images", "1")),
)
REQUEST_ID = "00000000-0000-0000-0000-000000000000"  # a uuid's length, as the transformer sends
CHECK_TIMEOUT_S = 30.0
# kserve's per-call histogram: its count is the calls a server answered.
PREDICTOR_REQUESTS_METRIC = "request_predict_seconds"
H2LOAD_GRACE_S = 30.0


@dataclass(frozen=True)
class CeilingSettings:
    """The run's settings, parsed once."""

    model_dir: Path
    model_name: str
    out: Path
    images_from: Path
    image_kind: str
    in_flight: tuple[int, ...]
    sizes: tuple[int, ...]
    connections: int
    warmup_s: float
    duration_s: float
    predictor_args: tuple[str, ...]
    transformers: tuple[tuple[str, tuple[str, ...]], ...]  # (label, extra flags)


def transformer_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """'label=--flag value' -> (label, ('--flag', 'value')); raises ArgumentTypeError."""
    label, sep, flags = text.partition("=")
    if not sep or not label.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=FLAGS, got {text!r}")
    return label.strip(), tuple(shlex.split(flags))


def parse(argv: list[str] | None = None) -> CeilingSettings:
    """Parse the command line; exits with a usage message on bad flags."""
    p = argparse.ArgumentParser(
        prog="python -m bench.ceiling",
        description="Measure the request-path ceiling of both servers with a zero-cost model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model_dir", type=Path, default=Path(LOCAL_MODEL_REPOSITORY))
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--images_from", type=Path, default=ROOT / "tests" / "data")
    p.add_argument(
        "--image_kind",
        choices=(ORIGINAL, PHONE),
        default=ORIGINAL,
        help="Which image the transformer cells send: a small photo or a 12 MP one.",
    )
    p.add_argument("--in_flight", type=positive_ints, default=positive_ints("4,16,64"))
    p.add_argument(
        "--sizes",
        type=positive_ints,
        default=positive_ints("1,8"),
        help="Images per predictor request.",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=4,
        help="HTTP/2 connections h2load spreads the calls over (think: transformers).",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="Seconds before each window.")
    p.add_argument("--duration", type=float, default=5.0, help="Seconds per window.")
    # The ceiling keeps up to 8 x 64 images in flight at the predictor: past its default batch
    # queue (64 images, sized for a real model's second of work), which would shed them.
    p.add_argument(
        "--predictor_args", default="--max_queue_size 1024", help="Extra predictor flags."
    )
    p.add_argument(
        "--transformer",
        action="append",
        type=transformer_variant,
        default=None,
        metavar="LABEL=FLAGS",
        help="A transformer configuration to measure (repeatable); default: as shipped and "
        "with coalescing off.",
    )
    args = p.parse_args(argv)
    model_dir = args.model_dir if args.model_dir.is_absolute() else Path.cwd() / args.model_dir
    return CeilingSettings(
        model_dir=model_dir,
        model_name=args.model_name,
        out=args.out,
        images_from=args.images_from,
        image_kind=args.image_kind,
        in_flight=args.in_flight,
        sizes=args.sizes,
        connections=args.connections,
        warmup_s=args.warmup,
        duration_s=args.duration,
        predictor_args=tuple(shlex.split(args.predictor_args)),
        transformers=tuple(args.transformer or DEFAULT_TRANSFORMERS),
    )


# --- requests and answers -------------------------------------------------------------------


def pixels_request(model_name: str, input_name: str, dims: tuple[int, ...], rows: int) -> bytes:
    """A serialised ModelInferRequest of `rows` UINT8 images, as the transformer sends."""
    count = rows
    for dim in dims:
        count *= dim
    return pb.ModelInferRequest(
        model_name=model_name,
        id=REQUEST_ID,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=input_name, datatype="UINT8", shape=[rows, *dims]
            )
        ],
        raw_input_contents=[bytes(range(256)) * (count // 256) + bytes(count % 256)],
    ).SerializeToString()


def image_request(model_name: str, image: bytes) -> bytes:
    """A serialised ModelInferRequest of one encoded image, as a client sends the transformer."""
    import numpy as np

    return pb.ModelInferRequest(
        model_name=model_name,
        id=REQUEST_ID,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[serialize_bytes(np.array([image], dtype=np.object_))],
    ).SerializeToString()


def check_answer(target: str, request: bytes, output: str, rows: int) -> int:
    """Send `request` once; returns the answer's gRPC frame size. Raises RuntimeError unless
    the answer holds `output` for `rows` images."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(h2load.MODEL_INFER_PATH)
        try:
            raw = call(request, timeout=CHECK_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise RuntimeError(f"{target} refused the benchmark's request: {exc}") from exc
    answer = pb.ModelInferResponse.FromString(raw)
    shapes = {o.name: list(o.shape) for o in answer.outputs}
    if output not in shapes or shapes[output][:1] != [rows]:
        raise RuntimeError(f"{target} answered outputs {shapes}, expected {output!r} [{rows}, ...]")
    return len(h2load.grpc_frame(raw))


def wait_grpc_ready(server: ServerProcess, timeout_s: float = 60.0) -> None:
    """Wait until the server answers ServerReady over gRPC; raises RuntimeError/TimeoutError."""
    deadline = time.monotonic() + timeout_s
    path = "/inference.GRPCInferenceService/ServerReady"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
        with grpc.insecure_channel(server.grpc_target) as channel:
            try:
                channel.unary_unary(path)(b"", timeout=1.0)
                return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f}s:\n{server.tail()}")


# --- one cell -------------------------------------------------------------------------------


def measure_cell(
    label: str,
    servers: list[ServerProcess],
    target: str,
    body: Path,
    expected_frame: int,
    images: int,
    in_flight: int,
    settings: CeilingSettings,
    predictor: ServerProcess | None = None,
) -> CeilingCell:
    """One h2load window against `target`, with the CPU the servers and h2load spent in it
    and, given the `predictor` behind a transformer, its calls per request in the window."""
    argv = h2load.command(
        h2load.find_h2load(),
        target,
        body,
        in_flight,
        settings.connections,
        settings.duration_s,
        settings.warmup_s,
    )
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> tuple[float, list[float | None], float | None, float | None]:
        cpus = [process_cpu_seconds(s.process.pid) for s in servers]
        calls = None
        if predictor is not None:
            calls = histogram_totals(predictor.metrics(), PREDICTOR_REQUESTS_METRIC)[1]
        return time.perf_counter(), cpus, process_cpu_seconds(process.pid), calls

    time.sleep(settings.warmup_s)
    first = sample()
    # Stop sampling a little before h2load ends its window, while it is still alive.
    time.sleep(max(settings.duration_s - 0.1, 0.05))
    last = sample()
    timer = threading.Timer(settings.warmup_s + settings.duration_s + H2LOAD_GRACE_S, process.kill)
    timer.start()
    try:
        out, err = process.communicate()
    finally:
        timer.cancel()
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}) against {label}:\n{out}{err}")
    result = h2load.parse_output(out)
    requests = result.requests_per_s * (last[0] - first[0])

    def per_request(before: float | None, after: float | None) -> float | None:
        if before is None or after is None or requests <= 0:
            return None
        return (after - before) * 1000 / requests

    by_process = {
        server.name: per_request(before, after)
        for server, before, after in zip(servers, first[1], last[1], strict=True)
    }
    known = [ms for ms in by_process.values() if ms is not None]
    cell = CeilingCell(
        server=label,
        images_per_request=images,
        in_flight=in_flight,
        requests_per_s=result.requests_per_s,
        short_answers=result.short_answers(expected_frame),
        failed=result.failed + result.errored + result.timeout,
        server_cpu_ms_per_request=sum(known) if len(known) == len(servers) else None,
        client_cpu_ms_per_request=per_request(first[2], last[2]),
        cpu_ms_by_process=by_process,
        predictor_calls_per_request=(
            None
            if first[3] is None or last[3] is None or requests <= 0
            else (last[3] - first[3]) / requests
        ),
    )
    print(
        f"[ceiling] {label} {images}x{in_flight}: {cell.requests_per_s:,.0f} req/s, "
        f"{cell.images_per_s:,.0f} images/s, {cell.errors} errors",
        file=sys.stderr,
        flush=True,
    )
    return cell


# --- the run --------------------------------------------------------------------------------


def run(settings: CeilingSettings) -> CeilingReport:
    """The whole ceiling benchmark; logs under settings.out/logs."""
    started = time.perf_counter()
    h2load.find_h2load()  # fail before starting anything
    log_dir = settings.out / "logs"
    load_before = os.getloadavg()
    image = next(i for i in build_image_set(settings.images_from) if i.kind == settings.image_kind)
    cells: list[CeilingCell] = []
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp_text:
        tmp = Path(tmp_text)
        repo = tmp / "repository"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.zero_model",
                "--source",
                str(settings.model_dir),
                "--target",
                str(repo),
                "--model_name",
                settings.model_name,
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        config = resolve(repo, settings.model_name).config
        pixels, logits = config.inputs[0], config.outputs[0]
        image_path = tmp / image.name
        image_path.write_bytes(image.data)
        raw = run_json_module(
            "bench.decode_rate",
            [
                "--model_dir",
                str(repo),
                "--model_name",
                settings.model_name,
                "--image",
                str(image_path),
                "--seconds",
                str(settings.duration_s),
            ],
            log_dir / "decode_rate.log",
        )
        decode = DecodeRate(image=image.name, image_bytes=image.size_bytes, **raw)

        bodies: dict[int, tuple[bytes, Path]] = {}
        for size in settings.sizes:
            message = pixels_request(settings.model_name, pixels.name, pixels.dims, size)
            path = tmp / f"pixels-{size}.grpc"
            path.write_bytes(h2load.grpc_frame(message))
            bodies[size] = (message, path)

        def ceiling(label: str, server: ServerProcess) -> None:
            for size in settings.sizes:
                message, path = bodies[size]
                frame = check_answer(server.grpc_target, message, logits.name, size)
                for in_flight in settings.in_flight:
                    cells.append(
                        measure_cell(
                            label,
                            [server],
                            server.grpc_target,
                            path,
                            frame,
                            size,
                            in_flight,
                            settings,
                        )
                    )

        bare = start(
            "ceiling-bare",
            "bench.bare_grpc",
            ["--output", logits.name, "--classes", str(logits.dims[-1])],
            log_dir,
        )
        try:
            wait_grpc_ready(bare)
            ceiling(BARE, bare)
        finally:
            bare.stop()

        common = ["--model_dir", str(repo), "--model_name", settings.model_name]
        predictor = start(
            "ceiling-predictor", "predictor", [*common, *settings.predictor_args], log_dir
        )
        try:
            predictor.wait_ready()
            ceiling(PREDICTOR, predictor)
            message = image_request(settings.model_name, image.data)
            body = tmp / "image.grpc"
            body.write_bytes(h2load.grpc_frame(message))
            for label, flags in settings.transformers:
                transformer = start(
                    f"ceiling-{label.replace(' ', '-')}",
                    "transformer",
                    [*common, "--predictor_host", predictor.grpc_target, *flags],
                    log_dir,
                )
                try:
                    transformer.wait_ready()
                    frame = check_answer(transformer.grpc_target, message, "class_id", 1)
                    for in_flight in settings.in_flight:
                        cells.append(
                            measure_cell(
                                label,
                                [transformer, predictor],
                                transformer.grpc_target,
                                body,
                                frame,
                                1,
                                in_flight,
                                settings,
                                predictor,
                            )
                        )
                finally:
                    transformer.stop()
        finally:
            predictor.stop()

    return CeilingReport(
        environment={
            **environment(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "h2load": _h2load_version(),
        },
        settings={
            "in_flight": list(settings.in_flight),
            "sizes": list(settings.sizes),
            "connections": settings.connections,
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "image_kind": settings.image_kind,
            "predictor_args": list(settings.predictor_args),
            "transformers": {label: list(flags) for label, flags in settings.transformers},
            "model_dir": str(settings.model_dir),
            "model_name": settings.model_name,
        },
        cells=cells,
        decode=decode,
        transformers=[label for label, _ in settings.transformers],
        runtime_s=time.perf_counter() - started,
    )


def _h2load_version() -> str | None:
    try:
        done = subprocess.run(
            [h2load.find_h2load(), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    """Run, write ceiling.json and ceiling.png under --out, print the table; 1 on failure."""
    settings = parse(argv)
    try:
        report = run(settings)
    except (RuntimeError, TimeoutError, FileNotFoundError, subprocess.SubprocessError) as exc:
        print(f"bench.ceiling: {exc}", file=sys.stderr)
        return 1
    report.write_json(settings.out / "ceiling.json")
    report.plot(settings.out / "ceiling.png")
    print(report.format_table())
    print(f"\nWrote {settings.out / 'ceiling.json'} and {settings.out / 'ceiling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
