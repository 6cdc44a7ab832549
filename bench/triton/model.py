"""Triton's python backend running our ONNX file: the model.py of the generated repository.

It runs inside Triton's python-backend stub (`.venv-triton`'s interpreter, not this project's
venv), so it imports only numpy, onnxruntime and Triton's `triton_python_backend_utils`. What
it runs is all in its config.pbtxt (written by `bench/triton/repository.py`): the tensor
names come from `input` and `output`, and the ONNX file, the intra-op thread count and the
spin duration from `parameters`, the same session options as our predictor's engine
(`runtime/onnx_engine.py`: sequential, every graph optimisation, bounded spin).

Outside Triton (the repository writer reads the parameter names here, the tests the pure
`concatenate` and `split`) `triton_python_backend_utils` is absent and only the model class
cannot run.

`execute` gets every request the dynamic batcher gathered and runs them as one batch: one
`InferenceSession.run` on the rows of all requests concatenated, then each request gets its
own rows back, as our predictor's batcher does.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by the repository writer and the tests, outside Triton's stub
    pb_utils = None

# The config.pbtxt parameters this model reads (written by bench/triton/repository.py).
ONNX_FILE = "onnx_file"
INTRA_OP_THREADS = "intra_op_threads"
SPIN_DURATION_US = "spin_duration_us"

# What InferenceSession.run raises for a batch it cannot run (pybind exceptions).
_RUN_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException)


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """config.pbtxt's string parameters; raises KeyError naming a missing one."""
    found = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    missing = [k for k in (ONNX_FILE, INTRA_OP_THREADS, SPIN_DURATION_US) if k not in found]
    if missing:
        raise KeyError(f"config.pbtxt parameters {sorted(found)} lack {missing}")
    return found


def session_options(threads: int, spin_duration_us: str) -> ort.SessionOptions:
    """Our predictor's onnxruntime options (runtime/onnx_engine.py's session_options)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.spin_duration_us", spin_duration_us)
    options.log_severity_level = 3
    return options


def concatenate(parts: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Each request's named inputs stacked along the batch dimension, and each one's rows."""
    rows = [len(next(iter(part.values()))) for part in parts]
    names = parts[0].keys()
    return {name: np.concatenate([part[name] for part in parts]) for name in names}, rows


def split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """The batch's outputs cut back into each request's rows, in request order."""
    edges = np.cumsum([0, *rows]).tolist()
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in itertools.pairwise(edges)
    ]


class TritonPythonModel:
    """One onnxruntime session per model instance, warmed up before Triton marks it ready."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the ONNX file named in config.pbtxt and run it at batch 1 and max_batch_size."""
        config = json.loads(args["model_config"])
        found = parameters(config)
        self.inputs = {
            spec["name"]: pb_utils.triton_string_to_numpy(spec["data_type"])
            for spec in config["input"]
        }
        self.dims = {spec["name"]: [int(d) for d in spec["dims"]] for spec in config["input"]}
        self.outputs = [spec["name"] for spec in config["output"]]
        options = session_options(int(found[INTRA_OP_THREADS]), found[SPIN_DURATION_US])
        self.session = ort.InferenceSession(
            found[ONNX_FILE], sess_options=options, providers=["CPUExecutionProvider"]
        )
        for rows in sorted({1, int(config["max_batch_size"])}):
            self.session.run(
                self.outputs,
                {
                    name: np.zeros([rows, *self.dims[name]], dtype=dtype)
                    for name, dtype in self.inputs.items()
                },
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        """One forward pass for all `requests`; each gets its rows, or the error, back."""
        parts = [
            {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }
            for request in requests
        ]
        batch, rows = concatenate(parts)
        try:
            results = self.session.run(self.outputs, batch)
        except _RUN_ERRORS as exc:
            error = pb_utils.TritonError(
                f"onnxruntime could not run a batch of {sum(rows)} rows "
                f"({ {k: list(v.shape) for k, v in batch.items()} }): {exc}"
            )
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        outputs = dict(zip(self.outputs, results, strict=True))
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in part.items()]
            )
            for part in split(outputs, rows)
        ]
