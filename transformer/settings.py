"""The transformer's settings: kserve's flags plus ours, parsed and validated once at start."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kserve.predictor_config import PredictorConfig

from common import lifecycle, pacing
from common.cli import DEFAULT_MODEL_DIR, non_negative_float, positive_int
from common.cpus import available_cpus
from common.server import base_parser
from vision.drift import MIN_REFERENCE_IMAGES
from vision.imaging import DEFAULT_MAX_PIXELS

# The prediction log's database URL, when not on the command line: a Secret's key as an
# environment variable (the manifests' way), so the password is never in the pod's args.
PREDICTION_LOG_ENV = "PREDICTION_LOG_DB_URL"
# Rows (one per answered image, ~300 bytes each) held while the database is slow or down: at
# 300 images/s, about a minute of answers; past it rows are dropped and counted.
DEFAULT_PREDICTION_LOG_CAPACITY = 20_000

FORWARD_PROTOCOL = "grpc-v2"
# The longest expected time in flight a request is admitted with (common.pacing): the requests
# in flight and itself over the rate requests have completed recently (Little's law), the same
# time on every engine and CPU. 1 s: the served pipeline answers in 20-60 ms at concurrency 1,
# so a client waits at most ~20x that under overload before being told 503 + Retry-After, and
# accepted requests stay well inside the 2.5 s that issue 21 asks of their p99 at concurrency
# 256 (the estimate lags a change of load by a second or two). The predictor's own target is
# higher (1.5 s): what this transformer admits, it does not refuse.
DEFAULT_MAX_EXPECTED_WAIT_S = 1.0
# Requests a replica holds at once: a memory bound now (each holds its decoded image, ~150 KiB,
# beside its body, which the memory budget counts), not the overload bound: the expected wait
# refuses first on any CPU measured (1 s is 40-300 requests on 2 CPUs).
DEFAULT_MAX_INFLIGHT_REQUESTS = 512


@dataclass(frozen=True)
class TransformerSettings:
    """Everything the transformer needs beyond kserve's own server flags."""

    model_name: str
    model_dir: Path
    predictor: PredictorConfig
    decode_workers: int
    max_images: int | None  # None: the model config's max_batch_size
    max_image_pixels: int
    default_top_k: int
    coalesce_max_images: int | None  # None: the model config's max_batch_size
    coalesce_delay_ms: float
    max_request_bytes: int
    demo: bool  # serve the demo page at GET / (see transformer/demo)
    api_key_file: Path | None  # None: no client authentication here (e.g. at the gateway)
    max_inflight_requests: int
    max_expected_wait_s: float  # 0: no time bound
    lifecycle: lifecycle.LifecycleSettings
    drift_window: int
    drift_min_count: int
    drift_learn_first: int  # 0: only a drift_reference.json enables drift signals
    prediction_log_url: str | None  # None: no prediction log, no labels, no accuracy
    prediction_log_capacity: int
    server_args: argparse.Namespace


def parser() -> argparse.ArgumentParser:
    """The transformer's command line (kserve's server flags are included)."""
    p = base_parser("Decode images, forward UINT8 pixels to the predictor, answer top-k classes.")
    p.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="Model repository root (labels.txt and preprocess.json are read).",
    )
    p.add_argument(
        "--decode_workers",
        type=positive_int,
        default=None,
        help="Threads decoding images (default: the CPUs this container may use).",
    )
    p.add_argument(
        "--max_images",
        type=positive_int,
        default=None,
        help="Most images in one request (default and upper bound: the model config's "
        "max_batch_size, which the predictor enforces).",
    )
    p.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="Largest image (width x height) decoded; larger ones get a 400.",
    )
    p.add_argument(
        "--top_k",
        type=positive_int,
        default=5,
        help="Classes returned per image unless the request's top_k says otherwise.",
    )
    p.add_argument(
        "--disable_demo",
        action="store_true",
        help="Do not serve the demo page (GET / for browsers, /demo/*); the API is unchanged.",
    )
    p.add_argument(
        "--coalesce_max_images",
        type=positive_int,
        default=None,
        help="Most images of concurrent requests sent in one predictor call (default and upper "
        "bound: the model's max_batch_size; 1 sends every request on its own).",
    )
    p.add_argument(
        "--coalesce_delay_ms",
        type=non_negative_float,
        default=2.0,
        help="Longest wait for more requests to share a predictor call, only under load "
        "(while another call is in flight).",
    )
    p.add_argument(
        "--api_key_file",
        default=None,
        help="File of API keys, one per line, reloaded when it changes. When given, every "
        "route and RPC except health and readiness needs 'Authorization: Bearer <key>' "
        "(REST) or 'authorization' metadata (gRPC).",
    )
    p.add_argument(
        "--max_inflight_requests",
        type=positive_int,
        default=DEFAULT_MAX_INFLIGHT_REQUESTS,
        help="Most inference requests in flight (decoding or waiting on the predictor; a "
        "memory bound, the expected wait bounds time); past it requests are refused at once "
        "with 503 / UNAVAILABLE.",
    )
    pacing.add_flag(
        p,
        DEFAULT_MAX_EXPECTED_WAIT_S,
        "the time in flight of a request, from the requests in flight and itself",
    )
    p.add_argument(
        "--drift_window",
        type=positive_int,
        default=1000,
        help="Images in the sliding window the drift scores are computed over.",
    )
    p.add_argument(
        "--drift_min_count",
        type=positive_int,
        default=200,
        help="Images the window must hold before drift scores are reported.",
    )
    p.add_argument(
        "--drift_reference_images",
        type=int,
        default=0,
        help="Without a drift_reference.json in the model repository, take the first N "
        "images served as the drift reference (0: no drift signals without the file).",
    )
    p.add_argument(
        "--prediction_log_db",
        default=None,
        help="SQLAlchemy URL of the prediction log (sqlite:///log.db or "
        "postgresql+psycopg://user:password@host/db): every answered image's top 5 is recorded "
        "(never the image) and labels can be posted to /v2/models/<name>/labels. Default: "
        f"${PREDICTION_LOG_ENV}, else off.",
    )
    p.add_argument(
        "--prediction_log_db_file",
        default=None,
        help="A file holding the prediction log's URL (a mounted Secret), instead of "
        "--prediction_log_db.",
    )
    p.add_argument(
        "--prediction_log_capacity",
        type=positive_int,
        default=DEFAULT_PREDICTION_LOG_CAPACITY,
        help="Predictions held for the log while the database is slow or down; past it they "
        "are dropped (counted in transformer_prediction_log_rows_dropped_total), never waited "
        "for.",
    )
    lifecycle.add_flags(p)
    # The controller injects --predictor_host but not the protocol; grpc-v2 is the only
    # forwarding this transformer speaks (kserve 0.21's REST-v2 forwarding is broken).
    p.set_defaults(predictor_protocol=FORWARD_PROTOCOL, predictor_request_timeout_seconds=60)
    return p


def parse(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> TransformerSettings:
    """Parse and validate the command line (and the environment); exits with a usage message
    on bad flags."""
    p = parser()
    args = p.parse_args(argv)
    env = os.environ if environ is None else environ
    if args.predictor_protocol != FORWARD_PROTOCOL:
        p.error(
            f"--predictor_protocol {args.predictor_protocol}: this transformer forwards raw "
            f"UINT8 tensors over {FORWARD_PROTOCOL} only"
        )
    if args.drift_reference_images != 0 and args.drift_reference_images < MIN_REFERENCE_IMAGES:
        p.error(
            f"--drift_reference_images {args.drift_reference_images}: expected 0 (off) or at "
            f"least {MIN_REFERENCE_IMAGES}"
        )
    if args.drift_min_count > args.drift_window:
        p.error(
            f"--drift_min_count {args.drift_min_count} exceeds --drift_window "
            f"{args.drift_window}: the window could never hold enough images"
        )
    if not args.predictor_host:
        p.error("--predictor_host is required (host:port of the predictor's gRPC endpoint)")
    return TransformerSettings(
        prediction_log_url=prediction_log_url(p, args, env),
        prediction_log_capacity=args.prediction_log_capacity,
        model_name=args.model_name,
        model_dir=Path(args.model_dir),
        predictor=PredictorConfig(
            predictor_host=args.predictor_host,
            predictor_protocol=args.predictor_protocol,
            predictor_use_ssl=args.predictor_use_ssl,
            # Each call is further bounded by what is left of the request's deadline.
            predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
            predictor_request_retries=args.predictor_request_retries,
            predictor_health_check=args.enable_predictor_health_check,
        ),
        decode_workers=args.decode_workers or available_cpus(),
        max_images=args.max_images,
        max_image_pixels=args.max_image_pixels,
        default_top_k=args.top_k,
        coalesce_max_images=args.coalesce_max_images,
        coalesce_delay_ms=args.coalesce_delay_ms,
        max_request_bytes=args.max_request_bytes,
        demo=not args.disable_demo,
        api_key_file=Path(args.api_key_file) if args.api_key_file else None,
        max_inflight_requests=args.max_inflight_requests,
        max_expected_wait_s=args.max_expected_wait_seconds,
        lifecycle=lifecycle.LifecycleSettings.from_args(args),
        drift_window=args.drift_window,
        drift_min_count=args.drift_min_count,
        drift_learn_first=args.drift_reference_images,
        server_args=args,
    )


def prediction_log_url(
    p: argparse.ArgumentParser, args: argparse.Namespace, env: Mapping[str, str]
) -> str | None:
    """The prediction log's URL: the flag, else the file's content, else the environment."""
    if args.prediction_log_db and args.prediction_log_db_file:
        p.error("--prediction_log_db and --prediction_log_db_file: give one of them")
    if args.prediction_log_db_file:
        try:
            text = Path(args.prediction_log_db_file).read_text().strip()
        except OSError as exc:
            p.error(f"--prediction_log_db_file {args.prediction_log_db_file}: {exc.strerror}")
        if not text:
            p.error(f"--prediction_log_db_file {args.prediction_log_db_file}: the file is empty")
        return text
    return (args.prediction_log_db or env.get(PREDICTION_LOG_ENV, "")).strip() or None
