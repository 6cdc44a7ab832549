"""Where and how a model runs, decided from the flags before anything loads (no torch here):
device, precision, CUDA graphs and threads.

The flags are the predictor's and the in-process batch job's alike (`add_flags`). What torch
sees of CUDA comes in as a `CudaInfo` (`runtime.engines.cuda_info` reads it), so every check,
the device index against the device count included, runs and is tested on a CPU machine.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
GRAPH_CHOICES = ("auto", "on", "off")
_DEVICE = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class ExecutionPlan:
    """Where and how the model runs."""

    device: str  # "cpu" or "cuda:N" (a bare "cuda" is resolved to "cuda:0")
    dtype: str  # "fp32", "fp16" (TorchScript on CUDA) or "bf16" (OpenVINO where native)
    cuda_graphs: bool
    num_threads: int
    # --cuda_graphs on: a capture that fails is a start-up error, not a fall back to eager.
    graphs_required: bool = False


@dataclass(frozen=True)
class CudaInfo:
    """What torch sees of CUDA: enough to check a --device flag and to say why it cannot be."""

    device_count: int = 0
    torch_version: str | None = None  # None: torch is not installed
    cuda_version: str | None = None  # torch.version.cuda; None on a CPU-only build of torch
    visible_devices: str | None = None  # $CUDA_VISIBLE_DEVICES; None when unset

    @property
    def available(self) -> bool:
        """Whether at least one CUDA device is usable."""
        return self.device_count > 0

    def describe(self) -> str:
        """torch, its CUDA, CUDA_VISIBLE_DEVICES and the device count, in one phrase."""
        if self.torch_version is None:
            build = "torch is not installed"
        elif self.cuda_version is None:
            build = f"torch {self.torch_version} is a CPU-only build"
        else:
            build = f"torch {self.torch_version} built with CUDA {self.cuda_version}"
        visible = (
            "CUDA_VISIBLE_DEVICES is unset"
            if self.visible_devices is None
            else f"CUDA_VISIBLE_DEVICES={self.visible_devices!r}"
        )
        return f"{build}, {visible}, {self.device_count} CUDA device(s) visible"


NO_CUDA = CudaInfo()


def add_flags(parser: argparse.ArgumentParser, applies: str = "") -> None:
    """Add --device, --precision and --cuda_graphs; `applies` prefixes each help text (for
    a command where they apply to one mode only)."""
    parser.add_argument(
        "--device",
        default="auto",
        help=f"{applies}{DEVICE_CHOICES} (auto: cuda:0 when torch sees a GPU, else cpu). "
        "cuda:N counts the devices CUDA_VISIBLE_DEVICES leaves visible.",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help=f"{applies}auto: fp16 on CUDA (TorchScript); else fp32, or what the repository's "
        "config says (OpenVINO's HINT_BF16, written by a BF16 build that passed its fidelity "
        "gate). ONNX Runtime runs its file's precision (fp32, or int8).",
    )
    parser.add_argument(
        "--cuda_graphs",
        default="auto",
        choices=GRAPH_CHOICES,
        help=f"{applies}capture CUDA graphs of the forward pass for common batch sizes, each "
        "checked against the eager pass before the model is ready (auto: on with CUDA, and a "
        "capture that fails falls back to eager; on: a failed capture stops the start).",
    )


def resolve_device(device: str, cuda: CudaInfo) -> str:
    """ "cpu" or "cuda:N" for the --device flag; raises ValueError naming what was given and
    what this machine has."""
    if device == "auto":
        return "cuda:0" if cuda.available else "cpu"
    if device == "cpu":
        return device
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise ValueError(f"--device {device!r}: expected {DEVICE_CHOICES}")
    if not cuda.available:
        raise ValueError(f"--device {device}: CUDA is not available ({cuda.describe()})")
    index = int(match.group(1) or 0)
    if index >= cuda.device_count:
        raise ValueError(
            f"--device {device}: there is no CUDA device {index}; expected an index from 0 to "
            f"{cuda.device_count - 1} ({cuda.describe()})"
        )
    return f"cuda:{index}"


def plan_execution(
    device: str, precision: str, cuda_graphs: str, num_threads: int, cuda: CudaInfo
) -> ExecutionPlan:
    """Resolve the device/precision/graph flags for the TorchScript engine; raises ValueError
    for impossible choices."""
    device = resolve_device(device, cuda)
    on_cuda = device != "cpu"
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
    return ExecutionPlan(
        device, precision, graphs, num_threads=num_threads, graphs_required=cuda_graphs == "on"
    )
