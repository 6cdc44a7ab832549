"""The image classifier's second entrance: normalised FP32 NCHW instead of UINT8 NHWC pixels.

The exported image models (modelbuild/export.py, export_onnx.py) take UINT8 [H, W, C] pixels
and normalise them inside. Clients that normalise themselves (torchvision-style pipelines) may
send FP32 [C, H, W] instead: TorchScript models offer that entrance as the method
`forward_normalized`, ONNX models as the tensor `normalized` inside the graph (a second session
is cut from there). `with_entrance` wraps the engine of a model that offers it so
FP32 requests take it. The serving core only sees one more accepted form of that input
(`Contract.alternates`, never advertised in metadata); other models are served unwrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from common.modelrepo import TensorSpec

from .tensors import Contract, Engine, Tensors

NORMALIZED_TENSOR = "normalized"  # the backbone's input inside an exported ONNX graph
NORMALIZED_METHOD = "forward_normalized"  # the same entrance of an exported TorchScript module


def pixel_input(contract: Contract) -> TensorSpec | None:
    """The UINT8 [H, W, C] input of a one-input, one-output model, else None."""
    if len(contract.inputs) != 1 or len(contract.outputs) != 1:
        return None
    (spec,) = contract.inputs
    if spec.datatype != "UINT8" or len(spec.dims) != 3 or -1 in spec.dims:
        return None
    return spec


def normalized_form(pixels: TensorSpec) -> TensorSpec:
    """The FP32 [C, H, W] form of a UINT8 [H, W, C] pixel input."""
    height, width, channels = pixels.dims
    return TensorSpec(pixels.name, "FP32", (channels, height, width))


class NormalizedEntrance:
    """An engine whose pixel input also takes normalised FP32 [N, C, H, W] (see module)."""

    def __init__(self, engine: Engine, entrance: Callable[[np.ndarray], np.ndarray]) -> None:
        pixels = pixel_input(engine.contract)
        if pixels is None:
            raise ValueError("a normalised entrance needs one UINT8 [H, W, C] input")
        self.engine = engine
        self.contract = replace(engine.contract, alternates={pixels.name: normalized_form(pixels)})
        self._entrance = entrance
        self._pixels, self._form = pixels.name, normalized_form(pixels)
        self._output = engine.contract.outputs[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)  # precision, plan, ...: what the engine says

    def warm_up(self) -> None:
        """Run the entrance as the engine warmed its own path: at its `warm_sizes` (else 1),
        its `warm_passes` times each (else once)."""
        for size in getattr(self.engine, "warm_sizes", (1,)):
            for _ in range(getattr(self.engine, "warm_passes", 1)):
                self.run({self._pixels: np.zeros((size, *self._form.dims), np.float32)})

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """The engine's outputs, through the entrance for FP32 input."""
        array = inputs[self._pixels]
        if array.dtype != np.float32:
            return self.engine.run(inputs)
        result = self._entrance(np.ascontiguousarray(array))
        return {self._output.name: result.astype(self._output.dtype, copy=False)}


def with_entrance(
    engine: Engine, entrance: Callable[[Any], Callable[[np.ndarray], np.ndarray] | None]
) -> Engine:
    """`engine`, wrapped (and warmed) with the normalised entrance `entrance(engine)` finds in
    its model (`onnx_entrance` or `torchscript_entrance`, by engine); unwrapped when the model
    has no pixel input or offers no entrance."""
    if pixel_input(engine.contract) is None:
        return engine
    found = entrance(engine)
    if found is None:
        return engine
    wrapped = NormalizedEntrance(engine, found)
    wrapped.warm_up()
    return wrapped


def onnx_entrance(engine: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A session cut from the graph at NORMALIZED_TENSOR, or None when the graph has none."""
    import onnx  # the predictor extra has it
    from onnx.utils import Extractor

    from .onnx_engine import load_session

    model = onnx.load(str(engine.artifact))
    if NORMALIZED_TENSOR not in {out for node in model.graph.node for out in node.output}:
        return None
    output = engine.contract.outputs[0].name
    model = onnx.shape_inference.infer_shapes(model)  # the extractor needs the shapes
    cut = Extractor(model).extract_model([NORMALIZED_TENSOR], [output])
    session = load_session(cut.SerializeToString(), engine.options)

    def run(array: np.ndarray) -> np.ndarray:
        (result,) = session.run([output], {NORMALIZED_TENSOR: array})
        return np.asarray(result)

    return run


def torchscript_entrance(engine: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The module's NORMALIZED_METHOD, or None when it has none."""
    import torch

    if not hasattr(engine.module, NORMALIZED_METHOD):
        return None

    def run(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            # The convolutions run fastest in channels_last, which NHWC pixels give for free.
            x = torch.from_numpy(array).to(engine.device).to(engine.dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            return engine.call(NORMALIZED_METHOD, x).float().cpu().numpy()

    return run
