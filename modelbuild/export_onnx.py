"""Export the default model as ONNX into a Triton-layout repository (platform onnxruntime_onnx).

    python -m modelbuild onnx --repository model_repository-onnx        # FP32
    python -m modelbuild onnx --repository model_repository-int8 --int8 # INT8, gated

The same tensor contract as the TorchScript model (`export.py`): UINT8 NHWC pixels `pixels__0`
in, normalisation inside the graph, FP32 logits `logits__0` out, a dynamic batch dimension,
the same labels, preprocessing and config apart from `platform` and the file, `1/model.onnx`.
So Triton's onnxruntime backend, our predictor and the edge classifier all serve it, and clients
never see which engine answers.

The backbone goes through torch's dynamo exporter with FP32 NCHW input; the pixel prefix
(Transpose, Cast, Sub, Div, as `PixelClassifier.forward` does it) is then written in ONNX in
front of it, so the normalised tensor has a known name the runner can start from for clients
that send normalised FP32. Every export is checked against the eager model before it is
written. `--int8` quantises the FP32 graph (see `quantize.py`) and writes it only when it
passes the fidelity gate, unless `--force_int8`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from common.cli import DEFAULT_MODEL_NAME
from common.modelrepo import ONNX_PLATFORM, PLATFORM_FILES
from runtime.normalized import NORMALIZED_TENSOR
from runtime.onnx_engine import OnnxEngine
from runtime.tensors import Contract, run_one
from vision.preprocessing import Preprocessing

from .export import INPUT, OUTPUT, PREPROCESSING, PixelClassifier, build_backbone, write_model_files

ONNX_FILE = PLATFORM_FILES[ONNX_PLATFORM]
# The exporter's opset (ReduceMean with axes as an input needs 18+).
OPSET = 20
# Largest logit difference between the eager model and the ONNX file accepted at export
# (measured: 2e-5 on the test photos).
MAX_LOGIT_DIFFERENCE = 1e-3


def export_backbone(backbone: torch.nn.Module, path: Path, crop: int) -> None:
    """Write the backbone as ONNX: FP32 NCHW `NORMALIZED_TENSOR` in, logits out, any batch."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        backbone,
        (torch.zeros(2, 3, crop, crop),),
        dynamo=True,
        input_names=[NORMALIZED_TENSOR],
        output_names=[OUTPUT.name],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        external_data=False,
    )
    if program is None:  # only None when dynamo=False
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


def add_pixel_input(model: onnx.ModelProto, preprocessing: Preprocessing) -> onnx.ModelProto:
    """Put UINT8 NHWC pixel input and the normalisation in front of a backbone graph.

    The backbone's input (`NORMALIZED_TENSOR`) becomes an inner tensor; raises ValueError when
    the graph has another input.
    """
    graph = model.graph
    if [i.name for i in graph.input] != [NORMALIZED_TENSOR]:
        raise ValueError(f"expected one graph input {NORMALIZED_TENSOR!r}, got {graph.input}")
    del graph.input[:]
    height, width, channels = INPUT.dims
    graph.input.append(
        helper.make_tensor_value_info(
            INPUT.name, TensorProto.UINT8, ["batch", height, width, channels]
        )
    )
    shape = (1, channels, 1, 1)
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(shape)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(shape)
    graph.initializer.extend(
        [numpy_helper.from_array(mean, "pixel_mean"), numpy_helper.from_array(std, "pixel_std")]
    )
    # Transpose before Cast: the transpose moves bytes, not floats.
    prefix = [
        helper.make_node("Transpose", [INPUT.name], ["pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["pixels_nchw"], ["pixels_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["pixels_float", "pixel_mean"], ["pixels_centred"]),
        helper.make_node("Div", ["pixels_centred", "pixel_std"], [NORMALIZED_TENSOR]),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(prefix + nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_fp32(path: Path, backbone: torch.nn.Module | None = None) -> None:
    """Export the pixel classifier to `path` and check it against the eager model.

    Raises RuntimeError when onnxruntime's logits differ from torch's by more than
    MAX_LOGIT_DIFFERENCE.
    """
    backbone = backbone if backbone is not None else build_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "backbone.onnx"
        export_backbone(backbone, raw, PREPROCESSING.crop)
        model = add_pixel_input(onnx.load(str(raw)), PREPROCESSING)
    onnx.save(model, str(path))
    check_against_eager(path, PixelClassifier(backbone, PREPROCESSING).eval())


def check_against_eager(path: Path, eager: torch.nn.Module) -> float:
    """Largest logit difference between `path` and the eager model on random pixels.

    Raises RuntimeError above MAX_LOGIT_DIFFERENCE.
    """
    pixels = np.random.default_rng(0).integers(0, 256, (3, *INPUT.dims), dtype=np.uint8)
    runner = OnnxEngine(path, Contract((INPUT,), (OUTPUT,), 3), 1)
    with torch.inference_mode():
        expected = eager(torch.from_numpy(pixels)).numpy()
    difference = float(np.abs(run_one(runner, pixels) - expected).max())
    if difference > MAX_LOGIT_DIFFERENCE:
        raise RuntimeError(
            f"{path}: logits differ from the eager model by {difference:.2g}, "
            f"more than {MAX_LOGIT_DIFFERENCE}"
        )
    return difference


def write_onnx_model(repository: Path, name: str, version: str, source: Path) -> Path:
    """Install an ONNX file as `<repository>/<name>/<version>/model.onnx` with its side files."""
    model_dir = repository / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    target = model_dir / version / ONNX_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(source.read_bytes())
    tmp.replace(target)
    write_model_files(model_dir, name, ONNX_PLATFORM)
    return model_dir


def export(repository: Path, name: str = DEFAULT_MODEL_NAME, version: str = "1") -> Path:
    """Write the FP32 ONNX model directory; returns it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILE
        export_fp32(path)
        return write_onnx_model(repository, name, version, path)
