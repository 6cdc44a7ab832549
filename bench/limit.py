"""The limit: the served model and preprocessing in one process, no serving, printed as JSON.

    python -m bench.limit --model_dir REPO --images DIR [--batch_sizes 1,2,4,8,16] [--seconds 2]

Per batch: decode + preprocess each image (`vision.imaging.preprocess`, the transformer's
own function), stack, forward (`runtime.engines.build_engine`, the predictor's own engine
for the repository's platform: TorchScript or onnxruntime). One thread of control, the
predictor's thread count and process settings. Runs in its own process because
vision.imaging imports kserve, which cannot share a process with the driver's
tritonclient.grpc.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from runtime.tuning import keep_freed_memory, prepare_environment
from vision.preprocessing import Preprocessing

prepare_environment()  # as the predictor does, before torch loads

import numpy as np  # noqa: E402

from common.cli import DEFAULT_MODEL_NAME, positive_ints  # noqa: E402
from common.cpus import available_cpus  # noqa: E402
from common.modelrepo import resolve  # noqa: E402
from runtime.engines import build_engine, plan_engine  # noqa: E402
from runtime.plan import NO_CUDA  # noqa: E402
from runtime.tensors import run_one  # noqa: E402
from vision.imaging import DecodeLimits, preprocess  # noqa: E402

DEFAULT_BATCH_SIZES = "1,2,4,8,16"


def measure(argv: list[str] | None = None) -> dict[str, object]:
    """Run the limit and return its JSON-ready result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--images", type=Path, required=True, help="Directory of encoded images.")
    p.add_argument("--batch_sizes", type=positive_ints, default=positive_ints(DEFAULT_BATCH_SIZES))
    p.add_argument("--seconds", type=float, default=2.0, help="Least time per batch size.")
    p.add_argument("--num_threads", type=int, default=None)
    args = p.parse_args(argv)

    keep_freed_memory()
    threads = args.num_threads or available_cpus()
    version = resolve(args.model_dir, args.model_name)
    params = Preprocessing.read(version.model_dir)
    limits = DecodeLimits()  # the transformer's default
    paths = sorted(args.images.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"bench.limit: no .jpg images in {args.images}")
    blobs = [path.read_bytes() for path in paths]
    plan = plan_engine(version.config.platform, "cpu", "auto", "auto", threads, NO_CUDA)
    runner = build_engine(version, plan, max(args.batch_sizes))

    # Warm the decoder and record each image's top-1 class, for agreement checks.
    top1 = {}
    for path, blob in zip(paths, blobs, strict=True):
        logits = run_one(runner, preprocess(blob, params, limits)[None])
        top1[path.name] = int(np.argmax(logits[0]))

    points = []
    single: dict[str, float] = {}
    cursor = 0
    per_image: dict[str, list[float]] = {path.name: [] for path in paths}
    for size in args.batch_sizes:
        totals: list[float] = []
        decodes: list[float] = []
        forwards: list[float] = []
        images = 0
        started = time.perf_counter()
        # At least `seconds`, at least one pass over the set, at least three batches.
        while (
            time.perf_counter() - started < args.seconds or images < len(blobs) or len(totals) < 3
        ):
            chosen = [blobs[(cursor + i) % len(blobs)] for i in range(size)]
            first = cursor
            cursor = (cursor + size) % len(blobs)
            t0 = time.perf_counter()
            batch = np.stack([preprocess(blob, params, limits) for blob in chosen])
            t1 = time.perf_counter()
            run_one(runner, batch)
            t2 = time.perf_counter()
            totals.append(t2 - t0)
            decodes.append((t1 - t0) / size)
            forwards.append(t2 - t1)
            images += size
            if size == 1:
                per_image[paths[first].name].append(t2 - t0)
        seconds = sum(totals)
        points.append(
            {
                "batch_size": size,
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "batch_p50_ms": statistics.median(totals) * 1000,
                "forward_p50_ms": statistics.median(forwards) * 1000,
            }
        )
        if size == 1:
            single = {
                "single_image_ms": statistics.median(totals) * 1000,
                "single_image_mean_ms": statistics.fmean(totals) * 1000,
                "decode_ms": statistics.median(decodes) * 1000,
                "forward_ms": statistics.median(forwards) * 1000,
            }
    if not single:
        raise SystemExit("bench.limit: batch size 1 is needed for the single-image time")
    by_image = {name: statistics.median(v) * 1000 for name, v in per_image.items() if v}
    return {
        "points": points,
        "threads": threads,
        "top1": top1,
        "single_image_ms_by_image": by_image,
        **single,
    }


def main() -> int:
    """Print the limit as one JSON object on stdout."""
    json.dump(measure(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
