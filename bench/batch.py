"""`python -m batch` in the benchmark: both engines against their yardsticks, in one run.

- The in-process engine (`--model_dir`) over the limit's best images/s on the same images
  (target >= 1.2: it overlaps decoding with the forward pass, which the serial limit cannot).
- The `--url` engine through the served pipeline over the served V2 gRPC cell at the same
  concurrency (target >= 0.9: a batch client must not cost throughput).
- The share of each run's time spent in database look-ups and writes (SQLite, as by default).

Each engine runs ROUNDS times, each run right after its yardstick is measured again, and the
run with the median ratio is the result. Each run is a fresh database, so every image is
predicted (none skipped). The image set is repeated (symlinks under distinct keys) so a run
lasts long enough to measure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.servers import Pipeline

from .stats import CellResult, LimitResult, ratio
from .support import run_json_module

IN_PROCESS_OVER_LIMIT_MIN = 1.2
URL_OVER_SERVED_MIN = 0.9
# 30 x the 10-image set: 300 images, long enough that the ramp at the start and the last few
# requests at the end (fewer than `concurrency` in flight) weigh little (5-15 s per run here).
COPIES = 30
TIMEOUT_S = 600
# Each engine runs this many times, each run right after its yardstick is measured again: this
# machine's speed drifts by 10-20% over minutes, which a single pair taken minutes apart turns
# into the ratio (1.18x to 1.34x in three otherwise equal runs). The median pair is reported.
ROUNDS = 3


@dataclass(frozen=True)
class BatchRun:
    """One `python -m batch` run's summary."""

    engine: str
    concurrency: int | None
    images: int
    predicted: int
    failed: int
    images_per_s: float
    seconds: float
    db_share: float


@dataclass(frozen=True)
class Pair:
    """One engine run and its yardstick (images/s), measured just before it."""

    run: BatchRun
    yardstick: float

    @property
    def ratio(self) -> float:
        """The run's images/s over the yardstick's (0 without a yardstick)."""
        return ratio(self.run.images_per_s, self.yardstick) or 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the ratio."""
        return {
            "run": self.run.__dict__,
            "yardstick_images_per_s": self.yardstick,
            "ratio": self.ratio,
        }


def median_pair(pairs: Sequence[Pair]) -> Pair | None:
    """The pair with the median ratio (the lower middle of an even count); None for none."""
    if not pairs:
        return None
    ranked = sorted(pairs, key=lambda pair: pair.ratio)
    return ranked[(len(ranked) - 1) // 2]


@dataclass(frozen=True)
class BatchResult:
    """Both engines' runs beside their yardsticks: the in-process engine after the limit, the
    --url engine after the served V2 gRPC cell at the same concurrency."""

    in_process: tuple[Pair, ...]
    url: tuple[Pair, ...]
    engine_dir: str = ""  # the model repository both runs used (its platform is the engine)

    @property
    def in_process_over_limit(self) -> float | None:
        """The median pair's in-process images/s over the limit's best."""
        pair = median_pair(self.in_process)
        return None if pair is None else pair.ratio

    @property
    def url_over_served(self) -> float | None:
        """The median pair's --url images/s over the served pipeline's at the same concurrency."""
        pair = median_pair(self.url)
        return None if pair is None else pair.ratio

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the ratios."""
        return {
            "in_process": [pair.to_json() for pair in self.in_process],
            "url": [pair.to_json() for pair in self.url],
            "in_process_over_limit": self.in_process_over_limit,
            "url_over_served": self.url_over_served,
            "model_dir": self.engine_dir,
        }

    def format_lines(self) -> list[str]:
        """The report's batch section."""
        lines = [
            "Batch into a database (python -m batch, fresh SQLite, every image predicted; "
            f"model repository {self.engine_dir}); each run right after its yardstick",
            f"  {'engine':<10} {'conc':>4} {'images':>6} {'failed':>6} {'images/s':>8} "
            f"{'seconds':>8} {'db share':>8} {'yardstick':>9} {'ratio':>6}",
        ]
        for pair in (*self.in_process, *self.url):
            run = pair.run
            conc = "-" if run.concurrency is None else str(run.concurrency)
            lines.append(
                f"  {run.engine:<10} {conc:>4} {run.images:>6} {run.failed:>6} "
                f"{run.images_per_s:>8.1f} {run.seconds:>8.1f} {run.db_share:>8.1%} "
                f"{pair.yardstick:>9.1f} {pair.ratio:>5.2f}x"
            )
        for label, value, target in (
            (
                "in-process engine / limit best",
                self.in_process_over_limit,
                IN_PROCESS_OVER_LIMIT_MIN,
            ),
            (
                "--url engine / served v2-grpc at the same concurrency",
                self.url_over_served,
                URL_OVER_SERVED_MIN,
            ),
        ):
            shown = "n/a" if value is None else f"{value:.2f}x"
            lines.append(f"  {label}, median of the runs: {shown} (target >= {target}x)")
        return lines


def repeated_source(image_dir: Path, target: Path, copies: int = COPIES) -> Path:
    """A source tree of `copies` x the image set (symlinks under distinct keys)."""
    target.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        copy = target / f"copy{i:02d}"
        copy.mkdir(exist_ok=True)
        for image in sorted(image_dir.glob("*.jpg")):
            link = copy / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return target


def run_batch(args: list[str], engine: str, concurrency: int | None, log: Path) -> BatchRun:
    """Run `python -m batch ARGS --json` to completion; raises RuntimeError when it fails."""
    command = [*args, "--json", "--progress", "plain"]
    summary = run_json_module("batch", command, log, timeout_s=TIMEOUT_S)
    return BatchRun(
        engine=engine,
        concurrency=concurrency,
        images=summary["images"],
        predicted=summary["predicted"],
        failed=summary["failed"],
        images_per_s=summary["images_per_s"],
        seconds=summary["seconds"],
        db_share=summary["db_seconds"] / max(summary["seconds"], 1e-9),
    )


def measure_in_process(
    model_dir: Path, model_name: str, source: Path, work: Path, log: Path
) -> BatchRun:
    """The --model_dir engine over `source` into a fresh SQLite file."""
    db = work / "in-process.db"
    db.unlink(missing_ok=True)
    args = [str(source.resolve()), "--db", f"sqlite:///{db.resolve()}"]
    args += ["--model_dir", str(model_dir.resolve())]
    return run_batch([*args, "--model_name", model_name], "model_dir", None, log)


def measure_url(
    grpc_target: str, model_name: str, concurrency: int, source: Path, work: Path, log: Path
) -> BatchRun:
    """The --url engine through a running transformer into a fresh SQLite file."""
    db = work / f"url-c{concurrency}.db"
    db.unlink(missing_ok=True)
    args = [str(source.resolve()), "--db", f"sqlite:///{db.resolve()}", "--url", grpc_target]
    args += ["--model_name", model_name, "--model_version", "1"]
    args += ["--concurrency", str(concurrency)]
    return run_batch(args, "url", concurrency, log)


@dataclass
class BatchPlan:
    """The bench's python -m batch runs on one engine, each right after its yardstick:
    `in_process` once that engine's limit is known, `through` while its pipeline serves."""

    model_dir: Path
    model_name: str
    source: Path
    work: Path
    log_dir: Path
    concurrency: int
    rounds: int = ROUNDS
    in_process_pairs: list[Pair] = field(default_factory=list)
    url_pairs: list[Pair] = field(default_factory=list)

    def in_process(self, limit: LimitResult, limit_again: Callable[[int], LimitResult]) -> None:
        """Run the --model_dir engine `rounds` times, the first right after `limit` (just
        measured), each other one right after `limit_again(round)`."""
        for round_ in range(self.rounds):
            yardstick = limit if round_ == 0 else limit_again(round_)
            print(
                f"[bench] python -m batch, in-process engine, run {round_ + 1}/{self.rounds}",
                file=sys.stderr,
                flush=True,
            )
            run = measure_in_process(
                self.model_dir,
                self.model_name,
                self.source,
                self.work,
                self.log_dir / f"batch-{round_ + 1}.log",
            )
            self.in_process_pairs.append(Pair(run, yardstick.best.images_per_s))

    def through(self, pipeline: Pipeline, served_cell: Callable[[], CellResult]) -> None:
        """Run the --url engine through `pipeline`'s transformer `rounds` times, each right
        after `served_cell()` (the served V2 gRPC cell at the same concurrency)."""
        for round_ in range(self.rounds):
            cell = served_cell()
            print(
                f"[bench] python -m batch, --url engine, run {round_ + 1}/{self.rounds}",
                file=sys.stderr,
                flush=True,
            )
            run = measure_url(
                pipeline.transformer.grpc_target,
                self.model_name,
                self.concurrency,
                self.source,
                self.work,
                self.log_dir / f"batch-url-c{self.concurrency}-{round_ + 1}.log",
            )
            self.url_pairs.append(Pair(run, cell.images_per_s))

    def result(self) -> BatchResult | None:
        """Every run beside its yardstick; None when the in-process engine did not run."""
        if not self.in_process_pairs:
            return None
        return BatchResult(
            tuple(self.in_process_pairs), tuple(self.url_pairs), engine_dir=str(self.model_dir)
        )
