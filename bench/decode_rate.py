"""The transformer's decode-only rate: its own preprocessing, in-process, no serving at all.

    python -m bench.decode_rate --model_dir REPO --image FILE [--threads N] [--seconds 3]
    python -m bench.decode_rate --model_dir REPO --image FILE --compare_return_from_mib 1,4

`threads` workers (the transformer's default --decode_workers: the CPUs available) run
`vision.imaging.preprocess` on the same image back to back, as the transformer's decode
pool does, under the transformer's policy for freed memory (common.memory.return_freed_memory);
prints images/s and CPU-ms per image as JSON. What the served transformer reaches in front of
a zero-cost predictor, over this rate, is what the two hops cost. Its own process because
vision.imaging imports kserve.

`--compare_return_from_mib A,B,...` instead measures one decoding thread's CPU-ms per image
with blocks from A, B, ... MiB up returned to the kernel when freed, in alternating rounds
(the machine's drift hits every setting alike), and prints the medians and the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import memory
from common.cli import DEFAULT_MODEL_NAME, positive_ints
from common.cpus import available_cpus
from common.modelrepo import resolve
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

from .support import environment


def measure(
    model_dir: Path, model_name: str, image: bytes, threads: int, seconds: float
) -> dict[str, float]:
    """Images/s of `threads` workers decoding `image` for `seconds`, and one decode's median."""
    params = Preprocessing.read(resolve(model_dir, model_name).model_dir)
    limits = DecodeLimits()  # the transformer's default
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


def compare_return_from(
    model_dir: Path,
    model_name: str,
    image: bytes,
    sizes_mib: list[int],
    rounds: int = 8,
    per_round: int = 20,
) -> dict[str, object]:
    """CPU-ms per decode on one worker thread with blocks from each of `sizes_mib` MiB up given
    back to the kernel when freed: per setting, the median over `rounds` alternating rounds of
    `per_round` decodes, and every round's figure."""
    params = Preprocessing.read(resolve(model_dir, model_name).model_dir)
    limits = DecodeLimits()  # the transformer's default
    found: dict[int, list[float]] = {size: [] for size in sizes_mib}
    with ThreadPoolExecutor(max_workers=1) as worker:  # a decode thread, as the transformer's
        for round_number in range(rounds):
            order = sizes_mib if round_number % 2 == 0 else sizes_mib[::-1]
            for size in order:
                memory.return_freed_memory(size << 20)
                memory.trim_heap()
                for _ in range(3):  # the heap settles under this setting
                    worker.submit(preprocess, image, params, limits).result()
                cpu_started = time.process_time()
                for _ in range(per_round):
                    worker.submit(preprocess, image, params, limits).result()
                found[size].append((time.process_time() - cpu_started) * 1000 / per_round)
    memory.return_freed_memory()
    return {
        "cpu_ms_per_image": {f"{size} MiB": statistics.median(found[size]) for size in found},
        "rounds": {f"{size} MiB": [round(ms, 2) for ms in found[size]] for size in found},
        "current_mib": memory.RETURN_BLOCKS_FROM_BYTES >> 20,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the decode-only rate as one JSON object on stdout."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument(
        "--compare_return_from_mib",
        type=positive_ints,
        default=None,
        help="Compare CPU per decode with blocks from these sizes (MiB) up given back when freed.",
    )
    args = p.parse_args(argv)
    if args.compare_return_from_mib:
        compared = compare_return_from(
            args.model_dir, args.model_name, args.image.read_bytes(), args.compare_return_from_mib
        )
        json.dump({"environment": environment(), **compared}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    memory.return_freed_memory()  # the transformer's policy, so this is its decode rate
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
