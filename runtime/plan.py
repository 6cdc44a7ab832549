"""Where and how a model runs, decided from the flags before anything loads (no torch here):
device, precision, CUDA graphs and threads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExecutionPlan:
    """Where and how the model runs."""

    device: str
    dtype: str  # "fp32", "fp16" (TorchScript on CUDA) or "bf16" (OpenVINO where native)
    cuda_graphs: bool
    num_threads: int


def plan_execution(
    device: str, precision: str, cuda_graphs: str, num_threads: int, cuda_available: bool
) -> ExecutionPlan:
    """Resolve the device/precision/graph flags for the TorchScript engine; raises ValueError
    for impossible choices."""
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    on_cuda = device.startswith("cuda")
    if on_cuda and not cuda_available:
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if not on_cuda and device != "cpu":
        raise ValueError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if precision == "bf16":
        raise ValueError(
            "--precision bf16: the TorchScript engine runs fp32 or (on CUDA) fp16; bf16 is the "
            "OpenVINO engine's (backend openvino)"
        )
    if precision == "auto":
        precision = "fp16" if on_cuda else "fp32"
    if precision == "fp16" and not on_cuda:
        raise ValueError("--precision fp16 needs a CUDA device (CPU FP16 is slower than FP32)")
    if cuda_graphs == "on" and not on_cuda:
        raise ValueError("--cuda_graphs on needs a CUDA device")
    graphs = on_cuda and cuda_graphs in ("auto", "on")
    return ExecutionPlan(device, precision, graphs, num_threads=num_threads)
