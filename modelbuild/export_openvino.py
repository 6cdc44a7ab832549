"""Convert an ONNX model repository into an OpenVINO one (Triton's `backend: "openvino"`).

    python -m modelbuild openvino --source model_repository-onnx \
        --repository model_repository-openvino
    python -m modelbuild openvino --source model_repository-int8 \
        --repository model_repository-openvino-int8

The ONNX file (FP32, or the gated QDQ INT8 one) becomes OpenVINO IR (`1/model.xml` and
`model.bin`, the layout Triton's OpenVINO backend loads by default), with the same tensor
contract, labels and preprocessing; config.pbtxt names the backend instead of a platform. The
converted model is checked against onnxruntime on the same file before it is written: the same
top-1 on random pixels and logits within CONVERSION_TOLERANCE (an INT8 file may differ a little
more, as two runtimes round its integer kernels differently).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import openvino as ov

from common.modelrepo import CONFIG_FILE, ONNX_PLATFORM, OPENVINO, PLATFORM_FILES, resolve
from runtime.onnx_engine import OnnxEngine
from runtime.openvino_engine import OpenVinoEngine
from runtime.tensors import Contract, run_one

IR_FILE = PLATFORM_FILES[OPENVINO]
CONVERSION_TOLERANCE = {"fp32": 1e-3, "int8": 0.5}  # largest logit difference allowed
CHECK_IMAGES = 4


class ConversionError(RuntimeError):
    """The converted model does not answer as the ONNX file does."""


def check_conversion(onnx_file: Path, ir_file: Path, contract: Contract) -> float:
    """Largest logit difference between the two runtimes on random pixels; raises
    ConversionError when the top-1 classes differ or it is above the tolerance."""
    pixels = np.random.default_rng(0).integers(
        0, 256, (CHECK_IMAGES, *contract.inputs[0].dims), dtype=np.uint8
    )
    small = replace(contract, max_batch_size=CHECK_IMAGES)
    expected = run_one(OnnxEngine(onnx_file, small, 1), pixels)
    converted = OpenVinoEngine(ir_file, small, 1)
    got = run_one(converted, pixels)
    difference = float(np.abs(got - expected).max())
    tolerance = CONVERSION_TOLERANCE["int8" if converted.precision == "int8" else "fp32"]
    if difference > tolerance or (got.argmax(1) != expected.argmax(1)).any():
        raise ConversionError(
            f"{ir_file}: logits differ from onnxruntime's by {difference:.3g} (allowed "
            f"{tolerance}) or the top-1 classes differ: {got.argmax(1)} vs {expected.argmax(1)}"
        )
    return difference


def convert(source: Path, repository: Path, name: str, version: str | None = None) -> Path:
    """Write `<repository>/<name>` from the ONNX model `<source>/<name>`; returns the model
    directory. Raises ValueError for a source that is not ONNX, ConversionError on a mismatch."""
    found = resolve(source, name, version)
    if found.config.platform != ONNX_PLATFORM:
        raise ValueError(
            f"{found.model_dir}: platform {found.config.platform!r}, expected {ONNX_PLATFORM!r}"
        )
    model_dir = repository / name
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / IR_FILE
        ov.save_model(ov.convert_model(str(found.artifact)), str(staged), compress_to_fp16=False)
        check_conversion(found.artifact, staged, Contract.of(found.config))
        target = model_dir / found.version
        target.mkdir(parents=True, exist_ok=True)
        for part in (staged, staged.with_suffix(".bin")):
            shutil.copyfile(part, target / part.name)
    for side in found.model_dir.iterdir():
        if side.is_file() and side.name != CONFIG_FILE:
            shutil.copyfile(side, model_dir / side.name)
    config = replace(found.config, platform=OPENVINO, backend=OPENVINO, default_model_filename="")
    (model_dir / CONFIG_FILE).write_text(config.to_pbtxt(), encoding="utf-8")
    return model_dir
