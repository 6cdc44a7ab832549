"""The transformer's decode-only rate: its own preprocessing, in-process, no serving at all.

    python -m bench.decode_rate --model_dir REPO --image FILE [--threads N] [--seconds 3]

`threads` workers (the transformer's default --decode_workers: the CPUs available) run
`vision.imaging.preprocess` on the same image back to back, as the transformer's decode
pool does; prints images/s and CPU-ms per image as JSON. What the served transformer reaches
in front of a zero-cost predictor, over this rate, is what the two hops cost. Its own process
because vision.imaging imports kserve.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from common.cli import DEFAULT_MODEL_NAME
from common.cpus import available_cpus
from common.modelrepo import resolve
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

MAX_PIXELS = 50_000_000  # the transformer's default --max_image_pixels


def measure(
    model_dir: Path, model_name: str, image: bytes, threads: int, seconds: float
) -> dict[str, float]:
    """Images/s of `threads` workers decoding `image` for `seconds`, and one decode's median."""
    params = Preprocessing.read(resolve(model_dir, model_name).model_dir)
    limits = DecodeLimits(max_pixels=MAX_PIXELS)
    single = []
    for _ in range(5):  # warm the decoder; the median single-thread time
        started = time.perf_counter()
        preprocess(image, params, limits)
        single.append(time.perf_counter() - started)
    counts = [0] * threads
    stop = threading.Event()

    def work(worker: int) -> None:
        while not stop.is_set():
            preprocess(image, params, limits)
            counts[worker] += 1

    workers = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(threads)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "images_per_s": sum(counts) / elapsed,
        "cpu_ms_per_image": cpu * 1000 / max(sum(counts), 1),
        "threads": threads,
        "single_decode_ms": statistics.median(single) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the decode-only rate as one JSON object on stdout."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    result = measure(
        args.model_dir,
        args.model_name,
        args.image.read_bytes(),
        args.threads or available_cpus(),
        args.seconds,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
