"""Runs model.onnx (FP32 or INT8) with onnxruntime on the CPU: the engine for CPU nodes and edge.

One `InferenceSession` per process, its options set once: intra-op threads from the CPU quota
(the caller passes `available_cpus()`), sequential execution (one forward pass at a time, the
batcher sees to that), every graph optimisation, and a bounded spin of the intra-op workers
(the reason is the same as for OpenMP in `tuning.py`: an unbounded spin steals the CPU the event
loop and the transformer need; no spin makes every barrier a futex sleep and wake).

The session's inputs and outputs must be the ones config.pbtxt declares (names and element
types); `run` feeds the named inputs and returns every declared output. What the tensors mean
is not this module's business (the image classifier's second entrance for normalised FP32 is
in `normalized.py`). Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from .tensors import Contract, EngineLoadError, Tensors

logger = logging.getLogger(__name__)

# How long an idle intra-op worker spins before it sleeps. 0 would sleep at every barrier
# inside a forward pass; onnxruntime's default spins for far longer than a forward pass here.
SPIN_DURATION_US = "200"


# What InferenceSession raises for a file it cannot load (pybind exceptions, not RuntimeError).
_LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.InvalidGraph,
    ort_state.InvalidArgument,
)


class OnnxEngineError(EngineLoadError):
    """The ONNX file cannot be served as the model repository declares it."""


def session_options(num_threads: int) -> ort.SessionOptions:
    """The one set of session options this project runs ONNX models with."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.spin_duration_us", SPIN_DURATION_US)
    options.log_severity_level = 3  # errors only: shape-inference notes are not news
    return options


# onnxruntime's element type names for the V2 datatypes.
ONNX_TYPES = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}


def load_session(artifact: Path | bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """An InferenceSession on the CPU for a file (or serialised model); raises OnnxEngineError."""
    try:
        return ort.InferenceSession(
            artifact if isinstance(artifact, bytes) else str(artifact),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
    except _LOAD_ERRORS as exc:
        raise OnnxEngineError(f"onnxruntime cannot load {artifact!s:.200}: {exc}") from exc


class OnnxEngine:
    """Runs batches of the declared named inputs through one InferenceSession."""

    def __init__(self, artifact: Path, contract: Contract, num_threads: int) -> None:
        """Load `artifact`; raises OnnxEngineError when its tensors are not the declared ones."""
        self.artifact = artifact
        self.contract = contract
        self.max_batch_size = contract.max_batch_size
        self.num_threads = num_threads
        self.options = session_options(num_threads)
        self.session = load_session(artifact, self.options)
        found = {i.name: i.type for i in self.session.get_inputs()}
        declared = {spec.name: ONNX_TYPES[spec.datatype] for spec in contract.inputs}
        outputs = {o.name: o.type for o in self.session.get_outputs()}
        missing = [
            f"{spec.name!r} {ONNX_TYPES[spec.datatype]}"
            for spec in contract.outputs
            if outputs.get(spec.name) != ONNX_TYPES[spec.datatype]
        ]
        if found != declared or missing:
            raise OnnxEngineError(
                f"{artifact}: inputs {found} and outputs {outputs}; config.pbtxt declares "
                f"inputs {declared} and outputs "
                + ", ".join(f"{s.name!r} {ONNX_TYPES[s.datatype]}" for s in contract.outputs)
            )
        self.precision = self._precision()

    def _precision(self) -> str:
        """ "int8" for a graph with QuantizeLinear nodes, else "fp32"; "unknown" without onnx
        (the edge classifier's install need not have it)."""
        try:
            import onnx
        except ImportError:
            return "unknown"
        model = onnx.load(str(self.artifact), load_external_data=False)
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        return "int8" if quantized else "fp32"

    @classmethod
    def warmed(cls, artifact: Path, contract: Contract, num_threads: int) -> OnnxEngine:
        """Load the model and run it once at batch 1 and at the largest batch (which sizes
        onnxruntime's arena): the builder for a ForwardWorker."""
        engine = cls(artifact, contract, num_threads)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """Run once at batch 1 and at max_batch_size before the model reports ready."""
        for size in sorted({1, self.max_batch_size}):
            self.run(self.contract.zeros(size))

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Every declared output for `inputs` (the declared inputs, batch first)."""
        names = self.contract.output_names
        results = self.session.run(
            names, {name: inputs[name] for name in self.contract.input_names}
        )
        return dict(zip(names, results, strict=True))
