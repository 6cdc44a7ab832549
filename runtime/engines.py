"""Which engine runs a model version: as in Triton, the config's `platform` decides.

    pytorch_libtorch  -> TorchScriptEngine (CPU or CUDA; FP16 and CUDA graphs on a GPU)
    onnxruntime_onnx  -> OnnxEngine (onnxruntime's CPU execution provider; FP32 or INT8 file)
    openvino          -> OpenVinoEngine (`backend: "openvino"`; CPU; FP32, BF16 where native,
                         INT8 file; OpenVINO IR or ONNX)

Each engine is one `EngineType` in `ENGINES`: its name, how it checks the device/precision
flags (`plan`, loading nothing) and how it loads and warms a version (`build`, meant to run on
the forward thread: `ForwardWorker(lambda: build_engine(...))`). Serving another kind of model
file is one more entry. The predictor, the in-process batch job and the benchmark all get their
engine here, so all serve a repository the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from common.modelrepo import (
    EXPORTED_WITH_TORCH,
    ONNX_PLATFORM,
    OPENVINO,
    TORCHSCRIPT_PLATFORM,
    ModelVersion,
)

from . import normalized
from .plan import NO_CUDA, CudaInfo, ExecutionPlan, plan_execution
from .tensors import Contract, Engine

# (device, precision, cuda_graphs, num_threads, what torch sees of CUDA) -> the plan, or
# ValueError.
Planner = Callable[[str, str, str, int, CudaInfo], ExecutionPlan]
# (version, plan, contract with the forward pass's batch size) -> a warmed engine.
Builder = Callable[[ModelVersion, ExecutionPlan, Contract], Engine]


@dataclass(frozen=True)
class EngineType:
    """One engine: what it is called, how it plans, how it is built."""

    name: str
    plan: Planner
    build: Builder


def _refused(*checks: tuple[str, str, bool]) -> list[str]:
    """ "--flag value" for each (flag, value, refused) check that refuses."""
    return [f"{flag} {value}" for flag, value, refused in checks if refused]


def _plan_cpu_only(
    device: str, precision: str, cuda_graphs: str, num_threads: int, cuda: CudaInfo
) -> ExecutionPlan:
    """The plan of an engine that runs on the CPU at its file's precision."""
    wrong = _refused(
        ("--device", device, device not in ("auto", "cpu")),
        ("--precision", precision, precision not in ("auto", "fp32")),
        ("--cuda_graphs", cuda_graphs, cuda_graphs == "on"),
    )
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: the onnxruntime engine ({ONNX_PLATFORM}) runs on the CPU at "
            "the precision of its file; serve a TorchScript repository (pytorch_libtorch) "
            "for CUDA and FP16"
        )
    return ExecutionPlan("cpu", "fp32", cuda_graphs=False, num_threads=num_threads)


def _plan_openvino(
    device: str, precision: str, cuda_graphs: str, num_threads: int, cuda: CudaInfo
) -> ExecutionPlan:
    """OpenVINO's plan: the CPU, FP32, or BF16 when asked for where the CPU computes it natively.

    `auto` is FP32: BF16 changes the answers a little, so it is turned on by the repository
    (config.pbtxt's `HINT_BF16: "YES"`, as Triton's backend reads it), which `python -m
    modelbuild openvino --precision bf16` writes only after BF16 passed the fidelity gate on
    the held-out set. `--precision bf16` asks for it regardless.
    """
    wrong = _refused(
        ("--device", device, device not in ("auto", "cpu")),
        ("--cuda_graphs", cuda_graphs, cuda_graphs == "on"),
        ("--precision", precision, precision == "fp16"),
    )
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: the OpenVINO engine ({OPENVINO}) runs on the CPU in FP32, BF16 "
            "or its file's INT8; serve a TorchScript repository for CUDA and FP16"
        )
    native = _openvino().cpu_capabilities()
    if precision == "bf16" and "BF16" not in native:
        raise ValueError(
            f"--precision bf16: this CPU has no native BF16 (OpenVINO reports {list(native)}); "
            "use fp32 or auto"
        )
    chosen = "bf16" if precision == "bf16" else "fp32"
    return ExecutionPlan("cpu", chosen, cuda_graphs=False, num_threads=num_threads)


def _openvino() -> Any:
    """The openvino_engine module; raises ValueError naming the extra when OpenVINO is not
    installed."""
    try:
        from . import openvino_engine
    except ImportError as exc:
        raise ValueError(
            f"backend openvino: OpenVINO is not installed ({exc}); pip install "
            "'kserve-image-classifier[openvino]'"
        ) from exc
    return openvino_engine


def _build_openvino(version: ModelVersion, plan: ExecutionPlan, contract: Contract) -> Engine:
    OpenVinoEngine = _openvino().OpenVinoEngine

    return OpenVinoEngine.warmed(
        version.artifact, contract, plan.num_threads, plan.dtype, version.config.parameters
    )


def _build_onnx(version: ModelVersion, plan: ExecutionPlan, contract: Contract) -> Engine:
    from .onnx_engine import OnnxEngine

    engine = OnnxEngine.warmed(version.artifact, contract, plan.num_threads)
    return normalized.with_entrance(engine, normalized.onnx_entrance)


def _build_torchscript(version: ModelVersion, plan: ExecutionPlan, contract: Contract) -> Engine:
    from .torchscript import TorchScriptEngine, check_torch_version

    check_torch_version(version.config.parameters.get(EXPORTED_WITH_TORCH))
    methods = (normalized.NORMALIZED_METHOD,)
    engine = TorchScriptEngine.warmed(version.artifact, plan, contract, methods)
    return normalized.with_entrance(engine, normalized.torchscript_entrance)


ENGINES: dict[str, EngineType] = {
    TORCHSCRIPT_PLATFORM: EngineType("TorchScript", plan_execution, _build_torchscript),
    ONNX_PLATFORM: EngineType("onnxruntime", _plan_cpu_only, _build_onnx),
    OPENVINO: EngineType("OpenVINO", _plan_openvino, _build_openvino),
}


def engine_type(platform: str) -> EngineType:
    """The engine for `platform`; raises ValueError naming the platforms served."""
    try:
        return ENGINES[platform]
    except KeyError:
        raise ValueError(f"platform {platform!r}: expected one of {sorted(ENGINES)}") from None


def plan_engine(
    platform: str,
    device: str,
    precision: str,
    cuda_graphs: str,
    num_threads: int,
    cuda: CudaInfo,
) -> ExecutionPlan:
    """Resolve the flags for the platform's engine; raises ValueError for impossible choices."""
    return engine_type(platform).plan(device, precision, cuda_graphs, num_threads, cuda)


def build_engine(version: ModelVersion, plan: ExecutionPlan, max_batch_size: int) -> Engine:
    """Load and warm up the engine for `version`, forward passes of up to `max_batch_size`
    rows (call it on the forward thread)."""
    contract = replace(Contract.of(version.config), max_batch_size=max_batch_size)
    return engine_type(version.config.platform).build(version, plan, contract)


def cuda_info() -> CudaInfo:
    """What torch sees of CUDA here (NO_CUDA's counts without torch); initialises no device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
    except ImportError:
        return replace(NO_CUDA, visible_devices=visible)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return CudaInfo(count, torch.__version__, torch.version.cuda, visible)


def engine_name(version: ModelVersion, plan: ExecutionPlan, engine: Engine) -> str:
    """The engine, device and precision in a few words ("onnxruntime cpu fp32"): a span
    attribute."""
    precision = getattr(engine, "precision", plan.dtype)
    return f"{ENGINES[version.config.platform].name} {plan.device} {precision}"


def describe(version: ModelVersion, plan: ExecutionPlan, engine: Engine) -> str:
    """One line for the start-up log: engine, file, device, precision, threads."""
    name = ENGINES[version.config.platform].name
    precision = getattr(engine, "precision", plan.dtype)
    graphs = ", CUDA graphs" if getattr(engine, "cuda_graphs", False) else ""
    entrance = ", normalised FP32 entrance" if engine.contract.alternates else ""
    return (
        f"engine {name} ({version.config.platform}, {version.artifact.name}) on {plan.device}, "
        f"{precision}, {plan.num_threads} threads{graphs}{entrance}"
    )
