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

from common.cpus import available_cpus
from common.modelrepo import CONFIG_FILE, ONNX_PLATFORM, OPENVINO, PLATFORM_FILES, resolve
from runtime.onnx_engine import OnnxEngine
from runtime.openvino_engine import QUANTIZE_OPS, OpenVinoEngine, cpu_capabilities
from runtime.tensors import Contract, run_one

from . import fidelity, imagesets, quantize
from .export import PREPROCESSING

IR_FILE = PLATFORM_FILES[OPENVINO]
CONVERSION_TOLERANCE = {"fp32": 1e-3, "int8": 0.5}  # largest logit difference allowed
CHECK_IMAGES = 4
# The gates, as the issue sets them: INT8 as the ONNX INT8 export's (quantize.DEFAULT_GATE);
# BF16 only rounds activations, so it must agree on nearly every confident image.
GATES = {"int8": quantize.DEFAULT_GATE, "bf16": 0.99}
EVALUATION_BATCH = quantize.EVALUATION_BATCH


class ConversionError(RuntimeError):
    """The converted model does not answer as the ONNX file does."""


class BelowGate(ConversionError):
    """The converted model, in the precision it would be served in, is below its fidelity gate."""


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


def served_logits(
    ir_file: Path, contract: Contract, pixels: np.ndarray, precision: str
) -> tuple[np.ndarray, str]:
    """The logits OpenVINO gives `pixels` as it would serve `ir_file` in `precision` ("fp32" or
    "bf16"; an INT8 file runs in INT8 either way), and the precision it ran in."""
    small = replace(contract, max_batch_size=EVALUATION_BATCH)
    engine = OpenVinoEngine(ir_file, small, available_cpus(), precision)
    parts = [
        run_one(engine, pixels[i : i + EVALUATION_BATCH])
        for i in range(0, len(pixels), EVALUATION_BATCH)
    ]
    return np.concatenate(parts), engine.precision


def gate_fidelity(
    ir_file: Path, reference: Path, contract: Contract, holdout: np.ndarray, precision: str
) -> tuple[str, fidelity.Fidelity | None]:
    """Measure `ir_file` as it would be served in `precision` against the FP32 ONNX model
    `reference` on the held-out pixels; returns the precision it ran in and the measure (None
    for FP32: nothing to gate). Raises BelowGate, carrying the report, below the gate."""
    got, ran_in = served_logits(ir_file, contract, holdout, precision)
    if ran_in == "fp32":
        return ran_in, None
    expected = quantize.logits(reference, holdout)
    measured = fidelity.compare(expected, got)
    gate = GATES[ran_in]
    report = "\n".join(measured.lines(f"OpenVINO {ran_in.upper()} vs FP32"))
    if measured.gated_agreement() < gate:
        raise BelowGate(
            f"{report}\n{ran_in.upper()} agreement {measured.gated_agreement():.1%} is below the "
            f"gate {gate:.1%}: not written"
        )
    print(report)
    return ran_in, measured


def convert(
    source: Path,
    repository: Path,
    name: str,
    version: str | None = None,
    precision: str = "fp32",
    reference: Path | None = None,
) -> Path:
    """Write `<repository>/<name>` from the ONNX model `<source>/<name>`, to be served in
    `precision` ("fp32" or "bf16"); returns the model directory. Below FP32 (an INT8 file, or
    bf16) it must pass the fidelity gate against the FP32 ONNX repository `reference`.

    Raises ValueError for a source that is not ONNX, a missing reference, or bf16 on a CPU
    without it; ConversionError on a mismatch, BelowGate below the gate.
    """
    found = resolve(source, name, version)
    if found.config.platform != ONNX_PLATFORM:
        raise ValueError(
            f"{found.model_dir}: platform {found.config.platform!r}, expected {ONNX_PLATFORM!r}"
        )
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        raise ValueError(
            f"--precision bf16: this CPU has no native BF16 (OpenVINO reports "
            f"{list(cpu_capabilities())}), so BF16 cannot be measured against its gate here; "
            "build it on the kind of CPU that will serve it"
        )
    model_dir = repository / name
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / IR_FILE
        ov.save_model(ov.convert_model(str(found.artifact)), str(staged), compress_to_fp16=False)
        contract = Contract.of(found.config)
        check_conversion(found.artifact, staged, contract)
        if precision == "bf16" or _quantized(staged):
            if reference is None:
                raise ValueError(
                    "a model served below FP32 is gated against the FP32 model: give the FP32 "
                    "ONNX repository (--reference)"
                )
            holdout = imagesets.default_sets(PREPROCESSING)[1].pixels
            reference_file = resolve(reference, name).artifact
            gate_fidelity(staged, reference_file, contract, holdout, precision)
        target = model_dir / found.version
        target.mkdir(parents=True, exist_ok=True)
        for part in (staged, staged.with_suffix(".bin")):
            shutil.copyfile(part, target / part.name)
    for side in found.model_dir.iterdir():
        if side.is_file() and side.name != CONFIG_FILE:
            shutil.copyfile(side, model_dir / side.name)
    parameters = dict(found.config.parameters)
    if precision == "bf16":
        parameters["HINT_BF16"] = "YES"  # Triton's OpenVINO backend parameter for BF16
    config = replace(
        found.config,
        platform=OPENVINO,
        backend=OPENVINO,
        default_model_filename="",
        parameters=parameters,
    )
    (model_dir / CONFIG_FILE).write_text(config.to_pbtxt(), encoding="utf-8")
    return model_dir


def _quantized(ir_file: Path) -> bool:
    """Whether the IR holds quantisation (an INT8 file's FakeQuantize nodes)."""
    model = ov.Core().read_model(str(ir_file))
    return any(op.get_type_name() in QUANTIZE_OPS for op in model.get_ops())
