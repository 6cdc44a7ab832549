"""The batch command's settings: its flags and environment, parsed and validated once at start.

Nothing here imports torch, kserve or tritonclient: which engine runs decides what loads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.cli import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MODEL_NAME, positive_int
from common.cpus import available_cpus
from runtime import plan
from vision.imaging import DEFAULT_MAX_PIXELS

DEFAULT_DB = "sqlite:///predictions.db"
DB_ENV = "BATCH_DB_URL"  # the manifests fill it from a Secret, so the URL is never in args
API_KEY_ENV = "BATCH_API_KEY"  # --url: the transformer's API key, also from a Secret
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
DEFAULT_TOP_K = 5
DEFAULT_CHUNK = 256
DEFAULT_CONCURRENCY = 8
DEFAULT_BATCH_SIZE = 16  # --model_dir on a GPU
# --model_dir on the CPU, each instance one thread. Per image, one thread, medians here:
# onnxruntime 13.3 CPU-ms at 1, 12.4 at 2, 13.1 at 4, 14.0 at 16 images; TorchScript 26 at 2,
# 35 at 4, 49 at 16 (the activations outgrow the caches). 4, not 2: through python -m batch
# (ONNX, 4 runs each) 4 ran at a median 59 images/s, 2 at 56 and 16 at 54.
DEFAULT_CPU_BATCH_SIZE = 4
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 5
# A file larger than the servers accept in one request is not read: its size is checked first.
MAX_IMAGE_BYTES = DEFAULT_MAX_REQUEST_BYTES


@dataclass(frozen=True)
class Shard:
    """This process's part of the work: the keys whose stable hash modulo `count` is `index`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class BatchSettings:
    """Everything one batch run needs, validated."""

    source: Path
    db_url: str
    engine: str  # "url" or "model_dir"
    url: str | None
    api_key: str | None  # --url: sent as `authorization: Bearer <key>` gRPC metadata
    model_dir: Path | None
    model_name: str
    model_version: str | None  # None: the newest (model_dir) or the served one (url)
    shard: Shard
    top_k: int
    chunk_size: int
    batch_size: int
    concurrency: int
    decode_workers: int
    instances: int | None  # None: batch.runner.plan_instances decides
    num_threads: int | None
    device: str  # --model_dir: as the predictor's flags (runtime.plan)
    precision: str
    cuda_graphs: str
    timeout_s: float
    retries: int
    max_image_pixels: int
    max_image_bytes: int
    progress: str  # "auto", "bar" or "plain"
    json_summary: bool


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_shard(text: str) -> Shard:
    """'2/4' -> Shard(2, 4); raises argparse.ArgumentTypeError unless 0 <= INDEX < COUNT."""
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not sep or count <= 0 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(
            f"--shard {text!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4"
        )
    return Shard(index, count)


def parser() -> argparse.ArgumentParser:
    """The batch command line."""
    p = argparse.ArgumentParser(
        prog="python -m batch",
        description="Classify every image under SOURCE and upsert the top-k predictions into "
        "a SQL table. Exit status: 0 all images predicted or skipped, 1 some images failed "
        "or SOURCE entries were left out (see the batch_errors table), 2 bad flags or "
        "settings (model, API key), 3 the job stopped (service or database unreachable, "
        "SIGTERM); a re-run resumes where it stopped. Ground truth: python -m batch labels "
        "FILE.csv --db URL loads true labels, python -m batch evaluate --db URL reports "
        "accuracy per model version (each with --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "source",
        type=Path,
        help="A directory (searched recursively; dot files and links to directories are "
        "ignored; FIFOs, sockets, devices, dangling or looping links and unlistable "
        "directories are left out, counted and recorded in batch_errors) or a text file "
        "listing image paths, one per line (relative paths are relative to the file).",
    )
    p.add_argument(
        "--db",
        default=None,
        help=f"SQLAlchemy URL, e.g. sqlite:///predictions.db or "
        f"postgresql+psycopg://user:password@host/db (default: ${DB_ENV}, else {DEFAULT_DB}).",
    )
    engine = p.add_mutually_exclusive_group(required=True)
    engine.add_argument(
        "--url",
        default=None,
        help=f"HOST:PORT of a running transformer's V2 gRPC endpoint (its API key, if it "
        f"needs one, from ${API_KEY_ENV}).",
    )
    engine.add_argument(
        "--model_dir",
        type=Path,
        default=None,
        help="Model repository: run the model in this process with the servers' own code.",
    )
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument(
        "--model_version",
        default=None,
        help="Version recorded with each row (default: with --model_dir the newest version "
        "directory, with --url the version the server reports).",
    )
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        help=f"INDEX/COUNT: this process's stable hash partition of the images (default: "
        f"${INDEX_ENV}/--shard_count when {INDEX_ENV} is set, else 0/1).",
    )
    p.add_argument(
        "--shard_count",
        type=positive_int,
        default=None,
        help=f"COUNT for the index in ${INDEX_ENV} (an Indexed Job's completions).",
    )
    p.add_argument("--top_k", type=positive_int, default=DEFAULT_TOP_K, help="Classes stored.")
    p.add_argument(
        "--chunk_size",
        type=positive_int,
        default=DEFAULT_CHUNK,
        help="Rows written per transaction (and keys looked up per query).",
    )
    p.add_argument(
        "--batch_size",
        type=positive_int,
        default=None,
        help=f"--model_dir: images per forward pass (default: the model's max_batch_size, at "
        f"most {DEFAULT_CPU_BATCH_SIZE} on the CPU and {DEFAULT_BATCH_SIZE} on a GPU).",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="--url: requests in flight.",
    )
    p.add_argument(
        "--decode_workers",
        type=positive_int,
        default=None,
        help="--model_dir: threads reading and decoding images (default: the CPUs available).",
    )
    p.add_argument(
        "--instances",
        type=positive_int,
        default=None,
        help="--model_dir: copies of the model, each on its own forward thread, as Triton's "
        "instance_group count (default: on the CPU one per CPU available, at most 8; on a GPU "
        "one).",
    )
    p.add_argument(
        "--num_threads",
        type=positive_int,
        default=None,
        help="--model_dir: intra-op threads of each instance (default: the CPUs available "
        "divided among the instances, at least 1).",
    )
    plan.add_flags(p, "--model_dir, as the predictor's flag: ")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help="--url: deadline of one request, in seconds.",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="--url: retries (exponential backoff) of a request answered UNAVAILABLE or "
        "past its deadline, before the job stops.",
    )
    p.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,  # the transformer's default
        help="--model_dir: largest image (width x height) decoded, as the transformer's flag.",
    )
    p.add_argument(
        "--max_image_bytes",
        type=positive_int,
        default=MAX_IMAGE_BYTES,
        help="Largest image file read, in bytes (the default is the servers' default "
        "--max_request_bytes); a larger file is recorded in batch_errors without being read.",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "plain"],
        default="auto",
        help="auto: a progress bar on a terminal, plain periodic lines otherwise.",
    )
    p.add_argument(
        "--json", action="store_true", help="Print the final summary as one JSON object."
    )
    return p


def parse(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> BatchSettings:
    """Parse and validate the command line and environment; exits with usage on bad flags."""
    env = os.environ if environ is None else environ
    p = parser()
    args = p.parse_args(argv)
    shard = args.shard
    if shard is None:
        index_text = env.get(INDEX_ENV)
        count = args.shard_count or 1
        if index_text is None:
            shard = Shard(0, count) if count == 1 else None
            if shard is None:
                p.error(f"--shard_count {count} needs ${INDEX_ENV} or --shard INDEX/COUNT")
        else:
            try:
                shard = parse_shard(f"{index_text}/{count}")
            except argparse.ArgumentTypeError:
                p.error(
                    f"${INDEX_ENV}={index_text!r} with --shard_count {count}: expected an index "
                    f"from 0 to {count - 1}"
                )
    elif args.shard_count is not None and args.shard_count != shard.count:
        p.error(f"--shard {shard} and --shard_count {args.shard_count} disagree")
    if not args.source.exists():
        p.error(f"SOURCE {args.source}: no such directory or file")
    if args.retries < 0:
        p.error(f"--retries {args.retries}: expected 0 or more")
    cpus = available_cpus()
    return BatchSettings(
        source=args.source,
        db_url=args.db or env.get(DB_ENV) or DEFAULT_DB,
        engine="url" if args.url else "model_dir",
        url=args.url,
        api_key=env.get(API_KEY_ENV) or None,
        model_dir=args.model_dir,
        model_name=args.model_name,
        model_version=args.model_version,
        shard=shard,
        top_k=args.top_k,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size or 0,
        concurrency=args.concurrency,
        decode_workers=args.decode_workers or cpus,
        instances=args.instances,
        num_threads=args.num_threads,
        device=args.device,
        precision=args.precision,
        cuda_graphs=args.cuda_graphs,
        timeout_s=args.timeout,
        retries=args.retries,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
        progress=args.progress,
        json_summary=args.json,
    )
