"""The TorchScript engine: runs the model on one device with its placement, precision,
threads and CUDA graphs.

`plan_execution` turns the flags into an ExecutionPlan without touching a GPU, so the choice is
testable on CPU; `TorchScriptEngine` carries the plan out. Build, warm up and run it on one and
the same thread: `predictor.worker.ForwardWorker` owns that thread (and says why it matters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Batch sizes captured as CUDA graphs; a batch runs in the smallest graph that holds it.
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ExecutionPlan:
    """Where and how the model runs."""

    device: str
    dtype: str  # "fp32" or "fp16"
    cuda_graphs: bool
    num_threads: int


def plan_execution(
    device: str, precision: str, cuda_graphs: str, num_threads: int, cuda_available: bool
) -> ExecutionPlan:
    """Resolve the device/precision/graph flags; raises ValueError for impossible choices."""
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    on_cuda = device.startswith("cuda")
    if on_cuda and not cuda_available:
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if not on_cuda and device != "cpu":
        raise ValueError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if precision == "auto":
        precision = "fp16" if on_cuda else "fp32"
    if precision == "fp16" and not on_cuda:
        raise ValueError("--precision fp16 needs a CUDA device (CPU FP16 is slower than FP32)")
    if cuda_graphs == "on" and not on_cuda:
        raise ValueError("--cuda_graphs on needs a CUDA device")
    graphs = on_cuda and cuda_graphs in ("auto", "on")
    return ExecutionPlan(device, precision, graphs, num_threads=num_threads)


class TorchScriptEngine:
    """Loads the TorchScript artifact and runs batches of UINT8 NHWC or FP32 NCHW arrays."""

    def __init__(self, artifact: Path, plan: ExecutionPlan, max_batch_size: int) -> None:
        self.plan = plan
        self.max_batch_size = max_batch_size
        torch.set_num_threads(plan.num_threads)
        self.device = torch.device(plan.device)
        self.dtype = torch.float16 if plan.dtype == "fp16" else torch.float32
        module = torch.jit.load(str(artifact), map_location=self.device).eval()
        if self.dtype == torch.float16:
            module = module.half()
        # Freezing inlines the weights as constants and folds batch norms into convolutions
        # (measured ~10% faster per forward on CPU). Done here, after the device and dtype
        # are fixed, so the artifact on disk stays a plain module Triton and .half() accept.
        self.module = torch.jit.freeze(module, preserved_attrs=["forward_normalized"])
        self._graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._staging: torch.Tensor | None = None

    @classmethod
    def warmed(
        cls, artifact: Path, plan: ExecutionPlan, max_batch_size: int, pixel_shape: tuple[int, ...]
    ) -> TorchScriptEngine:
        """Load the artifact and run every code path once: the builder for a ForwardWorker."""
        engine = cls(artifact, plan, max_batch_size)
        engine.warm_up(pixel_shape)
        return engine

    def warm_up(self, pixel_shape: tuple[int, ...]) -> None:
        """Run every code path once (and capture CUDA graphs) before the model reports ready."""
        for size in sorted({1, self.max_batch_size}):
            self.run(np.zeros((size, *pixel_shape), dtype=np.uint8))
        height, width, channels = pixel_shape
        self.run(np.zeros((1, channels, height, width), dtype=np.float32))
        if self.plan.cuda_graphs:
            self._capture_graphs(pixel_shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits as FP32 [N, classes] for UINT8 pixels or normalised FP32 input."""
        with torch.inference_mode():
            host = torch.from_numpy(batch)
            if self.device.type == "cpu":
                return self._forward(host).float().numpy()
            device_input = self._to_device(host)
            if batch.dtype == np.uint8 and self._graphs:
                logits = self._replay(device_input)
            else:
                logits = self._forward(device_input)
            return logits.float().cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return self.module(x)
        # The convolutions run fastest in channels_last, which NHWC pixels give for free.
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.module.forward_normalized(x)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        # Pinned staging memory lets the copy run asynchronously (non_blocking).
        if host.dtype != torch.uint8:
            return host.to(self.device, non_blocking=False)
        count = host.shape[0]
        if (
            self._staging is None
            or self._staging.shape[0] < count
            or self._staging.shape[1:] != host.shape[1:]
        ):
            size = max(count, self.max_batch_size)
            self._staging = torch.empty((size, *host.shape[1:]), dtype=torch.uint8).pin_memory()
        staged = self._staging[:count]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def _capture_graphs(self, pixel_shape: tuple[int, ...]) -> None:
        """Capture the UINT8 forward for each of GRAPH_BATCH_SIZES up to the max batch."""
        sizes = [s for s in GRAPH_BATCH_SIZES if s <= self.max_batch_size] or [self.max_batch_size]
        if sizes[-1] < self.max_batch_size:
            sizes.append(self.max_batch_size)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode():
            for size in sizes:
                self._graphs[size] = self._capture(size, pixel_shape, stream)
        logger.info("captured CUDA graphs for batch sizes %s", sizes)

    def _capture(
        self, size: int, pixel_shape: tuple[int, ...], stream: Any
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Warm one batch size up on a side stream, then record it as a CUDA graph."""
        static_in = torch.zeros((size, *pixel_shape), dtype=torch.uint8, device=self.device)
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return graph, static_in, static_out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        count = x.shape[0]
        size = min(s for s in self._graphs if s >= count)
        graph, static_in, static_out = self._graphs[size]
        static_in[:count].copy_(x)
        graph.replay()
        return static_out[:count]
