"""`python -m batch` in the benchmark: both engines against their yardsticks, in one run.

- The in-process engine (`--model_dir`) over the limit's best images/s on the same images
  (target >= 1.2: it overlaps decoding with the forward pass, which the serial limit cannot).
- The `--url` engine through the served pipeline over the served V2 gRPC cell at the same
  concurrency (target >= 0.9: a batch client must not cost throughput).
- The share of each run's time spent in database look-ups and writes (SQLite, as by default).

Each run is a fresh database, so every image is predicted (none skipped). The image set is
repeated (symlinks under distinct keys) so a run lasts long enough to measure.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import Pipeline
from .stats import V2_GRPC, CellResult, LimitResult
from .support import run_json_module

IN_PROCESS_OVER_LIMIT_MIN = 1.2
URL_OVER_SERVED_MIN = 0.9
# 30 x the 10-image set: 300 images, long enough that the ramp at the start and the last few
# requests at the end (fewer than `concurrency` in flight) weigh little (5-15 s per run here).
COPIES = 30
TIMEOUT_S = 600


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
class BatchResult:
    """Both engines and what they are measured against."""

    in_process: BatchRun
    limit_images_per_s: float
    url: BatchRun | None
    served_images_per_s: float | None  # the served V2 gRPC cell at the url run's concurrency
    engine_dir: str = ""  # the model repository both runs used (its platform is the engine)

    @property
    def in_process_over_limit(self) -> float:
        """In-process engine images/s over the limit's best."""
        return self.in_process.images_per_s / self.limit_images_per_s

    @property
    def url_over_served(self) -> float | None:
        """--url engine images/s over the served pipeline's at the same concurrency."""
        if self.url is None or not self.served_images_per_s:
            return None
        return self.url.images_per_s / self.served_images_per_s

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the ratios."""
        return {
            "in_process": self.in_process.__dict__,
            "limit_images_per_s": self.limit_images_per_s,
            "url": self.url.__dict__ if self.url else None,
            "served_images_per_s": self.served_images_per_s,
            "in_process_over_limit": self.in_process_over_limit,
            "model_dir": self.engine_dir,
            "url_over_served": self.url_over_served,
        }

    def format_lines(self) -> list[str]:
        """The report's batch section."""
        runs = [self.in_process, *([self.url] if self.url else [])]
        lines = [
            "Batch into a database (python -m batch, fresh SQLite, every image predicted; "
            f"model repository {self.engine_dir})"
        ]
        lines.append(
            f"  {'engine':<10} {'conc':>4} {'images':>6} {'failed':>6} {'images/s':>8} "
            f"{'seconds':>8} {'db share':>8}"
        )
        for run in runs:
            conc = "-" if run.concurrency is None else str(run.concurrency)
            lines.append(
                f"  {run.engine:<10} {conc:>4} {run.images:>6} {run.failed:>6} "
                f"{run.images_per_s:>8.1f} {run.seconds:>8.1f} {run.db_share:>8.1%}"
            )
        lines.append(
            f"  in-process engine / limit best ({self.limit_images_per_s:.1f} images/s): "
            f"{self.in_process_over_limit:.2f}x (target >= {IN_PROCESS_OVER_LIMIT_MIN}x)"
        )
        ratio = self.url_over_served
        served = "n/a" if self.served_images_per_s is None else f"{self.served_images_per_s:.1f}"
        lines.append(
            f"  --url engine / served v2-grpc at the same concurrency ({served} images/s): "
            + ("n/a" if ratio is None else f"{ratio:.2f}x")
            + f" (target >= {URL_OVER_SERVED_MIN}x)"
        )
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
    model_dir: Path, model_name: str, source: Path, work: Path, log_dir: Path
) -> BatchRun:
    """The --model_dir engine over `source` into a fresh SQLite file."""
    db = work / "in-process.db"
    db.unlink(missing_ok=True)
    args = [str(source.resolve()), "--db", f"sqlite:///{db.resolve()}"]
    args += ["--model_dir", str(model_dir.resolve())]
    return run_batch([*args, "--model_name", model_name], "model_dir", None, log_dir / "batch.log")


def measure_url(
    grpc_target: str, model_name: str, concurrency: int, source: Path, work: Path, log_dir: Path
) -> BatchRun:
    """The --url engine through a running transformer into a fresh SQLite file."""
    db = work / f"url-c{concurrency}.db"
    db.unlink(missing_ok=True)
    args = [str(source.resolve()), "--db", f"sqlite:///{db.resolve()}", "--url", grpc_target]
    args += ["--model_name", model_name, "--model_version", "1"]
    args += ["--concurrency", str(concurrency)]
    return run_batch(args, "url", concurrency, log_dir / f"batch-url-c{concurrency}.log")


@dataclass
class BatchPlan:
    """The bench's two python -m batch runs on one engine, and what they are measured against:
    `in_process` once that engine's limit is known, `through` while its pipeline serves."""

    model_dir: Path
    model_name: str
    source: Path
    work: Path
    log_dir: Path
    concurrency: int
    runs: dict[str, BatchRun] = field(default_factory=dict)
    limit_images_per_s: float = 0.0
    pipeline_name: str = ""

    def in_process(self, limit: LimitResult, pipeline_name: str) -> None:
        """Run the --model_dir engine; `limit` and the cells of `pipeline_name` are its
        yardsticks."""
        print("[bench] python -m batch, in-process engine", file=sys.stderr, flush=True)
        self.limit_images_per_s = limit.best.images_per_s
        self.pipeline_name = pipeline_name
        self.runs["in_process"] = measure_in_process(
            self.model_dir, self.model_name, self.source, self.work, self.log_dir
        )

    def through(self, pipeline: Pipeline) -> None:
        """Run the --url engine through `pipeline`'s transformer."""
        print("[bench] python -m batch, --url engine", file=sys.stderr, flush=True)
        self.runs["url"] = measure_url(
            pipeline.transformer.grpc_target,
            self.model_name,
            self.concurrency,
            self.source,
            self.work,
            self.log_dir,
        )

    def result(self, cells: Sequence[CellResult]) -> BatchResult | None:
        """Both runs beside their yardsticks; None when the in-process run did not happen."""
        if "in_process" not in self.runs:
            return None
        served = next(
            (
                c.images_per_s
                for c in cells
                if c.pipeline == self.pipeline_name
                and c.protocol == V2_GRPC
                and c.concurrency == self.concurrency
            ),
            None,
        )
        return BatchResult(
            in_process=self.runs["in_process"],
            limit_images_per_s=self.limit_images_per_s,
            url=self.runs.get("url"),
            served_images_per_s=served,
            engine_dir=str(self.model_dir),
        )
