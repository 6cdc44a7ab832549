"""Which engine runs a model version: as in Triton, the config's `platform` decides.

    pytorch_libtorch  -> TorchScriptEngine (CPU or CUDA; FP16 and CUDA graphs on a GPU)
    onnxruntime_onnx  -> OnnxEngine (onnxruntime's CPU execution provider; FP32 or INT8 file)

`plan_engine` checks the device/precision flags against the platform without loading
anything; `build_engine` loads and warms the engine and is meant to run on the forward thread
(`ForwardWorker(lambda: build_engine(...))`). The predictor and the in-process batch job both
get their engine here, so both serve a repository the same way.
"""

from __future__ import annotations

from common.modelrepo import ONNX_PLATFORM, TORCHSCRIPT_PLATFORM, ModelVersion

from .onnx_engine import OnnxEngine
from .torchscript import ExecutionPlan, TorchScriptEngine, plan_execution
from .worker import Engine

ENGINE_NAMES = {TORCHSCRIPT_PLATFORM: "TorchScript", ONNX_PLATFORM: "onnxruntime"}


def plan_engine(
    platform: str,
    device: str,
    precision: str,
    cuda_graphs: str,
    num_threads: int,
    cuda_available: bool,
) -> ExecutionPlan:
    """Resolve the flags for the platform's engine; raises ValueError for impossible choices."""
    if platform == TORCHSCRIPT_PLATFORM:
        return plan_execution(device, precision, cuda_graphs, num_threads, cuda_available)
    if platform != ONNX_PLATFORM:
        raise ValueError(f"platform {platform!r}: expected one of {sorted(ENGINE_NAMES)}")
    refused = {
        "--device": device not in ("auto", "cpu"),
        "--precision": precision not in ("auto", "fp32"),
        "--cuda_graphs": cuda_graphs == "on",
    }
    wrong = [
        f"{flag} {value}"
        for (flag, bad), value in zip(
            refused.items(), (device, precision, cuda_graphs), strict=True
        )
        if bad
    ]
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: the onnxruntime engine ({ONNX_PLATFORM}) runs on the CPU at "
            "the precision of its file; serve a TorchScript repository (pytorch_libtorch) "
            "for CUDA and FP16"
        )
    return ExecutionPlan("cpu", "fp32", cuda_graphs=False, num_threads=num_threads)


def build_engine(version: ModelVersion, plan: ExecutionPlan, max_batch_size: int) -> Engine:
    """Load and warm up the engine for `version` (call it on the forward thread)."""
    pixels, logits = version.config.inputs[0], version.config.outputs[0]
    if version.config.platform == ONNX_PLATFORM:
        return OnnxEngine.warmed(
            version.artifact,
            plan.num_threads,
            max_batch_size,
            pixels.name,
            logits.name,
            pixels.dims,
        )
    return TorchScriptEngine.warmed(version.artifact, plan, max_batch_size, pixels.dims)


def describe(version: ModelVersion, plan: ExecutionPlan, engine: Engine) -> str:
    """One line for the start-up log: engine, file, device, precision, threads."""
    name = ENGINE_NAMES.get(version.config.platform, version.config.platform)
    precision = getattr(engine, "precision", plan.dtype)
    graphs = ", CUDA graphs" if plan.cuda_graphs else ""
    return (
        f"engine {name} ({version.config.platform}, {version.artifact.name}) on {plan.device}, "
        f"{precision}, {plan.num_threads} threads{graphs}"
    )
