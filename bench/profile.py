"""Where a server's time goes under ceiling load: py-spy on the predictor and the transformer.

    python -m bench.profile --model_dir model_repository [--seconds 8] [--in_flight 64]
        [--target predictor|transformer] [--out bench-results/profile]

Starts the zero-cost predictor (and, for `--target transformer`, the transformer in front of
it), loads the target with h2load as `bench.ceiling` does, and samples every server process
with py-spy (`pip install py-spy`; ptrace rights needed) for the window. Writes each process's
folded stacks (`<name>.folded`, for flamegraph tools or speedscope) and prints the frames that
hold the most samples: inclusive (the frame anywhere on the stack) and self (the frame on top).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness.servers import ROOT, ServerProcess, start

from . import h2load
from .ceiling import check_answer, image_request, pixels_request
from .images import ORIGINAL, build_image_set


def summarize(folded: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top inclusive frames, top self frames) of py-spy's raw folded output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return total, inclusive.most_common(top), own.most_common(top)


def _short(frame: str) -> str:
    """'func (/long/path/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py:12)'."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "/work/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if where.startswith("wt/") or where.startswith("main/"):
        where = where.split("/", 2)[-1]
    return f"{name} ({where}" if where else name


def main(argv: list[str] | None = None) -> int:
    """Profile, write folded stacks, print the summaries."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, default=Path("model_repository"))
    p.add_argument("--model_name", default="image-classifier")
    p.add_argument("--target", choices=("predictor", "transformer"), default="predictor")
    p.add_argument("--images", type=int, default=1, help="Images per predictor request.")
    p.add_argument("--in_flight", type=int, default=64)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second.")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    p.add_argument("--predictor_args", default="")
    p.add_argument("--transformer_args", default="")
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("bench.profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return 1
    model_dir = args.model_dir if args.model_dir.is_absolute() else Path.cwd() / args.model_dir
    args.out.mkdir(parents=True, exist_ok=True)
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp_text:
        tmp = Path(tmp_text)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.zero_model",
                "--source",
                str(model_dir),
                "--target",
                str(tmp),
                "--model_name",
                args.model_name,
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        common = ["--model_dir", str(tmp), "--model_name", args.model_name]
        try:
            predictor = start(
                "profile-predictor", "predictor", [*common, *args.predictor_args.split()], args.out
            )
            servers.append(predictor)
            predictor.wait_ready()
            if args.target == "transformer":
                transformer = start(
                    "profile-transformer",
                    "transformer",
                    [
                        *common,
                        "--predictor_host",
                        predictor.grpc_target,
                        *args.transformer_args.split(),
                    ],
                    args.out,
                )
                servers.append(transformer)
                transformer.wait_ready()
                image = next(
                    i for i in build_image_set(ROOT / "tests" / "data") if i.kind == ORIGINAL
                )
                message = image_request(args.model_name, image.data)
                frame_check = ("class_id", 1)
                target = transformer
            else:
                message = pixels_request(args.model_name, "pixels__0", (224, 224, 3), args.images)
                frame_check = ("logits__0", args.images)
                target = predictor
            check_answer(target.grpc_target, message, *frame_check)
            body = tmp / "body.grpc"
            body.write_bytes(h2load.grpc_frame(message))
            load = subprocess.Popen(
                h2load.command(
                    h2load.find_h2load(),
                    target.grpc_target,
                    body,
                    args.in_flight,
                    args.connections,
                    args.seconds + 1.0,
                    0.5,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            time.sleep(1.0)
            spies = [
                (
                    server,
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "--format",
                            "raw",
                            "--rate",
                            str(args.rate),
                            "--duration",
                            str(round(args.seconds)),
                            "--pid",
                            str(server.process.pid),
                            "--output",
                            str(args.out / f"{server.name}.folded"),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                )
                for server in servers
            ]
            for _, spy in spies:
                spy.wait(timeout=args.seconds + 60)
            out, _ = load.communicate(timeout=args.seconds + 60)
        finally:
            for server in reversed(servers):
                server.stop()
    result = h2load.parse_output(out)
    print(f"{args.target} under {args.in_flight} in flight: {result.requests_per_s:,.0f} req/s")
    for server, spy in spies:
        path = args.out / f"{server.name}.folded"
        if spy.returncode != 0 or not path.exists():
            print(f"py-spy failed on {server.name}: {spy.stderr.read() if spy.stderr else ''}")
            continue
        total, inclusive, own = summarize(path.read_text(), args.top)
        print(f"\n== {server.name}: {total} samples ({path})")
        print("-- inclusive")
        for frame, count in inclusive:
            print(f"{100 * count / total:6.1f}%  {frame}")
        print("-- self")
        for frame, count in own:
            print(f"{100 * count / total:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
