"""The OpenVINO engine (Triton's `backend: "openvino"`): plan, conversion, answers, refusals.

Serving it over V1, V2 REST and V2 gRPC is tests/test_serving.py's, which runs every engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import reference
from conftest import DATA, MODEL_NAME

from common.modelrepo import OPENVINO, ModelConfig, TensorSpec, resolve
from harness.repositories import engine_repository
from modelbuild import export_openvino
from runtime.engines import plan_engine
from runtime.onnx_engine import OnnxEngine
from runtime.openvino_engine import (
    OpenVinoEngine,
    OpenVinoEngineError,
    compile_options,
    cpu_capabilities,
)
from runtime.plan import NO_CUDA, CudaInfo
from runtime.tensors import Contract, run_one

PHOTOS = sorted(p.name for p in DATA.iterdir())


ONE_GPU = CudaInfo(1, "2.13.0+cu128", "12.8")  # what torch reports on a one-GPU node


@pytest.fixture(scope="module")
def openvino_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_repository("openvino", tmp_path_factory)


@pytest.mark.parametrize(
    ("device", "precision", "graphs", "flag"),
    [
        ("cuda", "auto", "auto", "--device cuda"),
        ("auto", "fp16", "auto", "--precision fp16"),
        ("auto", "auto", "on", "--cuda_graphs on"),
    ],
)
def test_the_plan_refuses_what_openvino_on_a_cpu_cannot_do(
    device: str, precision: str, graphs: str, flag: str
) -> None:
    with pytest.raises(ValueError, match=flag):
        plan_engine(OPENVINO, device, precision, graphs, 2, ONE_GPU)


def test_auto_precision_is_fp32_and_bf16_is_only_where_the_cpu_computes_it() -> None:
    """BF16 comes from a gated repository (HINT_BF16) or an explicit flag, never from auto."""
    native = "BF16" in cpu_capabilities()
    auto = plan_engine(OPENVINO, "auto", "auto", "auto", 2, NO_CUDA)
    assert auto.device == "cpu" and auto.num_threads == 2
    assert auto.dtype == "fp32"
    if native:
        assert plan_engine(OPENVINO, "cpu", "bf16", "off", 1, NO_CUDA).dtype == "bf16"
    else:
        with pytest.raises(ValueError, match="no native BF16"):
            plan_engine(OPENVINO, "cpu", "bf16", "off", 1, NO_CUDA)
    assert plan_engine(OPENVINO, "cpu", "fp32", "off", 1, NO_CUDA).dtype == "fp32"


def test_config_parameters_win_as_in_triton() -> None:
    options = compile_options(2, "fp32", {"INFERENCE_NUM_THREADS": "1", "HINT_BF16": "YES"})
    assert options["INFERENCE_NUM_THREADS"] == "1"
    assert options["INFERENCE_PRECISION_HINT"] == "bf16"
    assert options["NUM_STREAMS"] == "1" and options["PERFORMANCE_HINT"] == "LATENCY"


def test_the_converted_repository_is_triton_layout(openvino_repository: Path) -> None:
    version = resolve(openvino_repository, MODEL_NAME)
    text = (version.model_dir / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in text and "platform" not in text
    assert version.artifact.name == "model.xml" and version.artifact.with_suffix(".bin").is_file()
    assert (version.model_dir / "labels.txt").is_file()
    assert ModelConfig.parse(text).platform == OPENVINO


def test_openvino_answers_as_onnxruntime_does_on_real_photos(
    openvino_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    version = resolve(openvino_repository, MODEL_NAME)
    onnx = resolve(engine_repository("onnx", tmp_path_factory), MODEL_NAME)
    contract = Contract.of(version.config)
    pixels = np.stack([reference.decode((DATA / n).read_bytes()) for n in PHOTOS])
    engine = OpenVinoEngine.warmed(version.artifact, contract, 2)
    got = run_one(engine, pixels)
    want = run_one(OnnxEngine(onnx.artifact, contract, 2), pixels)
    assert engine.precision in ("fp32", "bf16")
    assert np.abs(got - want).max() < (0.1 if engine.precision == "bf16" else 1e-3)
    assert (np.argsort(-got)[:, :5] == np.argsort(-want)[:, :5]).all()
    again = run_one(engine, pixels[:1])  # the request's buffers are reused: answers are copies
    np.testing.assert_array_equal(got[:1], again)


@pytest.fixture(scope="module")
def int8_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The ONNX INT8 repository and the FP32 one it is gated against."""
    return engine_repository("int8", tmp_path_factory), engine_repository("onnx", tmp_path_factory)


def test_an_int8_file_passes_its_fidelity_gate_and_runs_in_int8(
    tmp_path: Path, int8_source: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, fp32 = int8_source
    model_dir = export_openvino.convert(source, tmp_path, MODEL_NAME, reference=fp32)
    report = capsys.readouterr().out
    assert "OpenVINO INT8 vs FP32 on 200 held-out images" in report
    assert "where FP32 top-1 p >= 0.50" in report
    version = resolve(tmp_path, MODEL_NAME)
    engine = OpenVinoEngine(version.artifact, Contract.of(version.config), 1)
    assert engine.precision == "int8" and model_dir == version.model_dir
    coffee = reference.decode((DATA / "coffee.jpg").read_bytes())[None]
    assert run_one(engine, coffee).argmax() == 967  # espresso


def test_below_its_gate_or_without_a_reference_nothing_is_written(
    tmp_path: Path, int8_source: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, fp32 = int8_source
    with pytest.raises(ValueError, match="--reference"):
        export_openvino.convert(source, tmp_path, MODEL_NAME)
    monkeypatch.setitem(export_openvino.GATES, "int8", 1.01)  # no model reaches 101%
    with pytest.raises(export_openvino.BelowGate, match=r"INT8 agreement .* below the gate"):
        export_openvino.convert(source, tmp_path, MODEL_NAME, reference=fp32)
    assert not any(tmp_path.iterdir())


def test_bf16_is_built_only_where_it_can_be_gated(
    tmp_path: Path, int8_source: tuple[Path, Path]
) -> None:
    """On a CPU with native BF16 the build is gated and writes HINT_BF16; elsewhere it is
    refused, saying why (this machine's CPU decides which half runs)."""
    _, fp32 = int8_source
    if "BF16" not in cpu_capabilities():
        with pytest.raises(ValueError, match="no native BF16"):
            export_openvino.convert(fp32, tmp_path, MODEL_NAME, precision="bf16", reference=fp32)
        return
    export_openvino.convert(fp32, tmp_path, MODEL_NAME, precision="bf16", reference=fp32)
    version = resolve(tmp_path, MODEL_NAME)
    assert version.config.parameters["HINT_BF16"] == "YES"
    engine = OpenVinoEngine(
        version.artifact, Contract.of(version.config), 1, parameters=version.config.parameters
    )
    assert engine.precision == "bf16"


def test_a_file_that_is_not_the_declared_model_is_refused(openvino_repository: Path) -> None:
    version = resolve(openvino_repository, MODEL_NAME)
    contract = Contract.of(version.config)
    renamed = replace(contract, inputs=(TensorSpec("pixels", "UINT8", (224, 224, 3)),))
    with pytest.raises(OpenVinoEngineError, match=r"config\.pbtxt declares inputs"):
        OpenVinoEngine(version.artifact, renamed, 1)
    with pytest.raises(OpenVinoEngineError, match="cannot read"):
        OpenVinoEngine(version.artifact.with_name("missing.xml"), contract, 1)


def test_only_an_onnx_repository_converts(model_repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 'onnxruntime_onnx'"):
        export_openvino.convert(model_repository, tmp_path, MODEL_NAME)
