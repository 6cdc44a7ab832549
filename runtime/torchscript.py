"""The TorchScript engine: runs the model on one device with its placement, precision,
threads and CUDA graphs.

`runtime.plan.plan_execution` turns the flags into an ExecutionPlan without touching a GPU, so
the choice is testable on CPU; `TorchScriptEngine` carries the plan out. As in Triton's libtorch
backend, the module's `forward` takes the declared inputs in config order and returns one
tensor or a tuple, matched to the declared outputs in order. Build, warm up and run it on one
and the same thread: `runtime.worker.ForwardWorker` owns that thread (and says why it matters).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.modelrepo import CONFIG_FILE, EXPORTED_WITH_TORCH, ModelRepositoryError

from .plan import ExecutionPlan
from .tensors import Contract, Tensors

logger = logging.getLogger(__name__)

# Batch sizes captured as CUDA graphs; a batch runs in the smallest graph that holds it.
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def check_torch_version(exported_with: str | None, runtime: str = torch.__version__) -> None:
    """Raise ModelRepositoryError when `runtime` torch is older than the torch that exported the
    model (TorchScript loads in the same or a newer torch only); nothing when the repository
    does not say (an export older than the parameter)."""
    if not exported_with:
        return
    if _release(runtime) < _release(exported_with):
        raise ModelRepositoryError(
            f"model.pt was exported with torch {exported_with} ({CONFIG_FILE} parameter "
            f"{EXPORTED_WITH_TORCH}) but this predictor has torch {runtime}: TorchScript files "
            "load only in the same or a newer torch. Serve it from an image whose torch is at "
            f"least {'.'.join(map(str, _release(exported_with)))} (docker/predictor.Dockerfile's "
            "BASE_IMAGE), or export the model with this torch"
        )


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string ("2.13.0+cpu" -> (2, 13, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if match is None:
        raise ModelRepositoryError(f"torch version {version!r}: expected numbers like 2.13.0")
    return tuple(int(part) for part in match.group().split("."))


class TorchScriptEngine:
    """Loads the TorchScript artifact and runs batches of the declared named inputs."""

    def __init__(
        self, artifact: Path, plan: ExecutionPlan, contract: Contract, methods: Sequence[str] = ()
    ) -> None:
        """Load `artifact` for `plan`; `methods` are methods besides `forward` to keep through
        freezing where the module has them (see `call`)."""
        self.plan = plan
        self.contract = contract
        self.max_batch_size = contract.max_batch_size
        torch.set_num_threads(plan.num_threads)
        self.device = torch.device(plan.device)
        self.dtype = torch.float16 if plan.dtype == "fp16" else torch.float32
        module = torch.jit.load(str(artifact), map_location=self.device).eval()
        if self.dtype == torch.float16:
            module = module.half()
        # Freezing inlines the weights as constants and folds batch norms into convolutions
        # (measured ~10% faster per forward on CPU). Done here, after the device and dtype
        # are fixed, so the artifact on disk stays a plain module Triton and .half() accept.
        kept = [name for name in methods if hasattr(module, name)]
        self.module = torch.jit.freeze(module, preserved_attrs=kept)
        self._graphs: dict[int, tuple[Any, list[torch.Tensor], list[torch.Tensor]]] = {}
        self._staging: dict[str, torch.Tensor] = {}
        self.cuda_graphs = False  # whether batches replay captured graphs (set by warm_up)

    @classmethod
    def warmed(
        cls, artifact: Path, plan: ExecutionPlan, contract: Contract, methods: Sequence[str] = ()
    ) -> TorchScriptEngine:
        """Load the artifact and run every code path once: the builder for a ForwardWorker."""
        engine = cls(artifact, plan, contract, methods)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """Run once at batch 1 and at max_batch_size (and capture CUDA graphs) before the
        model reports ready."""
        for size in sorted({1, self.max_batch_size}):
            self.run(self.contract.zeros(size))
        if self.plan.cuda_graphs:
            if any(-1 in spec.dims for spec in self.contract.inputs):
                logger.info("no CUDA graphs: an input has a variable dimension")
                return
            try:
                self._capture_graphs()
            except RuntimeError as exc:  # a model that cannot be captured still serves
                self._graphs.clear()
                logger.warning("no CUDA graphs: capture failed (%s); running eagerly", exc)
                return
            self.cuda_graphs = True

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Every declared output for `inputs` (the declared inputs, batch first)."""
        with torch.inference_mode():
            names = self.contract.input_names
            if self.device.type == "cpu":
                outputs = self._forward([torch.from_numpy(inputs[name]) for name in names])
            else:
                staged = [self._to_device(name, torch.from_numpy(inputs[name])) for name in names]
                outputs = self._replay(staged) if self._graphs else self._forward(staged)
            return self._named(outputs)

    def call(self, method: str, *args: torch.Tensor) -> torch.Tensor:
        """Run one of the kept `methods` of the module (on the forward thread, as `run`)."""
        return getattr(self.module, method)(*args)

    def _forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        # On the FP16 plan the module was made half: FP32 inputs follow it. Every other input
        # goes in as declared (as Triton's libtorch backend passes them).
        half = self.dtype == torch.float16
        cast = [x.half() if half and x.dtype == torch.float32 else x for x in inputs]
        result = self.module(*cast)
        return list(result) if isinstance(result, tuple | list) else [result]

    def _named(self, outputs: list[torch.Tensor]) -> Tensors:
        specs = self.contract.outputs
        if len(outputs) != len(specs):
            raise RuntimeError(
                f"the module returned {len(outputs)} tensors, config.pbtxt declares "
                f"{len(specs)} outputs ({self.contract.output_names})"
            )
        return {
            spec.name: tensor.cpu().numpy().astype(spec.dtype, copy=False)
            for spec, tensor in zip(specs, outputs, strict=True)
        }

    def _to_device(self, name: str, host: torch.Tensor) -> torch.Tensor:
        # Pinned staging memory lets the copy run asynchronously (non_blocking).
        count = host.shape[0]
        staging = self._staging.get(name)
        if (
            staging is None
            or staging.shape[0] < count
            or staging.shape[1:] != host.shape[1:]
            or staging.dtype != host.dtype
        ):
            size = max(count, self.max_batch_size)
            staging = torch.empty((size, *host.shape[1:]), dtype=host.dtype).pin_memory()
            self._staging[name] = staging
        staged = staging[:count]
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def _capture_graphs(self) -> None:
        """Capture the forward pass for each of GRAPH_BATCH_SIZES up to the max batch."""
        sizes = [s for s in GRAPH_BATCH_SIZES if s <= self.max_batch_size] or [self.max_batch_size]
        if sizes[-1] < self.max_batch_size:
            sizes.append(self.max_batch_size)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode():
            for size in sizes:
                self._graphs[size] = self._capture(size, stream)
        logger.info("captured CUDA graphs for batch sizes %s", sizes)

    def _capture(
        self, size: int, stream: Any
    ) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
        """Warm one batch size up on a side stream, then record it as a CUDA graph."""
        static_in = [
            torch.from_numpy(array).to(self.device) for array in self.contract.zeros(size).values()
        ]
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._forward(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def _replay(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        count = inputs[0].shape[0]
        size = min(s for s in self._graphs if s >= count)
        graph, static_in, static_out = self._graphs[size]
        for slot, x in zip(static_in, inputs, strict=True):
            slot[:count].copy_(x)
        graph.replay()
        return [out[:count] for out in static_out]
