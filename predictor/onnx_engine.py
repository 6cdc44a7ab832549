"""Runs model.onnx (FP32 or INT8) with onnxruntime on the CPU: the engine for CPU nodes and edge.

One `InferenceSession` per process, its options set once: intra-op threads from the CPU quota
(the caller passes `available_cpus()`), sequential execution (one forward pass at a time, the
batcher sees to that), every graph optimisation, and a bounded spin of the intra-op workers
(the reason is the same as for OpenMP in `tuning.py`: an unbounded spin steals the CPU the event
loop and the transformer need; no spin makes every barrier a futex sleep and wake).

The graph takes UINT8 NHWC pixels and normalises them itself (see `export_onnx.py`). Clients
that send normalised FP32 NCHW are served by a second, smaller session cut from the same file
at the normalised tensor (`NORMALIZED_TENSOR`), built only when asked for (the predictor does;
the edge classifier does not). Nothing here imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

logger = logging.getLogger(__name__)

# The backbone's input inside the exported graph: FP32 NCHW, already normalised.
NORMALIZED_TENSOR = "normalized"
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


class OnnxEngineError(RuntimeError):
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


class OnnxEngine:
    """Runs batches of UINT8 NHWC pixels (or normalised FP32 NCHW, when built for it)."""

    def __init__(
        self,
        artifact: Path,
        num_threads: int,
        max_batch_size: int,
        input_name: str,
        output_name: str,
        normalized_input: bool = True,
    ) -> None:
        """Load `artifact`; raises OnnxEngineError when its tensors are not the declared ones."""
        self.max_batch_size = max_batch_size
        self.num_threads = num_threads
        self.input_name, self.output_name = input_name, output_name
        options = session_options(num_threads)
        try:
            self.session = ort.InferenceSession(
                str(artifact), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except _LOAD_ERRORS as exc:
            raise OnnxEngineError(f"onnxruntime cannot load {artifact}: {exc}") from exc
        inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [(input_name, "tensor(uint8)")] or output_name not in outputs:
            raise OnnxEngineError(
                f"{artifact}: inputs {inputs} and outputs {outputs}, expected one input "
                f"{input_name!r} tensor(uint8) and an output {output_name!r} (config.pbtxt)"
            )
        self.precision = "unknown"
        self.normalized_session = (
            self._normalized_session(artifact, options) if normalized_input else None
        )

    @classmethod
    def warmed(
        cls,
        artifact: Path,
        num_threads: int,
        max_batch_size: int,
        input_name: str,
        output_name: str,
        pixel_shape: tuple[int, ...],
    ) -> OnnxEngine:
        """Load the model and run every code path once: the builder for a ForwardWorker."""
        engine = cls(artifact, num_threads, max_batch_size, input_name, output_name)
        engine.warm_up(pixel_shape)
        return engine

    def _normalized_session(
        self, artifact: Path, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        """A session for the part of the graph after the normalisation (FP32 NCHW in)."""
        import onnx  # the predictor extra has it; the edge classifier never gets here
        from onnx.utils import Extractor

        model = onnx.load(str(artifact))
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        self.precision = "int8" if quantized else "fp32"
        if NORMALIZED_TENSOR not in {out for node in model.graph.node for out in node.output}:
            raise OnnxEngineError(
                f"{artifact}: no tensor {NORMALIZED_TENSOR!r} to take normalised FP32 input at "
                "(export with python -m predictor.export_onnx)"
            )
        model = onnx.shape_inference.infer_shapes(model)  # the extractor needs the shapes
        cut = Extractor(model).extract_model([NORMALIZED_TENSOR], [self.output_name])
        return ort.InferenceSession(
            cut.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def warm_up(self, pixel_shape: tuple[int, ...]) -> None:
        """Run every code path once (the largest batch sizes the arena) before ready."""
        for size in sorted({1, self.max_batch_size}):
            self.run(np.zeros((size, *pixel_shape), dtype=np.uint8))
        if self.normalized_session is not None:
            height, width, channels = pixel_shape
            self.run(np.zeros((1, channels, height, width), dtype=np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits as FP32 [N, classes] for UINT8 pixels or normalised FP32 input."""
        if batch.dtype == np.uint8:
            session = self.session
            feed = {self.input_name: batch}
        elif self.normalized_session is not None:
            session = self.normalized_session
            feed = {NORMALIZED_TENSOR: np.ascontiguousarray(batch, dtype=np.float32)}
        else:
            raise ValueError(f"this runner takes UINT8 pixels, got {batch.dtype}")
        (logits,) = session.run([self.output_name], feed)
        return np.asarray(logits, dtype=np.float32)
