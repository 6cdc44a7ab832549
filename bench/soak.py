"""Soak: a long closed-loop run through the transformer, watching errors, latency and memory.

    python -m bench.soak --model_dir REPO [--minutes 10] [--concurrency 16] [--warmup_s 60]

Starts a predictor and a transformer (each its own process, as in the cluster), then keeps
`concurrency` V1 JSON requests in flight for `minutes`. Every `--report_s` seconds it prints
the window's throughput, errors and latency percentiles, and the resident memory (VmRSS) of
both servers, sampled every `--sample_s` seconds. Fails (exit 1) on any request that is not a
200, or when either server's resident memory grows more than `--max_growth` (5%) from just
after the warm-up to the end of the run. Writes everything to OUT/soak.json.

The closed loop is `harness.recorder.Recorder`, which the fault tests in
tests/test_reliability.py drive load with too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.memory import status_bytes
from harness.recorder import Recorder
from harness.servers import PipelineSpec, running
from harness.v1 import v1_body

from .stats import percentile

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "tests" / "data" / "coffee.jpg"


@dataclass(frozen=True)
class Window:
    """One report line: a time window's throughput, errors, latency and memory."""

    t_s: float
    requests_per_s: float
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    predictor_rss_mib: float | None
    transformer_rss_mib: float | None


def growth(samples: list[tuple[float, int]], after_s: float) -> float | None:
    """Relative growth of memory from just after `after_s` to the end: the median of the
    first quarter of the later samples against the median of the last quarter."""
    later = [rss for t, rss in samples if t >= after_s]
    if len(later) < 4:
        return None
    quarter = max(1, len(later) // 4)
    start, end = statistics.median(later[:quarter]), statistics.median(later[-quarter:])
    return end / start - 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The soak's command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--model_name", default="image-classifier")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup_s", type=float, default=60.0, help="Memory baseline starts here.")
    p.add_argument("--sample_s", type=float, default=2.0, help="Memory sampling period.")
    p.add_argument("--report_s", type=float, default=30.0, help="Report window.")
    p.add_argument("--max_growth", type=float, default=0.05, help="Largest RSS growth allowed.")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    p.add_argument("--out", type=Path, default=Path("soak-results"))
    return p.parse_args(argv)


async def soak(args: argparse.Namespace, predictor_pid: int, transformer_pid: int, url: str) -> int:
    """Drive the load, report each window, judge errors and memory; returns the exit code."""
    duration = args.minutes * 60
    began = time.monotonic()
    ends = began + duration
    recorder = Recorder(url, v1_body(args.image.read_bytes()), args.concurrency)
    memory: dict[str, list[tuple[float, int]]] = {"predictor": [], "transformer": []}
    windows: list[Window] = []

    async def sample() -> None:
        next_report = began + args.report_s
        while time.monotonic() < ends:
            now = time.monotonic()
            for name, pid in (("predictor", predictor_pid), ("transformer", transformer_pid)):
                rss = status_bytes("VmRSS", pid)
                if rss is not None:
                    memory[name].append((now - began, rss))
            if now >= next_report:
                windows.append(report(next_report - args.report_s, next_report))
                next_report += args.report_s
            await asyncio.sleep(args.sample_s)

    def report(start: float, end: float) -> Window:
        done = recorder.between(start, end)
        ok = [o.latency_s for o in done if o.status == 200]
        last = {name: samples[-1][1] / 2**20 for name, samples in memory.items() if samples}
        window = Window(
            t_s=round(end - began),
            requests_per_s=len(done) / (end - start),
            errors=sum(1 for o in done if o.status != 200),
            p50_ms=percentile(ok, 50) * 1000 if ok else None,
            p99_ms=percentile(ok, 99) * 1000 if ok else None,
            predictor_rss_mib=last.get("predictor"),
            transformer_rss_mib=last.get("transformer"),
        )
        print(
            f"t={window.t_s:5.0f}s  {window.requests_per_s:6.1f} req/s  errors {window.errors}  "
            f"p50 {_ms(window.p50_ms)}  p99 {_ms(window.p99_ms)}  RSS predictor "
            f"{_mib(window.predictor_rss_mib)} transformer {_mib(window.transformer_rss_mib)}",
            flush=True,
        )
        return window

    await asyncio.gather(recorder.run(lambda: time.monotonic() >= ends), sample())
    errors: dict[str, int] = {}
    for outcome in recorder.outcomes:
        if outcome.status != 200:
            errors[str(outcome.status)] = errors.get(str(outcome.status), 0) + 1
    latencies = [o.latency_s for o in recorder.outcomes if o.status == 200]
    growths = {name: growth(samples, args.warmup_s) for name, samples in memory.items()}
    summary = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": len(recorder.outcomes),
        "requests_per_s": len(recorder.outcomes) / (time.monotonic() - began),
        "errors": errors,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
        "rss_growth_after_warmup": growths,
        "windows": [asdict(w) for w in windows],
        "rss_samples": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=1))
    failures = []
    if errors:
        failures.append(f"{sum(errors.values())} requests failed: {errors}")
    for name, value in growths.items():
        if value is None:
            failures.append(f"{name}: too few memory samples after the warm-up")
        elif value > args.max_growth:
            failures.append(f"{name}: resident memory grew {value:.1%} after the warm-up")
    print(
        f"\nsoak: {summary['requests']} requests in {args.minutes:g} min at concurrency "
        f"{args.concurrency}, {summary['requests_per_s']:.1f} req/s, p50 "
        f"{_ms(summary['p50_ms'])}, p99 {_ms(summary['p99_ms'])}, errors {sum(errors.values())}; "
        "RSS growth after warm-up: " + ", ".join(f"{n} {_pct(g)}" for n, g in growths.items())
    )
    for failure in failures:
        print(f"soak FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _ms(value: object) -> str:
    return f"{value:.0f} ms" if isinstance(value, float) else "-"


def _mib(value: float | None) -> str:
    return f"{value:.0f} MiB" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{value:+.1%}" if value is not None else "-"


def main(argv: list[str] | None = None) -> int:
    """Start the pipeline, soak it, stop it; 0 when the run was clean."""
    args = parse(argv)
    spec = PipelineSpec("soak", "predictor", "transformer")
    with running(spec, args.model_dir, args.model_name, args.out / "logs") as pipeline:
        url = f"{pipeline.transformer.url}/v1/models/{args.model_name}:predict"
        print(
            f"soak: {args.minutes:g} min at concurrency {args.concurrency} through {url}; "
            f"logs in {args.out / 'logs'}",
            flush=True,
        )
        return asyncio.run(
            soak(args, pipeline.predictor.process.pid, pipeline.transformer.process.pid, url)
        )


if __name__ == "__main__":
    sys.exit(main())
