"""The GPU smoke test: the predictor's CUDA path checked on a real GPU in a few minutes.

    python scripts/gpu_smoke.py --model_repository model_repository [--device cuda:0]
    python scripts/gpu_smoke.py --model_repository model_repository --dry-run   # on a CPU
    python scripts/gpu_smoke.py --model_repository model_repository --export    # older torch

Checks, each recorded in the JSON report (`--report`) as passed or failed with its figures:
export (`--export` only: model.pt exported with this machine's torch into a repository
that the later checks use, at `--export_to` or in a temporary directory removed at exit, and
what the carried model.pt does under this torch; for a GPU image whose torch is older than the
exporter's, which refuses the carried file), load
(model.pt under this torch, the exporter's torch named), build (FP16 with CUDA graphs
required: warnings during capture are errors, every batch size captured and checked against
the eager pass), distinct (two different images give different logits: the empty graph),
reference (top-1 equal to CPU FP32 on the test photos, logits within REFERENCE_RTOL of the
largest), partial (every batch size's rows equal to the full batch's), graphs (on equal to
off), normalized (the FP32 NCHW entrance equal to the UINT8 path), batcher (the predictor's
forward thread and batcher under concurrent mixed submits, each equal to its standalone
answer), throughput (images/s at the max batch size, and at 1 and 8; peak GPU memory and peak
resident host memory).

`--dry-run` runs every check on the CPU in FP32 without graphs: everything but CUDA. Beyond
the GPU image's torch, numpy, pillow and prometheus-client, the script needs protobuf, Triton's
config proto and opentelemetry-api (and, for `--export`, the exporter's EfficientNet
packages): `make gpu-smoke-kit` puts them, pure Python, in .gpu-smoke/site, which the script
puts first on its path (carry it with model_repository). A missing one fails the checks that
need it and names it. Exit status: 0 when every check passed, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# `make gpu-smoke-kit`: pure-Python protobuf, Triton's config proto and opentelemetry-api, ahead
# of the image's own packages (the config proto's generated code wants its protobuf version).
KIT = ROOT / ".gpu-smoke" / "site"
sys.path[:0] = [str(ROOT)] + ([str(KIT)] if KIT.is_dir() else [])

PHOTOS = ROOT / "tests" / "data"
MODEL_NAME = "image-classifier"
# FP16 against FP32 logits, relative to the largest FP32 logit (measured on the CPU's FP16
# kernels: 2.7% on random pixels; the photos agree far closer).
REFERENCE_RTOL = 0.05
# The same precision by another path (another batch size, graphs off, the other entrance):
# different kernels may be picked per shape, so FP16 rounding may differ a little.
SAME_RTOL = {"fp16": 1e-2, "fp32": 1e-4}


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |got - want| over want's largest magnitude: the measure the predictor's
    CUDA graph self-check uses."""
    import torch

    from runtime.cuda_graphs import relative_difference as of_tensors

    return of_tensors(torch.from_numpy(got), torch.from_numpy(want))


class Report:
    """The checks run so far, written as JSON."""

    def __init__(self, environment: dict[str, Any]) -> None:
        self.environment = environment
        self.checks: dict[str, dict[str, Any]] = {}

    def check(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one check: its figures on success; the error recorded (and None) on failure."""
        started = time.monotonic()
        try:
            figures = run()
            self.checks[name] = {"passed": True, **figures}
        except Exception as exc:  # every failure is recorded, whatever its type, and named
            self.checks[name] = {
                "passed": False,
                "error": f"{type(exc).__name__}: {exc}",
                "where": traceback.format_exc(limit=3)[-1500:],
            }
            figures = None
        self.checks[name]["seconds"] = round(time.monotonic() - started, 2)
        mark = "ok  " if self.checks[name]["passed"] else "FAIL"
        print(f"{mark} {name}: {json.dumps(self.checks[name], default=str)[:400]}", flush=True)
        return figures

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks.values())

    def write(self, path: Path) -> None:
        document = {"passed": self.passed, "environment": self.environment, "checks": self.checks}
        path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def environment(dry_run: bool) -> dict[str, Any]:
    """The machine, torch and CUDA as this process sees them."""
    import torch

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "dry_run": dry_run,
    }
    if torch.cuda.is_available():
        found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return found


def photos(model_dir: Path, count: int) -> np.ndarray:
    """UINT8 pixels of the test photos, cycled up to `count` images."""
    from vision.imaging import DecodeLimits, preprocess
    from vision.preprocessing import Preprocessing

    params = Preprocessing.read(model_dir)
    decoded = [
        preprocess(path.read_bytes(), params, DecodeLimits()) for path in sorted(PHOTOS.iterdir())
    ]
    return np.stack([decoded[i % len(decoded)] for i in range(count)])


def main(argv: list[str] | None = None) -> int:
    """Run every check; write the report; 0 when all passed."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model_repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dry-run", action="store_true", help="Everything but CUDA, on the CPU.")
    p.add_argument("--submits", type=int, default=500, help="Concurrent batcher submits.")
    p.add_argument("--seconds", type=float, default=5.0, help="Throughput measurement time.")
    p.add_argument("--report", type=Path, default=Path("gpu_smoke.json"))
    p.add_argument(
        "--export",
        action="store_true",
        help="First export model.pt with this machine's torch (for an image whose torch is "
        "older than the exporter's); the other checks use that export.",
    )
    p.add_argument(
        "--export_to",
        type=Path,
        default=None,
        help="Where --export writes its repository, kept (default: a temporary directory, "
        "removed at exit).",
    )
    args = p.parse_args(argv)
    if args.export_to is not None and not args.export:
        p.error("--export_to names where --export writes: give --export too")
    if args.export_to is not None and args.export_to.resolve() == args.model_repository.resolve():
        p.error(f"--export_to {args.export_to} is --model_repository: it would overwrite model.pt")
    with contextlib.ExitStack() as cleanup:
        return run_checks(args, cleanup)


def run_checks(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> int:
    """Every check in order; the report written; 0 when all passed."""
    report = Report(environment(args.dry_run))
    state: dict[str, Any] = {"repository": args.model_repository}
    if args.export:
        target = args.export_to or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="gpu-smoke-repository-"))
        )
        report.check("export", lambda: export_here(args.model_repository, target, state))
    report.check("load", lambda: load(args, state))
    if "version" in state:
        report.check("build", lambda: build(args, state))
    if "engine" in state:
        engine, reference = state["engine"], state["reference"]
        rtol = SAME_RTOL[state["plan"].dtype]
        report.check("distinct", lambda: distinct(engine, state["pixels"]))
        report.check("reference", lambda: against_reference(engine, reference, state["pixels"]))
        report.check("partial", lambda: partial(engine, state["pixels"], rtol))
        report.check("graphs", lambda: graphs_on_off(args, state, rtol))
        report.check("normalized", lambda: normalized_entrance(state, rtol))
        report.check("batcher", lambda: batcher(state, args.submits, rtol))
        report.check("throughput", lambda: throughput(engine, state["pixels"], args.seconds))
    report.write(args.report)
    print(f"{'passed' if report.passed else 'FAILED'}; report: {args.report}")
    return 0 if report.passed else 1


def export_here(carried: Path, here: Path, state: dict[str, Any]) -> dict[str, Any]:
    """model.pt exported with this torch into the repository `here`, which the later checks
    use; what the carried repository's model.pt does under this torch is recorded."""
    from common.modelrepo import EXPORTED_WITH_TORCH, ModelRepositoryError, resolve
    from modelbuild.export import export
    from runtime.torchscript import check_torch_version

    figures: dict[str, Any] = {}
    try:
        exported = resolve(carried, MODEL_NAME).config.parameters.get(EXPORTED_WITH_TORCH)
        figures["carried_exported_with_torch"] = exported
        check_torch_version(exported)
        figures["carried"] = "loads under this torch"
    except ModelRepositoryError as exc:
        figures["carried"] = str(exc)
    export(here, MODEL_NAME)
    state["repository"] = here
    return {**figures, "exported_to": str(here)}


def load(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    """model.pt under this torch, and the CPU FP32 reference engine."""
    import torch

    from common.modelrepo import EXPORTED_WITH_TORCH, resolve
    from runtime.engines import build_engine, cuda_info
    from runtime.plan import NO_CUDA, plan_execution

    version = resolve(state["repository"], MODEL_NAME)
    exported = version.config.parameters.get(EXPORTED_WITH_TORCH)
    if not args.dry_run and not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA here ({cuda_info().describe()}); --dry-run runs on a CPU")
    max_batch = version.config.max_batch_size
    reference = build_engine(version, plan_execution("cpu", "fp32", "off", 2, NO_CUDA), max_batch)
    state.update(version=version, reference=reference, pixels=photos(version.model_dir, max_batch))
    return {"exported_with_torch": exported, "runtime_torch": torch.__version__}


def build(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    """The predictor's engine as a GPU node runs it: FP16, CUDA graphs required and checked."""
    from runtime.engines import build_engine, cuda_info
    from runtime.plan import NO_CUDA, plan_execution

    version = state["version"]
    if args.dry_run:
        plan = plan_execution("cpu", "fp32", "off", 2, NO_CUDA)
    else:
        plan = plan_execution(args.device, "fp16", "on", 2, cuda_info())
    engine = build_engine(version, plan, version.config.max_batch_size)
    state.update(engine=engine, plan=plan)
    return {
        "device": plan.device,
        "precision": plan.dtype,
        "cuda_graphs": bool(getattr(engine, "cuda_graphs", False)),
        "batch_sizes": getattr(engine, "batch_sizes", []),
    }


def logits(engine: Any, pixels: np.ndarray) -> np.ndarray:
    from runtime.tensors import run_one

    return run_one(engine, pixels)


def distinct(engine: Any, pixels: np.ndarray) -> dict[str, Any]:
    """Two different images, one at a time: different logits (an empty graph repeats one)."""
    first, second = logits(engine, pixels[:1]), logits(engine, pixels[1:2])
    difference = float(np.abs(first - second).max())
    if difference == 0.0:
        raise AssertionError("two different images gave identical logits")
    return {"largest_difference": difference}


def against_reference(engine: Any, reference: Any, pixels: np.ndarray) -> dict[str, Any]:
    """Top-1 equal to CPU FP32 on every test photo; logits within REFERENCE_RTOL."""
    count = len(list(PHOTOS.iterdir()))
    got, want = logits(engine, pixels[:count]), logits(reference, pixels[:count])
    difference = relative_difference(got, want)
    if got.argmax(1).tolist() != want.argmax(1).tolist():
        raise AssertionError(f"top-1 {got.argmax(1).tolist()}, CPU FP32 {want.argmax(1).tolist()}")
    if difference > REFERENCE_RTOL:
        raise AssertionError(
            f"logits differ by {difference:.4f} of the largest (> {REFERENCE_RTOL})"
        )
    return {"photos": count, "relative_difference": difference, "tolerance": REFERENCE_RTOL}


def partial(engine: Any, pixels: np.ndarray, rtol: float) -> dict[str, Any]:
    """Every batch size's rows equal to the same rows of the full batch."""
    full = logits(engine, pixels)
    worst = 0.0
    for rows in range(1, len(pixels)):
        worst = max(worst, relative_difference(logits(engine, pixels[:rows]), full[:rows]))
    if worst > rtol:
        raise AssertionError(f"a partial batch differs by {worst:.4g} of the largest (> {rtol})")
    return {"sizes": len(pixels), "relative_difference": worst}


def graphs_on_off(args: argparse.Namespace, state: dict[str, Any], rtol: float) -> dict[str, Any]:
    """The engine with graphs off gives the graphed engine's logits."""
    from dataclasses import replace

    from runtime.engines import build_engine

    version, plan = state["version"], state["plan"]
    eager = build_engine(version, replace(plan, cuda_graphs=False), version.config.max_batch_size)
    worst = 0.0
    for rows in (1, 3, len(state["pixels"])):
        batch = state["pixels"][:rows]
        worst = max(
            worst, relative_difference(logits(state["engine"], batch), logits(eager, batch))
        )
    if worst > rtol:
        raise AssertionError(f"graphs on and off differ by {worst:.4g} of the largest (> {rtol})")
    return {"relative_difference": worst}


def normalized_entrance(state: dict[str, Any], rtol: float) -> dict[str, Any]:
    """FP32 NCHW, normalised as the repository's preprocess.json says, through the second
    entrance: the UINT8 path's logits."""
    from vision.preprocessing import Preprocessing

    engine, pixels = state["engine"], state["pixels"][:5]
    params = Preprocessing.read(state["version"].model_dir)
    mean = np.asarray(params.mean, np.float32)
    std = np.asarray(params.std, np.float32)
    nchw = ((pixels.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()
    difference = relative_difference(logits(engine, nchw), logits(engine, pixels))
    if difference > rtol:
        raise AssertionError(f"FP32 entrance differs by {difference:.4g} of the largest")
    return {"relative_difference": difference}


def batcher(state: dict[str, Any], submits: int, rtol: float) -> dict[str, Any]:
    """The predictor's forward thread (an engine of the same plan built on it) and adaptive
    batcher under `submits` concurrent requests of 1-4 images each: every answer equal to that
    request run alone."""
    from predictor.batcher import AdaptiveBatcher
    from runtime.engines import build_engine
    from runtime.worker import ForwardWorker

    engine, pixels, version = state["engine"], state["pixels"], state["version"]
    name = engine.contract.input_names[0]
    output = engine.contract.output_names[0]
    rng = np.random.default_rng(0)
    requests = [pixels[rng.integers(0, len(pixels), rng.integers(1, 5))] for _ in range(submits)]
    alone = [logits(engine, request) for request in requests]
    max_batch = version.config.max_batch_size
    worker = ForwardWorker(lambda: build_engine(version, state["plan"], max_batch))

    async def run() -> list[np.ndarray]:
        queue = AdaptiveBatcher(worker.run, max_batch, 0.002, max_queue_size=10_000)
        answers = await asyncio.gather(*(queue.submit({name: r}) for r in requests))
        queue.close()
        return [answer[output] for answer in answers]

    started = time.monotonic()
    answers = asyncio.run(run())
    worker.close()
    worst = max(relative_difference(got, want) for got, want in zip(answers, alone, strict=True))
    if worst > rtol:
        raise AssertionError(f"a batched answer differs from its own by {worst:.4g} (> {rtol})")
    return {
        "submits": submits,
        "images": sum(len(r) for r in requests),
        "seconds": round(time.monotonic() - started, 2),
        "relative_difference": worst,
    }


def throughput(engine: Any, pixels: np.ndarray, seconds: float) -> dict[str, Any]:
    """Images/s at the max batch size (and at 1 and 8, a third of the time each), the GPU memory
    the process peaked at, and its peak resident host memory (this whole process: the CPU
    reference engine included, so an upper bound for a predictor's)."""
    import resource

    import torch

    def rate(batch: np.ndarray, budget: float) -> tuple[float, float]:
        passes, started = 0, time.monotonic()
        while time.monotonic() - started < budget:
            logits(engine, batch)
            passes += 1
        elapsed = time.monotonic() - started
        return passes * len(batch) / elapsed, 1000 * elapsed / passes

    images_per_s, ms_per_pass = rate(pixels, seconds)
    figures: dict[str, Any] = {
        "batch_size": len(pixels),
        "images_per_s": round(images_per_s, 1),
        "ms_per_pass": round(ms_per_pass, 2),
        "images_per_s_by_batch_size": {
            size: round(rate(pixels[:size], seconds / 3)[0], 1)
            for size in (1, 8)
            if size < len(pixels)
        },
        # ru_maxrss is in KiB on Linux.
        "peak_process_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if torch.cuda.is_available():
        figures["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


if __name__ == "__main__":
    sys.exit(main())
