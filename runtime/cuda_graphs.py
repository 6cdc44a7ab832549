"""CUDA graphs of one forward pass at fixed batch sizes: capture, self-check and replay.

A graph records a forward pass's kernels once and replays them with one launch, which removes
the per-kernel launch cost that dominates a small network at small batches on a GPU. A graph
has fixed shapes, so one is captured per batch size in `sizes`, and a batch runs in the
smallest that holds it: its rows are copied into the graph's static input, the rest zeroed, and
the first rows of the static output are the answer (rows never mix in an eval-mode network).

Why the care, from torch/cuda/graphs.py:
- `torch.cuda.graph` captures on the stream it is given, else on one stream made once per
  process on whichever device was current then; the side stream of the warm-up passes and
  `torch.cuda.Stream()` also follow the current device. Every one of them is given the model's
  device here, and capture runs under `torch.cuda.device(device)`, so a model on cuda:1 is
  captured on cuda:1.
- A capture that records nothing (kernels sent to another device or stream) only warns, and
  replaying it leaves the static output as it was. Warnings are errors during capture, and
  each graph, once captured, is replayed on non-zero input and compared with the eager pass on
  the same input: a graph that disagrees stops the start (`GraphMismatch`).

The CUDA calls go through `cuda` (torch.cuda unless a test gives a stand-in), so which device
and stream each call gets is tested on a CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .tensors import EngineLoadError

Forward = Callable[[list[torch.Tensor]], list[torch.Tensor]]
# Passes on the side stream before each capture: lazy initialisation (cuBLAS handles, cuDNN
# plans, the TorchScript executor's profiling runs) must not happen inside a capture.
WARMUP_PASSES = 3


class GraphCaptureError(EngineLoadError):
    """A forward pass could not be captured (the pass may still run eagerly)."""


class GraphMismatch(EngineLoadError):
    """A captured graph's replay disagrees with the eager pass on the same input."""


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # static inputs, written before each replay
    outputs: list[torch.Tensor]  # static outputs, read after each replay


def graph_size(sizes: Sequence[int], rows: int) -> int:
    """The smallest of `sizes` that holds `rows`; raises ValueError when none does."""
    fitting = [size for size in sizes if size >= rows]
    if not fitting:
        raise ValueError(f"a batch of {rows} rows: the largest batch size is {max(sizes)}")
    return min(fitting)


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest |got - want| over want's largest magnitude (taken as at least 1): how far
    two passes over the same input are apart (NaN when either has a NaN)."""
    difference = (got.double() - want.double()).abs().max().item()
    return float(difference / max(1.0, want.double().abs().max().item()))


def disagreement(replayed: torch.Tensor, eager: torch.Tensor, rtol: float) -> str | None:
    """How `replayed` differs from `eager` beyond `rtol` (a relative_difference), or None when
    it does not."""
    if replayed.shape != eager.shape:
        return f"shape {tuple(replayed.shape)}, eager {tuple(eager.shape)}"
    difference = relative_difference(replayed, eager)
    if not difference <= rtol:  # also true for NaN
        return f"largest difference {difference:.4g} of the largest output, allowed {rtol:.4g}"
    return None


class CudaGraphs:
    """Graphs of `forward` on `device` at each batch size captured."""

    def __init__(self, forward: Forward, device: torch.device, cuda: Any = torch.cuda) -> None:
        """`forward` runs one pass on tensors already on `device`; `cuda` is torch.cuda."""
        self.forward = forward
        self.device = device
        self.cuda = cuda
        self._graphs: dict[int, _Graph] = {}

    @property
    def sizes(self) -> list[int]:
        """The batch sizes captured, ascending."""
        return sorted(self._graphs)

    def capture(
        self, sizes: Sequence[int], make_inputs: Callable[[int], list[torch.Tensor]]
    ) -> None:
        """Capture a graph for each of `sizes`, its static inputs from `make_inputs(size)` (on
        the device); raises GraphCaptureError, with nothing captured, when any capture fails or
        warns."""
        cuda = self.cuda
        try:
            with cuda.device(self.device):
                side = cuda.Stream(device=self.device)
                current = cuda.current_stream(self.device)
                for size in sizes:
                    static = make_inputs(size)
                    side.wait_stream(current)
                    with cuda.stream(side):
                        for _ in range(WARMUP_PASSES):
                            self.forward(static)
                    current.wait_stream(side)
                    graph = cuda.CUDAGraph()
                    # An empty or partial capture is only a warning (at the capture's end).
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        with cuda.graph(graph, stream=side):
                            outputs = self.forward(static)
                    self._graphs[size] = _Graph(graph, static, outputs)
        except (RuntimeError, Warning) as exc:
            self._graphs.clear()
            raise GraphCaptureError(
                f"capturing the forward pass on {self.device} failed: {exc}"
            ) from exc

    def verify(self, make_sample: Callable[[int], list[torch.Tensor]], rtol: float) -> None:
        """Replay every graph on `make_sample(size)` (non-zero input, on the device) and
        compare each output with the eager pass's; raises GraphMismatch on a difference beyond
        rtol of the output's largest magnitude."""
        for size in self.sizes:
            sample = make_sample(size)
            replayed = [out.clone() for out in self.replay(sample)]
            eager = self.forward(sample)
            for index, (got, want) in enumerate(zip(replayed, eager, strict=True)):
                problem = disagreement(got, want, rtol)
                if problem is not None:
                    raise GraphMismatch(
                        f"the CUDA graph for batch size {size} on {self.device} disagrees with "
                        f"the eager forward pass on the same input (output {index}: {problem}). "
                        "Refusing to serve its answers; --cuda_graphs off serves without graphs"
                    )

    def replay(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The outputs for `inputs` (on the device, one batch size), from the smallest graph
        that holds them: views of its static outputs, valid until the next replay."""
        rows = inputs[0].shape[0]
        chosen = self._graphs[graph_size(self.sizes, rows)]
        for slot, tensor in zip(chosen.inputs, inputs, strict=True):
            slot[:rows].copy_(tensor)
            slot[rows:].zero_()
        chosen.graph.replay()
        return [out[:rows] for out in chosen.outputs]
