"""The predictor's settings: kserve's flags plus ours, parsed and validated once at start."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common import lifecycle, pacing
from common.cli import DEFAULT_MODEL_DIR, non_negative_float, positive_int
from common.cpus import available_cpus
from common.server import base_parser
from runtime import plan

# Model instances. Measured in process, batch 8, AMD EPYC AVX2, 2 CPUs: 2 x 1 thread against
# 1 x 2 threads gave the same images/s with ONNX Runtime FP32 (143/135 vs 137/140) and 1.13x
# with OpenVINO INT8 (197/210 vs 187/168); served, the event loops and the decoding share those
# two CPUs, and each copy holds its own model (~100-200 MiB). One until a served run at c16
# measures a gain (`python -m bench --served_predictor_args "--instances 2"`).
DEFAULT_INSTANCES = 1
# The longest expected wait for a forward pass a request is queued for (common.pacing): the
# images ahead of it over the images/s of forward-pass time measured recently, the same time on
# every engine and CPU. Above the transformer's own target (1 s of work end to end, most of it
# spent waiting here): a predictor behind one transformer does not refuse what that transformer
# admitted, and answers only what several transformers (or direct clients) pile up past 1.5 s.
DEFAULT_MAX_EXPECTED_WAIT_S = 1.5
# Images that may wait for a forward pass, as Triton's max_queue_size (which counts requests;
# images bound memory better when a request may hold a whole batch). A memory bound now, not
# the overload bound: the expected wait above refuses first on any CPU measured (1.5 s is
# 60-300 images on 2 CPUs); 1024 UINT8 224x224 images are 147 MiB. A GPU runs thousands of
# images/s: components/gpu raises it to match.
DEFAULT_MAX_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class PredictorSettings:
    """Everything the predictor needs beyond kserve's own server flags."""

    model_name: str
    model_dir: Path
    model_version: str | None
    device: str
    precision: str
    cuda_graphs: str
    num_threads: int  # per instance
    instances: int
    max_batch_size: int | None  # None: the model config's max_batch_size
    max_batch_delay_ms: float | None  # None: the model config's dynamic batching delay
    max_queue_size: int
    max_expected_wait_s: float  # 0: no time bound
    max_request_bytes: int
    model_repository_api: bool
    lifecycle: lifecycle.LifecycleSettings
    server_args: argparse.Namespace


def parser() -> argparse.ArgumentParser:
    """The predictor's command line (kserve's server flags are included)."""
    p = base_parser(
        "Serve a model from a Triton-style model repository with the engine its config.pbtxt "
        "platform or backend names (onnxruntime_onnx: ONNX Runtime; backend openvino: "
        "OpenVINO; pytorch_libtorch: TorchScript)."
    )
    p.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="Model repository root.")
    p.add_argument("--model_version", default=None, help="Version directory (default: newest).")
    plan.add_flags(p)
    p.add_argument(
        "--instances",
        type=positive_int,
        default=DEFAULT_INSTANCES,
        help="Model copies, each on its own forward thread with --num_threads threads (Triton's "
        "instance_group count); a batch goes to a free one. Default 1: measured, see README "
        "(Engines).",
    )
    p.add_argument(
        "--num_threads",
        type=positive_int,
        default=None,
        help="Intra-op threads of each instance (default: the CPUs this container may use, "
        "shared among the instances).",
    )
    p.add_argument(
        "--max_batch_size",
        type=positive_int,
        default=None,
        help="Most images in one forward pass (default: the model config's max_batch_size). "
        "Requests may still carry up to the config's max_batch_size images; larger ones than a "
        "pass takes are split.",
    )
    p.add_argument(
        "--max_batch_delay_ms",
        type=non_negative_float,
        default=None,
        help="Longest wait for a fuller batch under load (default: the model "
        "config's dynamic_batching delay).",
    )
    p.add_argument(
        "--enable_model_repository_api",
        action="store_true",
        help="Serve the V2 model repository extension (REST /v2/repository/..., gRPC "
        "RepositoryModelLoad/Unload). Off by default: one call unloads the model, and kserve "
        "cannot load it back without a restart.",
    )
    p.add_argument(
        "--max_queue_size",
        type=positive_int,
        default=DEFAULT_MAX_QUEUE_SIZE,
        help="Most images waiting for a forward pass (a memory bound; the expected wait bounds "
        "time); past it requests are refused at once with 503 (Retry-After) / UNAVAILABLE.",
    )
    pacing.add_flag(
        p, DEFAULT_MAX_EXPECTED_WAIT_S, "the images queued ahead of a request and its own"
    )
    lifecycle.add_flags(p)
    return p


def parse(argv: list[str] | None = None) -> PredictorSettings:
    """Parse and validate the command line; exits with a usage message on bad flags."""
    args = parser().parse_args(argv)
    return PredictorSettings(
        model_name=args.model_name,
        model_dir=Path(args.model_dir),
        model_version=args.model_version,
        device=args.device,
        precision=args.precision,
        cuda_graphs=args.cuda_graphs,
        num_threads=args.num_threads or max(1, available_cpus() // args.instances),
        instances=args.instances,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        max_queue_size=args.max_queue_size,
        max_expected_wait_s=args.max_expected_wait_seconds,
        max_request_bytes=args.max_request_bytes,
        model_repository_api=args.enable_model_repository_api,
        lifecycle=lifecycle.LifecycleSettings.from_args(args),
        server_args=args,
    )
