"""Runs a model with OpenVINO on the CPU: OpenVINO IR (`model.xml`) or an ONNX file, as Triton's
OpenVINO backend serves them (`backend: "openvino"` in config.pbtxt).

One compiled model and one infer request per process, its options set once: one stream with
the latency hint (the batcher makes the batches and runs one pass at a time, as for
onnxruntime), `INFERENCE_NUM_THREADS` from the CPU quota, and the precision of the plan: FP32,
or BF16 where the CPU computes it natively (OpenVINO's `OPTIMIZATION_CAPABILITIES` lists BF16 on
CPUs with AVX-512 BF16 or AMX). A quantised (QDQ INT8) file runs in INT8. Triton's parameters
`INFERENCE_NUM_THREADS`, `NUM_STREAMS`, `PERFORMANCE_HINT` and `HINT_BF16` in config.pbtxt are
honoured as Triton's backend honours them. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from .tensors import Contract, EngineLoadError, Tensors

# Triton's OpenVINO backend parameters that map onto OpenVINO's CPU properties one to one.
PASSED_THROUGH = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "ENABLE_CPU_PINNING")
QUANTIZE_OPS = ("FakeQuantize", "FakeConvert")


class OpenVinoEngineError(EngineLoadError):
    """The model file cannot be served as the model repository declares it."""


def cpu_capabilities() -> tuple[str, ...]:
    """What OpenVINO's CPU plugin computes natively here: FP32, INT8, and BF16 where present."""
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_options(
    num_threads: int, precision: str, parameters: Mapping[str, str]
) -> dict[str, Any]:
    """The CPU plugin's properties for a plan (`precision` "fp32" or "bf16") and config.pbtxt's
    parameters (which win, as in Triton)."""
    options: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(num_threads),
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        # OpenVINO pins its threads to cores by default. Two single-thread instances in one
        # process (python -m batch --instances 2) were then pinned to the same core: 110
        # images/s at batch 8 against 180 for one two-thread instance; unpinned, 200 (AMD
        # EPYC, AVX2, 2 CPUs, INT8). The event loop shares these cores too.
        "ENABLE_CPU_PINNING": "NO",
    }
    options.update({key: parameters[key] for key in PASSED_THROUGH if key in parameters})
    if parameters.get("HINT_BF16", "").upper() == "YES":
        options["INFERENCE_PRECISION_HINT"] = "bf16"
    return options


class OpenVinoEngine:
    """Runs batches of the declared named inputs through one compiled OpenVINO model."""

    def __init__(
        self,
        artifact: Path,
        contract: Contract,
        num_threads: int,
        precision: str = "fp32",
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        """Read and compile `artifact`; raises OpenVinoEngineError when its tensors are not the
        declared ones or OpenVINO cannot read it."""
        self.contract = contract
        self.max_batch_size = contract.max_batch_size
        self.num_threads = num_threads
        core = ov.Core()
        try:
            model = core.read_model(str(artifact))
        except RuntimeError as exc:
            raise OpenVinoEngineError(f"OpenVINO cannot read {artifact}: {exc}") from exc
        found = {port.get_any_name(): port.get_element_type().to_dtype() for port in model.inputs}
        declared = {spec.name: spec.dtype for spec in contract.inputs}
        outputs = {port.get_any_name() for port in model.outputs}
        if found != declared or not set(contract.output_names) <= outputs:
            raise OpenVinoEngineError(
                f"{artifact}: inputs {found} and outputs {sorted(outputs)}; config.pbtxt "
                f"declares inputs {declared} and outputs {contract.output_names}"
            )
        quantized = any(op.get_type_name() in QUANTIZE_OPS for op in model.get_ops())
        options = compile_options(num_threads, precision, parameters or {})
        self.compiled = core.compile_model(model, "CPU", options)
        self.request = self.compiled.create_infer_request()
        # What the plugin compiled to (a Type: its str is "bfloat16", not "bf16").
        bf16 = self.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        self.precision = "int8" if quantized else ("bf16" if bf16 else "fp32")

    @classmethod
    def warmed(
        cls,
        artifact: Path,
        contract: Contract,
        num_threads: int,
        precision: str = "fp32",
        parameters: Mapping[str, str] | None = None,
    ) -> OpenVinoEngine:
        """Compile the model and run it once at batch 1 and at the largest batch (OpenVINO
        sizes its buffers for the shapes it has seen): the builder for a ForwardWorker."""
        engine = cls(artifact, contract, num_threads, precision, parameters)
        for size in sorted({1, engine.max_batch_size}):
            engine.run(contract.zeros(size))
        return engine

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Every declared output for `inputs` (the declared inputs, batch first)."""
        feed = {name: inputs[name] for name in self.contract.input_names}
        results = self.request.infer(feed)
        # Copies: the request's output buffers are reused by the next pass.
        return {
            spec.name: np.array(results[self.compiled.output(spec.name)], dtype=spec.dtype)
            for spec in self.contract.outputs
        }
