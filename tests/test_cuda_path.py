"""The CUDA path's logic, proven on a CPU: CUDA graph capture on the model's device and stream,
the padding and slicing of replays, the self-check that refuses a broken graph, the order of
device setup, FP16 conversion, and the start-up refusal on a machine without CUDA.

`runtime.cuda_graphs` makes its CUDA calls through a module it is given; `FakeCuda` stands in
for torch.cuda on CPU tensors. It records which device was current at every call, and a graph
"captured" under it replays by re-running the pass recorded into it (or, to play the empty
graph PyTorch only warns about, nothing at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DATA

from common.modelrepo import resolve
from runtime.cuda_graphs import CudaGraphs, GraphCaptureError, GraphMismatch, graph_size
from runtime.plan import ExecutionPlan
from runtime.tensors import Contract
from runtime.torchscript import _pad_rows, padded_sizes, prepare_module
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]])


class FakeStream:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.waited_on: list[FakeStream] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other)


class FakeGraph:
    def __init__(self) -> None:
        self.recorded: Callable[[], object] | None = None

    def replay(self) -> None:
        if self.recorded is not None:
            self.recorded()


class FakeCuda:
    """The torch.cuda calls CudaGraphs makes, on the CPU (see the module docstring)."""

    def __init__(self, records: bool = True, warns: bool = False) -> None:
        self.current_device = torch.device("cuda:0")  # CUDA's default, as on any thread
        self.records, self.warns = records, warns
        self.capturing: FakeGraph | None = None
        self.calls: list[tuple[str, torch.device, torch.device]] = []  # (call, its, current)

    @contextmanager
    def device(self, device: torch.device) -> Iterator[None]:
        before, self.current_device = self.current_device, torch.device(device)
        try:
            yield
        finally:
            self.current_device = before

    def Stream(self, device: torch.device | None = None) -> FakeStream:
        stream = FakeStream(torch.device(device) if device is not None else self.current_device)
        self.calls.append(("Stream", stream.device, self.current_device))
        return stream

    def current_stream(self, device: torch.device | None = None) -> FakeStream:
        stream = FakeStream(torch.device(device) if device is not None else self.current_device)
        self.calls.append(("current_stream", stream.device, self.current_device))
        return stream

    @contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        self.calls.append(("stream", stream.device, self.current_device))
        yield

    def CUDAGraph(self) -> FakeGraph:
        return FakeGraph()

    @contextmanager
    def graph(self, graph: FakeGraph, stream: FakeStream | None = None) -> Iterator[None]:
        assert stream is not None, "capture on the default class-level stream"
        self.calls.append(("graph", stream.device, self.current_device))
        self.capturing = graph
        try:
            yield
        finally:
            self.capturing = None
        if self.warns:  # what torch does at capture_end for an empty graph
            warnings.warn("The CUDA Graph is empty.", UserWarning, stacklevel=2)


def row_pass(fake: FakeCuda) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """A forward pass whose rows are independent (as an eval-mode network's): UINT8 [N, 3]
    in, FP32 [N, 2] out. Under capture it records itself into the graph (unless the fake
    plays an empty capture): replay writes the static output in place, as a graph does."""

    def compute(inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[0].float() @ WEIGHTS

    def forward(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = compute(inputs)
        graph = fake.capturing
        if graph is not None and fake.records:
            graph.recorded = lambda: out.copy_(compute(inputs))
        return [out]

    return forward


def zeros(size: int) -> list[torch.Tensor]:
    return [torch.zeros((size, 3), dtype=torch.uint8)]


def sample(size: int) -> list[torch.Tensor]:
    return [torch.arange(1, 3 * size + 1, dtype=torch.uint8).reshape(size, 3)]


def test_capture_runs_on_the_models_device_and_stream_for_cuda_n() -> None:
    """cuda:1 while CUDA's current device is 0: every stream made, waited on or captured on is
    cuda:1's, and every call happens with cuda:1 current (the bug: all of it on GPU 0)."""
    fake = FakeCuda()
    graphs = CudaGraphs(row_pass(fake), torch.device("cuda:1"), cuda=fake)
    graphs.capture([1, 2, 4], zeros)
    assert graphs.sizes == [1, 2, 4]
    kinds = [call for call, _, _ in fake.calls]
    assert kinds.count("graph") == 3 and "Stream" in kinds and "current_stream" in kinds
    assert {(its, current) for _, its, current in fake.calls} == {
        (torch.device("cuda:1"), torch.device("cuda:1"))
    }
    assert fake.current_device == torch.device("cuda:0")  # restored after capture


def test_replays_pad_to_the_smallest_graph_and_slice_the_rows_back() -> None:
    fake = FakeCuda()
    graphs = CudaGraphs(row_pass(fake), torch.device("cuda:0"), cuda=fake)
    graphs.capture([1, 2, 4, 8], zeros)
    graphs.verify(sample, rtol=1e-6)
    for rows in range(1, 9):
        inputs = sample(rows)
        (out,) = graphs.replay(inputs)
        assert out.shape == (rows, 2)
        torch.testing.assert_close(out, inputs[0].float() @ WEIGHTS)
    # Three rows ran in the graph of four: the fourth input row is zero, not a stale one.
    graphs.replay(sample(4))  # the stale row a padded replay must not keep
    graphs.replay(sample(3))
    static_input = graphs._graphs[4].inputs[0]
    assert static_input[3].tolist() == [0, 0, 0]
    assert graph_size([1, 2, 4, 8], 5) == 8
    with pytest.raises(ValueError, match="a batch of 9 rows: the largest batch size is 8"):
        graph_size([1, 2, 4, 8], 9)


def test_an_empty_graph_is_refused_by_the_self_check() -> None:
    """A capture that recorded nothing (kernels sent elsewhere) and did not warn: each replay
    gives the static output as it was. The check against the eager pass refuses it."""
    fake = FakeCuda(records=False)
    graphs = CudaGraphs(row_pass(fake), torch.device("cuda:1"), cuda=fake)
    graphs.capture([1, 2], zeros)
    with pytest.raises(
        GraphMismatch, match=r"batch size 1 on cuda:1 disagrees .* --cuda_graphs off"
    ):
        graphs.verify(sample, rtol=1e-2)


def test_a_warning_during_capture_is_an_error_and_nothing_is_kept() -> None:
    fake = FakeCuda(records=False, warns=True)
    graphs = CudaGraphs(row_pass(fake), torch.device("cuda:0"), cuda=fake)
    with pytest.raises(GraphCaptureError, match="The CUDA Graph is empty"):
        graphs.capture([1, 2], zeros)
    assert graphs.sizes == []


def test_padding_keeps_the_layout_and_the_sizes_cover_the_max_batch() -> None:
    batch = torch.rand(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    padded = _pad_rows(batch, 4)
    assert padded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(padded[:3], batch)
    assert padded[3].abs().sum().item() == 0
    assert padded_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert padded_sizes(12) == [1, 2, 4, 8, 12]


def test_the_device_is_set_on_the_forward_thread_before_the_model_loads(
    model_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TorchScriptEngine for cuda:1 calls torch.cuda.set_device(cuda:1) before torch.jit.load
    (the load stops the test: there is no GPU here)."""
    from runtime import torchscript

    calls: list[str] = []

    class Stop(Exception):
        pass

    def load(path: str, map_location: Any = None) -> None:
        calls.append(f"load {map_location}")
        raise Stop

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(f"set {device}"))
    monkeypatch.setattr(torch.jit, "load", load)
    version = resolve(model_repository, "image-classifier")
    plan = ExecutionPlan("cuda:1", "fp16", cuda_graphs=True, num_threads=1)
    with pytest.raises(Stop):
        torchscript.TorchScriptEngine(version.artifact, plan, Contract.of(version.config))
    assert calls == ["set cuda:1", "load cuda:1"]


def test_fp16_leaves_no_fp32_constant_and_agrees_with_fp32_on_the_photos(
    model_repository: Path,
) -> None:
    """.half() + freeze, as the CUDA FP16 plan prepares the module: every floating constant of
    both entrances is FP16; run (here on the CPU's FP16 kernels) it gives FP32's top-1 on every
    test photo, logits within 5% of the largest."""
    version = resolve(model_repository, "image-classifier")
    kept = ["forward_normalized"]
    half = prepare_module(torch.jit.load(str(version.artifact)), torch.float16, kept)
    full = prepare_module(torch.jit.load(str(version.artifact)), torch.float32, kept)
    for graph in (half.graph, half.forward_normalized.graph):
        dtypes = {
            node.output().toIValue().dtype
            for node in graph.findAllNodes("prim::Constant")
            if node.output().type().kind() == "TensorType"
        }
        assert dtypes == {torch.float16}
    params = Preprocessing.read(version.model_dir)
    photos = [
        preprocess(path.read_bytes(), params, DecodeLimits()) for path in sorted(DATA.iterdir())
    ]
    pixels = torch.from_numpy(np.stack(photos))
    with torch.inference_mode():
        want, got = full(pixels), half(pixels).float()
    assert got.argmax(1).tolist() == want.argmax(1).tolist()
    assert (got - want).abs().max().item() <= 0.05 * want.abs().max().item()


@pytest.mark.parametrize(
    "command",
    [
        ["predictor", "--model_dir", "{repo}", "--device", "cuda"],
        ["batch", "{data}", "--db", "sqlite://", "--model_dir", "{repo}", "--device", "cuda:1"],
    ],
)
def test_asking_for_cuda_on_a_cpu_machine_exits_2_with_the_reason(
    model_repository: Path, command: list[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = [a.format(repo=model_repository, data=DATA) for a in command]
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "CUDA is not available" in done.stderr
    assert "CUDA_VISIBLE_DEVICES" in done.stderr and "0 CUDA device(s) visible" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("export_to", ["kept", "temporary"])
def test_the_gpu_smoke_test_passes_its_dry_run_on_the_cpu(
    model_repository: Path, tmp_path: Path, export_to: str
) -> None:
    """scripts/gpu_smoke.py --dry-run --export: every check but CUDA, on the CPU, in FP32, on a
    model.pt exported in the run (as on a GPU image with an older torch), importing only what
    the GPU image has (tests/gpu_image.py) and the kit `make gpu-smoke-kit` builds. The export
    goes where --export_to says and stays; without it, to a temporary directory removed at
    exit."""
    kit = ROOT / ".gpu-smoke" / "site"
    assert kit.is_dir(), f"{kit} is missing: `make gpu-smoke-kit` (make test builds it)"
    report = tmp_path / "smoke.json"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    exported = tmp_path / "exported" if export_to == "kept" else None
    done = subprocess.run(
        [
            sys.executable,
            "tests/gpu_image.py",
            "scripts/gpu_smoke.py",
            "--dry-run",
            "--export",
            *(["--export_to", str(exported)] if exported else []),
            "--model_repository",
            str(model_repository),
            "--submits",
            "40",
            "--seconds",
            "0.5",
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(report.read_text())
    assert document["passed"] and document["environment"]["dry_run"]
    assert list(document["checks"]) == [
        "export",
        "load",
        "build",
        "distinct",
        "reference",
        "partial",
        "graphs",
        "normalized",
        "batcher",
        "throughput",
    ]
    assert all(check["passed"] for check in document["checks"].values())
    assert document["checks"]["batcher"]["submits"] == 40
    export = document["checks"]["export"]
    assert export["carried"] == "loads under this torch"
    if exported:
        assert export["exported_to"] == str(exported)
        assert (exported / "image-classifier" / "1" / "model.pt").is_file()
    else:
        assert Path(export["exported_to"]).parent == temporary
    assert not list(temporary.iterdir()), "the smoke test left files in its temporary directory"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--export_to", "elsewhere"], "give --export too"),
        (["--export", "--export_to", "model_repository"], "it would overwrite model.pt"),
    ],
)
def test_the_gpu_smoke_test_refuses_export_to_without_sense(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gpu_smoke.py", "--model_repository", "model_repository", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_the_gpu_smoke_kit_keeps_its_protobuf_pure_python_beside_another(tmp_path: Path) -> None:
    """The GPU image has its own protobuf, C extension and all, of another version; through the
    shared `google` namespace the kit's pure-Python protobuf would load that extension and fail
    (it did, on the first GPU run). The kit's empty google/_upb shadows it: here the venv's
    protobuf, extension included, stands beside the kit, and the pure-Python one is used."""
    from google.protobuf.internal import api_implementation

    assert api_implementation.Type() == "upb", "this test needs the venv's C extension beside it"
    kit = ROOT / ".gpu-smoke" / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(kit)!r})\n"
            "from google.protobuf import text_format\n"
            "from google.protobuf.internal import api_implementation\n"
            "import google.protobuf\n"
            "print(api_implementation.Type(), google.protobuf.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    implementation, location = done.stdout.split()
    assert implementation == "python"
    assert location.startswith(str(kit))


def test_the_gpu_image_stand_in_refuses_what_the_image_lacks(tmp_path: Path) -> None:
    """tests/gpu_image.py, which the dry run above runs under, hides site-packages beyond torch,
    numpy, pillow and prometheus-client: otherwise that test would prove nothing about imports."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib, json\n"
        "found = {}\n"
        "for name in ['torch', 'numpy', 'PIL', 'prometheus_client', 'kserve', 'grpc',\n"
        "             'starlette', 'google.protobuf', 'tritonclient', 'opentelemetry.trace']:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        found[name] = True\n"
        "    except ImportError:\n"
        "        found[name] = False\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run(
        [sys.executable, "tests/gpu_image.py", str(probe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "torch": True,
        "numpy": True,
        "PIL": True,
        "prometheus_client": True,
        "kserve": False,
        "grpc": False,
        "starlette": False,
        "google.protobuf": False,
        "tritonclient": False,
        "opentelemetry.trace": False,
    }
