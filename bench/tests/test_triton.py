"""NVIDIA Triton beside our predictor (bench/triton/): the repository it gets, the batching its
model.py does, the comparison's table, and a real tritonserver answering like our engine.

The pure parts always run. The server tests need the Triton venv `make triton` builds
(.venv-triton, not part of `make test`) and are skipped without it. tritonclient.grpc cannot
share pytest's process with kserve, so the gRPC call runs in a child process
(`python -m bench.triton.pixels`); HTTP runs here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from bench.stats import LatencySummary
from bench.triton import model
from bench.triton.install import DEFAULT_VENV, TritonInstall, TritonInstallError
from bench.triton.repository import TritonRepositoryError, triton_config, write_repository
from bench.triton.results import (
    DIRECT,
    OURS,
    TRITON,
    Agreement,
    Cell,
    TritonComparison,
    cpu_flags,
    rows,
)
from bench.triton.server import TritonProcess, counter_total, rows_per_execution, running_triton
from common import pbtxt
from common.cli import DEFAULT_MODEL_NAME
from common.modelrepo import ModelConfig, TensorSpec, resolve
from harness.repositories import engine_repository
from harness.servers import ROOT
from runtime.engines import build_engine, plan_engine
from runtime.plan import NO_CUDA
from runtime.tensors import run_one
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

DATA = ROOT / "tests" / "data"
IMAGES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")
# Same file, same onnxruntime and options: the logits should be the same bits.
RTOL = ATOL = 1e-5
# Long enough that requests sent together reach the batcher together on a busy machine.
TEST_QUEUE_DELAY_US = 500_000
THREADS = 2


# --- the repository -------------------------------------------------------------------------


def _source(tmp_path: Path, platform: str = "onnxruntime_onnx") -> Path:
    """A one-model repository with our image classifier's contract and a stand-in file."""
    config = ModelConfig(
        name=DEFAULT_MODEL_NAME,
        platform=platform,
        max_batch_size=8,
        inputs=(TensorSpec("pixels__0", "UINT8", (224, 224, 3)),),
        outputs=(TensorSpec("logits__0", "FP32", (1000,)),),
        max_queue_delay_us=2000,
        label_filename="labels.txt",
    )
    model_dir = tmp_path / "source" / DEFAULT_MODEL_NAME
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config.to_pbtxt())
    (model_dir / "labels.txt").write_text("a\nb\n")
    artifact = "model.pt" if platform == "pytorch_libtorch" else "model.onnx"
    (model_dir / "1" / artifact).write_bytes(b"stand-in")
    return tmp_path / "source"


def test_config_keeps_the_tensor_contract_and_names_the_file(tmp_path: Path) -> None:
    source = _source(tmp_path)
    ours = resolve(source, DEFAULT_MODEL_NAME)
    message = pbtxt.parse(triton_config(source, DEFAULT_MODEL_NAME, 3), "generated")
    assert message.backend == "python" and not message.platform
    assert message.max_batch_size == ours.config.max_batch_size
    for declared, written in (
        (ours.config.inputs, message.input),
        (ours.config.outputs, message.output),
    ):
        assert [(t.name, t.datatype, t.dims) for t in declared] == [
            (t.name, pbtxt.model_config_pb2.DataType.Name(t.data_type)[5:], tuple(t.dims))
            for t in written
        ]
    assert message.output[0].label_filename == "labels.txt"
    assert message.HasField("dynamic_batching")
    assert message.dynamic_batching.max_queue_delay_microseconds == 0  # Triton's default
    [group] = message.instance_group
    assert (group.count, group.kind) == (1, pbtxt.model_config_pb2.ModelInstanceGroup.KIND_CPU)
    parameters = {k: v.string_value for k, v in message.parameters.items()}
    assert parameters[model.ONNX_FILE] == str(ours.artifact.resolve())
    assert parameters[model.INTRA_OP_THREADS] == "3"


def test_repository_holds_config_labels_and_model_py(tmp_path: Path) -> None:
    target = write_repository(_source(tmp_path), DEFAULT_MODEL_NAME, tmp_path / "triton", 2)
    model_dir = target / DEFAULT_MODEL_NAME
    assert (model_dir / "labels.txt").read_text() == "a\nb\n"
    assert (model_dir / "1" / "model.py").read_text() == Path(model.__file__).read_text()
    assert not (model_dir / "1" / "model.onnx").exists()  # the source's file, not a copy


def test_a_repository_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    source = _source(tmp_path, platform="pytorch_libtorch")
    with pytest.raises(TritonRepositoryError, match="platform 'pytorch_libtorch', expected"):
        triton_config(source, DEFAULT_MODEL_NAME, 2)


# --- model.py's batching --------------------------------------------------------------------


def test_requests_are_concatenated_and_split_back_in_order() -> None:
    parts = [{"x": np.full((n, 2), i, dtype=np.uint8)} for i, n in enumerate((1, 3, 2))]
    batch, row_counts = model.concatenate(parts)
    assert row_counts == [1, 3, 2] and batch["x"].shape == (6, 2)
    outputs = {"y": batch["x"].astype(np.float32) * 10}
    back = model.split(outputs, row_counts)
    assert [part["y"].shape[0] for part in back] == [1, 3, 2]
    for i, part in enumerate(back):
        assert np.all(part["y"] == 10 * i)


def test_missing_parameters_are_named() -> None:
    config = {"parameters": {model.ONNX_FILE: {"string_value": "/m.onnx"}}}
    with pytest.raises(KeyError, match="intra_op_threads"):
        model.parameters(config)


# --- the install and the report's parts -----------------------------------------------------


def test_an_absent_install_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(TritonInstallError, match="make triton"):
        TritonInstall.find(tmp_path)


def test_triton_counters_give_rows_per_execution() -> None:
    def scrape(rows: int, executions: int) -> str:
        labels = '{model="m",version="1"}'
        return (
            f"# TYPE nv_inference_count counter\nnv_inference_count{labels} {rows}\n"
            f"nv_inference_exec_count{labels} {executions}\n"
        )

    before, after = scrape(10, 10), scrape(26, 14)
    assert counter_total(after, "nv_inference_count") == 26
    assert rows_per_execution(before, after) == 4.0
    assert rows_per_execution(before, before) is None


def _cell(server: str, concurrency: int, round_: int, images_per_s: float) -> Cell:
    latency = LatencySummary(10, 1000 / images_per_s, 0.0, 0.0, 0.0)
    return Cell(DIRECT, server, concurrency, round_, images_per_s, latency, 10, 0, 20.0, 1.0, 0.1)


def test_rows_give_medians_and_the_median_of_each_rounds_ratio() -> None:
    cells = [
        _cell(OURS, 1, 0, 50.0),
        _cell(TRITON, 1, 0, 40.0),
        _cell(TRITON, 1, 1, 50.0),
        _cell(OURS, 1, 1, 50.0),
        _cell(OURS, 1, 2, 30.0),
        _cell(TRITON, 1, 2, 60.0),
    ]
    [row] = rows(cells)
    assert (row.ours_images_per_s, row.triton_images_per_s) == (50.0, 50.0)
    assert row.ours_over_triton == 1.0  # the rounds' ratios: 1.25, 1.0, 0.5
    assert row.ours_p50_ms == 20.0 and row.rounds == 3


def test_table_names_the_machine_and_each_column() -> None:
    comparison = TritonComparison(
        cells=[_cell(OURS, 4, 0, 60.0), _cell(TRITON, 4, 0, 40.0)],
        agreement=Agreement(10, 10, 0.0, RTOL, ATOL, True),
        versions={"tritonserver": "2.51.0", "onnxruntime": "1.32.0"},
        machine={"cpu_model": "AMD EPYC", "available_cpus": 2, "simd_flags": ["avx2", "fma"]},
        settings={"rounds": 1, "duration_s": 8.0, "warmup_s": 2.0, "intra_op_threads": 2},
    )
    table = comparison.format_table()
    assert "CPU: AMD EPYC, 2 CPUs; SIMD flags: avx2 fma" in table
    assert "Triton img/s  ours img/s  ours/Triton  Triton p50 ms  ours p50 ms" in table
    assert "1.50x" in table and "identical within" in table
    assert comparison.to_json()["rows"][0]["ours_over_triton"] == 1.5


def test_cpu_flags_reads_the_simd_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert cpu_flags(cpuinfo) == ["sse4_2", "avx", "avx2", "fma"]
    assert cpu_flags(tmp_path / "absent") == []


# --- a real tritonserver ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def install() -> TritonInstall:
    """The Triton venv `make triton` builds; skips the server tests without it."""
    try:
        return TritonInstall.find(DEFAULT_VENV)
    except TritonInstallError as exc:
        pytest.skip(f"no Triton install (not part of make test; run `make triton`): {exc}")


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our ONNX repository: the one `make model-repo` built, else exported now."""
    return engine_repository("onnx", tmp_path_factory)


@pytest.fixture(scope="module")
def triton(
    install: TritonInstall, onnx_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    """tritonserver on a repository written from our ONNX repository, on loopback."""
    work = tmp_path_factory.mktemp("triton")
    repository = write_repository(
        onnx_repository, DEFAULT_MODEL_NAME, work / "repository", THREADS, TEST_QUEUE_DELAY_US
    )
    with running_triton(install, repository, work / "server", timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def pixels_and_logits(onnx_repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images as pixels (the transformer's preprocessing) and our engine's logits."""
    version = resolve(onnx_repository, DEFAULT_MODEL_NAME)
    params = Preprocessing.read(version.model_dir)
    pixels = np.stack(
        [preprocess((DATA / name).read_bytes(), params, DecodeLimits()) for name in IMAGES]
    )
    plan = plan_engine(version.config.platform, "cpu", "auto", "auto", THREADS, NO_CUDA)
    engine = build_engine(version, plan, version.config.max_batch_size)
    logits = np.concatenate([run_one(engine, row[None]) for row in pixels])
    return pixels, logits


def _http_infer(client: httpclient.InferenceServerClient, rows: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("pixels__0", list(rows.shape), "UINT8")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = client.infer(DEFAULT_MODEL_NAME, [tensor])
    logits = result.as_numpy("logits__0")
    assert logits is not None
    return logits


def test_triton_serves_our_contract(triton: TritonProcess) -> None:
    meta = httpx.get(f"{triton.url}/v2/models/{DEFAULT_MODEL_NAME}", timeout=10).json()
    assert meta["inputs"] == [
        {"name": "pixels__0", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}
    ]
    assert meta["outputs"] == [{"name": "logits__0", "datatype": "FP32", "shape": [-1, 1000]}]
    assert triton.server_version() is not None


def test_http_logits_match_our_engine(
    triton: TritonProcess, pixels_and_logits: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels, expected = pixels_and_logits
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    try:
        got = _http_infer(client, pixels[:1])
    finally:
        client.close()
    np.testing.assert_allclose(got, expected[:1], rtol=RTOL, atol=ATOL)


def test_grpc_logits_match_our_engine(
    triton: TritonProcess,
    pixels_and_logits: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    pixels, expected = pixels_and_logits
    np.save(tmp_path / "pixels.npy", pixels)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.triton.pixels",
            triton.grpc_target,
            DEFAULT_MODEL_NAME,
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "logits.npy"),
        ],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=RTOL, atol=ATOL)


def test_requests_sent_together_run_as_one_batch(
    triton: TritonProcess, pixels_and_logits: tuple[np.ndarray, np.ndarray]
) -> None:
    """One execute for several requests (the dynamic batcher's list), each its own rows back."""
    pixels, expected = pixels_and_logits
    before = triton.metrics()
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{triton.http_port}", concurrency=len(pixels)
    )
    try:
        pending = []
        for row in pixels:
            tensor = httpclient.InferInput("pixels__0", [1, *row.shape], "UINT8")
            tensor.set_data_from_numpy(row[None], binary_data=True)
            pending.append(client.async_infer(DEFAULT_MODEL_NAME, [tensor]))
        got = np.concatenate([p.get_result().as_numpy("logits__0") for p in pending])
    finally:
        client.close()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    per_execution = rows_per_execution(before, triton.metrics())
    assert per_execution is not None and per_execution > 1, per_execution
