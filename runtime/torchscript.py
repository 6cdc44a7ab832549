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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.modelrepo import CONFIG_FILE, EXPORTED_WITH_TORCH, ModelRepositoryError

from .cuda_graphs import CudaGraphs, GraphCaptureError, graph_size
from .plan import ExecutionPlan
from .tensors import Contract, Tensors

logger = logging.getLogger(__name__)

# The batch sizes of a forward pass on CUDA (and the max batch size): a batch is padded to the
# smallest that holds it, so every shape the GPU will see is captured as a CUDA graph, or
# warmed up eagerly, before the model is ready, and no live request pays for a new shape.
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# On CUDA each batch size is warmed twice: TorchScript's profiling executor optimises a shape
# on its second run.
CUDA_WARM_PASSES = 2
# A CUDA graph's replay against the eager pass on the same input, relative to the output's
# largest magnitude: the same kernels, so any real difference is far larger (an empty graph
# gives the previous input's answer).
GRAPH_RTOL = {torch.float16: 1e-2, torch.float32: 1e-4}


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


def padded_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes a CUDA forward pass runs at: GRAPH_BATCH_SIZES up to `max_batch_size`,
    and `max_batch_size` itself."""
    return sorted({size for size in GRAPH_BATCH_SIZES if size < max_batch_size} | {max_batch_size})


def prepare_module(module: Any, dtype: torch.dtype, methods: Sequence[str] = ()) -> Any:
    """`module` (loaded, on its device) in `dtype` and frozen, keeping `methods` besides
    forward where it has them."""
    if dtype == torch.float16:
        module = module.half()
    # Freezing inlines the weights as constants and folds batch norms into convolutions
    # (measured ~10% faster per forward on CPU). Done here, after the device and dtype
    # are fixed, so the artifact on disk stays a plain module Triton and .half() accept.
    kept = [name for name in methods if hasattr(module, name)]
    return torch.jit.freeze(module.eval(), preserved_attrs=kept)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with zero rows added up to `rows`, in its memory layout (a channels_last
    batch stays channels_last: the convolutions' fast path)."""
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        padded = padded.contiguous(memory_format=torch.channels_last)
    padded[: tensor.shape[0]].copy_(tensor)
    return padded


class TorchScriptEngine:
    """Loads the TorchScript artifact and runs batches of the declared named inputs."""

    def __init__(
        self, artifact: Path, plan: ExecutionPlan, contract: Contract, methods: Sequence[str] = ()
    ) -> None:
        """Load `artifact` for `plan` (on the forward thread); `methods` are methods besides
        `forward` to keep through freezing where the module has them (see `call`)."""
        self.plan = plan
        self.contract = contract
        self.max_batch_size = contract.max_batch_size
        torch.set_num_threads(plan.num_threads)
        self.device = torch.device(plan.device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda:
            # This thread's current device, before anything touches CUDA: what names no device
            # (pinned memory, streams, events, the CUDA context) then follows the model's.
            torch.cuda.set_device(self.device)
        self.dtype = torch.float16 if plan.dtype == "fp16" else torch.float32
        module = torch.jit.load(str(artifact), map_location=self.device)
        self.module = prepare_module(module, self.dtype, methods)
        # On CUDA every pass runs at one of these sizes (padded); on the CPU at its own.
        self.batch_sizes = padded_sizes(self.max_batch_size) if self.on_cuda else []
        self._graphs: CudaGraphs | None = None
        self._staging: dict[str, torch.Tensor] = {}
        # Recorded after the copies out of the staging buffers: they are reused only once it
        # has completed.
        self._staged = torch.cuda.Event() if self.on_cuda else None

    @classmethod
    def warmed(
        cls, artifact: Path, plan: ExecutionPlan, contract: Contract, methods: Sequence[str] = ()
    ) -> TorchScriptEngine:
        """Load the artifact and run every code path once: the builder for a ForwardWorker."""
        engine = cls(artifact, plan, contract, methods)
        engine.warm_up()
        return engine

    @property
    def cuda_graphs(self) -> bool:
        """Whether batches replay captured CUDA graphs (set up by warm_up)."""
        return self._graphs is not None

    @property
    def warm_sizes(self) -> list[int]:
        """The batch sizes to run before ready (warm_passes times each): on CUDA every size a
        pass runs at, on the CPU 1 and the max batch size."""
        return self.batch_sizes if self.on_cuda else sorted({1, self.max_batch_size})

    @property
    def warm_passes(self) -> int:
        """How many times each of warm_sizes runs before ready."""
        return CUDA_WARM_PASSES if self.on_cuda else 1

    def warm_up(self) -> None:
        """Run every batch size a pass will see (and capture and check CUDA graphs) before the
        model reports ready; raises GraphMismatch when a graph disagrees with the eager pass,
        GraphCaptureError when a capture fails under --cuda_graphs on."""
        for size in self.warm_sizes:
            for _ in range(self.warm_passes):
                self.run(self.contract.zeros(size))
        if self.plan.cuda_graphs:
            self._capture_graphs()

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Every declared output for `inputs` (the declared inputs, batch first)."""
        with torch.inference_mode():
            names = self.contract.input_names
            if not self.on_cuda:
                outputs = self._forward([torch.from_numpy(inputs[name]) for name in names])
            else:
                staged = self._stage([inputs[name] for name in names])
                if self._graphs is not None:
                    outputs = self._graphs.replay(staged)
                else:
                    outputs = self._padded(self._forward, staged)
            return self._named(outputs)

    def call(self, method: str, *args: torch.Tensor) -> torch.Tensor:
        """Run one of the kept `methods` of the module (on the forward thread, as `run`); on
        CUDA at the padded batch sizes, as `run`."""
        function = getattr(self.module, method)
        if not self.on_cuda:
            return function(*args)
        (result,) = self._padded(lambda tensors: [function(*tensors)], list(args))
        return result

    def _forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        # On the FP16 plan the module was made half: FP32 inputs follow it. Every other input
        # goes in as declared (as Triton's libtorch backend passes them).
        half = self.dtype == torch.float16
        cast = [x.half() if half and x.dtype == torch.float32 else x for x in inputs]
        result = self.module(*cast)
        return list(result) if isinstance(result, tuple | list) else [result]

    def _padded(
        self,
        forward: Callable[[list[torch.Tensor]], list[torch.Tensor]],
        inputs: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """`forward` run at the smallest of batch_sizes that holds `inputs` (zero rows added),
        its outputs cut back to the rows given."""
        rows = inputs[0].shape[0]
        size = graph_size(self.batch_sizes, rows)
        if size > rows:
            inputs = [_pad_rows(x, size) for x in inputs]
        return [out[:rows] for out in forward(inputs)]

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

    def _stage(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """`arrays` on the device, copied through pinned staging buffers."""
        assert self._staged is not None
        # The previous batch's copies may still be reading the buffers: whatever happened to
        # that batch since (a forward pass that raised never reached the blocking .cpu()),
        # wait for them before writing.
        self._staged.synchronize()
        on_device = [
            self._to_device(name, torch.from_numpy(array))
            for name, array in zip(self.contract.input_names, arrays, strict=True)
        ]
        self._staged.record(torch.cuda.current_stream(self.device))
        return on_device

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

    def _on_device(self, arrays: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """The declared inputs of `arrays` as tensors of their own on the device."""
        return [
            torch.from_numpy(arrays[name]).to(self.device) for name in self.contract.input_names
        ]

    def _capture_graphs(self) -> None:
        """Capture a CUDA graph at each of batch_sizes and check each against the eager pass;
        a capture that fails leaves the engine eager (unless graphs are required)."""
        if any(-1 in spec.dims for spec in self.contract.inputs):
            logger.info("no CUDA graphs: an input has a variable dimension")
            return
        graphs = CudaGraphs(self._forward, self.device)
        with torch.inference_mode():
            try:
                graphs.capture(
                    self.batch_sizes, lambda size: self._on_device(self.contract.zeros(size))
                )
            except GraphCaptureError as exc:
                if self.plan.graphs_required:
                    raise
                logger.warning("no CUDA graphs (%s); running eagerly", exc)
                return
            graphs.verify(
                lambda size: self._on_device(self.contract.sample(size, seed=size)),
                GRAPH_RTOL[self.dtype],
            )
        self._graphs = graphs
        logger.info(
            "captured CUDA graphs on %s for batch sizes %s, each checked against the eager pass",
            self.device,
            graphs.sizes,
        )
