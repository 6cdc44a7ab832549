"""The ONNX export, the onnxruntime engine, INT8 quantisation and its fidelity gate."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import reference
from conftest import DATA, MODEL_NAME, engine_repository
from PIL import Image

from common.modelrepo import ONNX_PLATFORM, TensorSpec, resolve
from modelbuild import cli, fidelity, imagesets
from modelbuild.export import PREPROCESSING
from modelbuild.quantize import saturating_cpu
from runtime.engines import build_engine, plan_engine
from runtime.onnx_engine import OnnxEngine, OnnxEngineError
from runtime.plan import NO_CUDA, CudaInfo
from runtime.tensors import Contract, run_one
from vision.preprocessing import Preprocessing

PHOTOS = sorted(p.name for p in DATA.iterdir())


ONE_GPU = CudaInfo(1, "2.13.0+cu128", "12.8")  # what torch reports on a one-GPU node


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_repository("onnx", tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_file(onnx_repository: Path) -> Path:
    return resolve(onnx_repository, MODEL_NAME).artifact


def test_onnx_repository_keeps_the_tensor_contract(
    onnx_repository: Path, model_repository: Path
) -> None:
    onnx_version = resolve(onnx_repository, MODEL_NAME)
    torch_version = resolve(model_repository, MODEL_NAME)
    assert onnx_version.config.platform == ONNX_PLATFORM
    assert onnx_version.artifact.name == "model.onnx"
    assert onnx_version.config.inputs == torch_version.config.inputs
    assert onnx_version.config.outputs == torch_version.config.outputs
    assert onnx_version.config.max_batch_size == torch_version.config.max_batch_size
    assert onnx_version.labels() == torch_version.labels()
    assert Preprocessing.read(onnx_version.model_dir) == Preprocessing.read(torch_version.model_dir)
    graph = onnx.load(str(onnx_version.artifact)).graph
    (pixels,) = graph.input
    assert pixels.name == "pixels__0"
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["batch", 224, 224, 3]  # dynamic batch, NHWC
    assert [o.name for o in graph.output] == ["logits__0"]


def test_onnx_fp32_matches_the_eager_model(onnx_repository: Path) -> None:
    version = resolve(onnx_repository, MODEL_NAME)
    plan = plan_engine(ONNX_PLATFORM, "cpu", "auto", "auto", 2, NO_CUDA)
    engine = build_engine(version, plan, 8)
    pixels = np.stack([reference.decode((DATA / n).read_bytes()) for n in PHOTOS])
    expected = reference.logits(pixels)
    served = run_one(engine, pixels)
    assert np.abs(served - expected).max() < 1e-3
    assert (np.argsort(-served)[:, :5] == np.argsort(-expected)[:, :5]).all()
    # Normalised FP32 input takes the model's second entrance: the same graph after its
    # normalisation (offered, not advertised: the contract's alternate form of the input).
    assert engine.contract.alternates["pixels__0"].dims == (3, 224, 224)
    np.testing.assert_allclose(run_one(engine, reference.normalise(pixels)), served, atol=1e-4)
    assert getattr(engine, "precision", None) == "fp32"


def test_engine_refuses_a_file_that_is_not_the_declared_model(onnx_file: Path) -> None:
    pixels, logits = (
        TensorSpec("pixels__0", "UINT8", (224, 224, 3)),
        TensorSpec("logits__0", "FP32", (1000,)),
    )
    renamed = Contract((TensorSpec("pixels", "UINT8", (224, 224, 3)),), (logits,), 1)
    with pytest.raises(OnnxEngineError, match=r"config.pbtxt declares inputs \{'pixels'"):
        OnnxEngine(onnx_file, renamed, 1)
    retyped = Contract((TensorSpec("pixels__0", "FP32", (224, 224, 3)),), (logits,), 1)
    with pytest.raises(OnnxEngineError, match="tensor\\(float\\)"):
        OnnxEngine(onnx_file, retyped, 1)
    # The engine alone takes the declared input only; the entrance is a separate wrapper.
    plain = OnnxEngine(onnx_file, Contract((pixels,), (logits,), 1), 1)
    assert plain.contract.alternates == {}


@pytest.mark.parametrize(
    ("device", "precision", "graphs", "message"),
    [
        ("cuda", "auto", "auto", "--device cuda"),
        ("auto", "fp16", "auto", "--precision fp16"),
        ("cpu", "auto", "on", "--cuda_graphs on"),
    ],
)
def test_onnx_plan_refuses_gpu_flags(
    device: str, precision: str, graphs: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_engine(ONNX_PLATFORM, device, precision, graphs, 2, ONE_GPU)


def test_onnx_plan_runs_on_the_cpu_even_where_cuda_is() -> None:
    plan = plan_engine(ONNX_PLATFORM, "auto", "auto", "auto", 3, ONE_GPU)
    assert (plan.device, plan.cuda_graphs, plan.num_threads) == ("cpu", False, 3)
    with pytest.raises(ValueError, match="platform 'tensorflow_savedmodel'"):
        plan_engine("tensorflow_savedmodel", "auto", "auto", "auto", 1, NO_CUDA)


# --- fidelity: pure functions --------------------------------------------------------------


def test_fidelity_counts_agreement_confidence_and_shift() -> None:
    reference_logits = np.log(
        np.array(
            [
                [0.90, 0.05, 0.05],  # confident; candidate agrees
                [0.60, 0.30, 0.10],  # confident; candidate picks FP32's second
                [0.40, 0.35, 0.25],  # not confident; candidate picks the third
                [0.20, 0.70, 0.10],  # confident; agrees
            ]
        )
    )
    candidate_logits = np.log(
        np.array([[0.80, 0.10, 0.10], [0.30, 0.60, 0.10], [0.30, 0.30, 0.40], [0.20, 0.70, 0.10]])
    )
    result = fidelity.compare(reference_logits, candidate_logits, confident=0.5)
    assert result.images == 4
    assert result.agreement == pytest.approx(0.5)
    assert (result.confident_images, result.confident_agreement) == (3, pytest.approx(2 / 3))
    assert result.second_choice == 1
    assert result.mean_probability_shift == pytest.approx((0.1 + 0.3 + 0.1 + 0.0) / 4)
    assert result.max_probability_shift == pytest.approx(0.3)
    assert result.gated_agreement() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected equal"):
        fidelity.compare(reference_logits, candidate_logits[:2])


def test_accuracy_top1_and_top5() -> None:
    logits = np.tile(np.arange(10, dtype=np.float32), (2, 1))  # class 9 first, then 8, ...
    assert fidelity.accuracy(logits, np.array([9, 5])) == (0.5, 1.0)
    assert fidelity.accuracy(logits, np.array([0, 4])) == (0.0, 0.0)


# --- image sets ------------------------------------------------------------------------------


def test_builtin_variations_are_reproducible_and_seeded(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    (source / "coffee.jpg").write_bytes((DATA / "coffee.jpg").read_bytes())
    first = imagesets.augmented(source, 3, seed=1)
    assert [n for n, _ in first] == [f"coffee-1-{i}.jpg" for i in range(3)]
    assert first == imagesets.augmented(source, 3, seed=1)
    assert [b for _, b in first] != [b for _, b in imagesets.augmented(source, 3, seed=2)]
    decoded = imagesets.decode([*first, ("junk.jpg", b"not an image")], PREPROCESSING)
    assert decoded.pixels.shape == (3, 224, 224, 3) and decoded.pixels.dtype == np.uint8
    assert len(decoded.skipped) == 1 and "junk.jpg: not a supported image" in decoded.skipped[0]
    calibration, holdout = imagesets.split(decoded)
    assert (len(calibration.names), len(holdout.names)) == (2, 1)


def test_class_folders_name_ids_synsets_or_labels(onnx_repository: Path) -> None:
    labels = resolve(onnx_repository, MODEL_NAME).labels()
    assert imagesets.class_id("967", labels) == 967
    assert imagesets.class_id("n07920052", labels) == 967  # ImageNet-1k synset of espresso
    assert imagesets.class_id("espresso", labels) == 967
    assert imagesets.class_id("tabby", labels) == 281  # first name of "tabby, tabby cat"
    with pytest.raises(ValueError, match="'kittens'"):
        imagesets.class_id("kittens", labels)


def test_saturating_cpu_reads_the_vnni_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2 fma\n")
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert saturating_cpu(cpuinfo) is x86
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert saturating_cpu(cpuinfo) is False


# --- INT8: the gate and the labelled report ----------------------------------------------------


def jpeg(name: str, flip: bool = False) -> bytes:
    image = Image.open(DATA / name).convert("RGB")
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_int8_export_is_gated_and_reports_accuracy(
    onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for name in PHOTOS:
        (calibration / f"{Path(name).stem}.jpg").write_bytes(jpeg(name))
        (calibration / f"{Path(name).stem}-flipped.jpg").write_bytes(jpeg(name, flip=True))
    labelled = tmp_path / "labelled"
    for folder, name in (("espresso", "coffee.jpg"), ("n07920052", "rocket.jpg")):
        (labelled / folder).mkdir(parents=True)
        (labelled / folder / name).write_bytes(jpeg(name))  # the rocket is mislabelled
    target = tmp_path / "int8"
    common = ["--repository", str(target), "--int8", "--fp32_model", str(onnx_file)]
    common += ["--calibration", str(calibration), "--labelled", str(labelled)]

    # An impossible gate: nothing is written, the report says why.
    assert cli.main(["onnx", *common, "--min_agreement", "1.01"]) == 1
    out = capsys.readouterr().out
    assert "below the gate 101.0%: not written" in out
    assert "held-out images" in out and "top-1 agreement" in out
    assert not target.exists()

    assert cli.main(["onnx", *common, "--min_agreement", "1.01", "--force_int8"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on 2 labelled images" in out
    assert "FP32  50.0%" in out  # espresso right, the mislabelled rocket wrong
    version = resolve(target, MODEL_NAME)
    assert version.config.platform == ONNX_PLATFORM
    engine = OnnxEngine(version.artifact, Contract.of(version.config), 2)
    assert engine.precision == "int8"
    assert version.artifact.stat().st_size < onnx_file.stat().st_size / 3
    coffee = reference.decode((DATA / "coffee.jpg").read_bytes())[None]
    assert run_one(engine, coffee).argmax() == 967
