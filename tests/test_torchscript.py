"""Device, precision and CUDA-graph selection (pure: no GPU needed), and the CPU engine on its
forward thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from common.modelrepo import resolve
from runtime.engines import build_engine
from runtime.plan import NO_CUDA, CudaInfo, ExecutionPlan, plan_execution
from runtime.tensors import Engine
from runtime.worker import ForwardWorker

ONE_GPU = CudaInfo(1, "2.13.0+cu128", "12.8", None)
TWO_GPUS = CudaInfo(2, "2.13.0+cu128", "12.8", "2,3")


def test_auto_picks_the_first_gpu_fp16_and_graphs_when_cuda_is_present() -> None:
    plan = plan_execution("auto", "auto", "auto", 4, ONE_GPU)
    assert plan == ExecutionPlan("cuda:0", "fp16", cuda_graphs=True, num_threads=4)


def test_auto_picks_cpu_fp32_without_cuda() -> None:
    plan = plan_execution("auto", "auto", "auto", 2, NO_CUDA)
    assert plan == ExecutionPlan("cpu", "fp32", cuda_graphs=False, num_threads=2)


def test_explicit_choices_are_honoured() -> None:
    plan = plan_execution("cuda:1", "fp32", "off", 2, TWO_GPUS)
    assert (plan.device, plan.dtype, plan.cuda_graphs) == ("cuda:1", "fp32", False)
    assert plan_execution("cuda", "auto", "on", 2, TWO_GPUS).device == "cuda:0"
    assert plan_execution("cuda", "auto", "on", 2, TWO_GPUS).graphs_required
    assert not plan_execution("cuda", "auto", "auto", 2, TWO_GPUS).graphs_required


@pytest.mark.parametrize(
    ("device", "precision", "graphs", "cuda", "message"),
    [
        (
            "cuda",
            "auto",
            "auto",
            NO_CUDA,
            r"CUDA is not available \(torch is not installed, CUDA_VISIBLE_DEVICES is unset, 0",
        ),
        (
            "cuda:0",
            "auto",
            "auto",
            CudaInfo(0, "2.13.0+cpu", None, None),
            "torch 2.13.0\\+cpu is a CPU-only build",
        ),
        (
            "cuda:2",
            "auto",
            "auto",
            TWO_GPUS,
            r"no CUDA device 2; expected an index from 0 to 1 \(torch 2.13.0\+cu128 built with "
            r"CUDA 12.8, CUDA_VISIBLE_DEVICES='2,3', 2 CUDA device\(s\) visible\)",
        ),
        ("cuda:-1", "auto", "auto", TWO_GPUS, "expected auto, cpu, cuda or cuda:N"),
        ("cuda1", "auto", "auto", TWO_GPUS, "expected auto, cpu, cuda or cuda:N"),
        ("cudax", "auto", "auto", TWO_GPUS, "expected auto, cpu, cuda or cuda:N"),
        ("cpu", "fp16", "auto", NO_CUDA, "fp16 needs a CUDA device"),
        ("cpu", "auto", "on", NO_CUDA, "needs a CUDA device"),
        ("tpu", "auto", "auto", NO_CUDA, "expected auto, cpu"),
        ("cpu", "bf16", "auto", NO_CUDA, "bf16 is the OpenVINO engine's"),
    ],
)
def test_impossible_choices_are_refused(
    device: str, precision: str, graphs: str, cuda: CudaInfo, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_execution(device, precision, graphs, 1, cuda)


def test_cpu_engine_gives_same_logits_for_pixels_and_normalised_input(
    model_repository: Path,
) -> None:
    version = resolve(model_repository, "image-classifier")
    plan = plan_execution("cpu", "auto", "auto", 2, NO_CUDA)
    built_on: list[threading.Thread] = []

    def build() -> Engine:
        built_on.append(threading.current_thread())
        return build_engine(version, plan, 4)

    worker = ForwardWorker(build)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    normalised = ((pixels.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()

    async def both() -> tuple[np.ndarray, np.ndarray]:
        first = await worker.run({"pixels__0": pixels})
        second = await worker.run({"pixels__0": normalised})
        return first["logits__0"], second["logits__0"]

    from_pixels, from_float = asyncio.run(both())
    worker.close()
    # Built and warmed on the forward thread: no OpenMP team on this one.
    assert built_on and built_on[0] is not threading.current_thread()
    assert from_pixels.shape == (2, 1000) and from_pixels.dtype == np.float32
    np.testing.assert_allclose(from_pixels, from_float, atol=1e-3)


def test_the_export_names_its_torch_and_an_older_runtime_is_refused_at_load(
    model_repository: Path, tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    import torch

    from common.modelrepo import CONFIG_FILE, EXPORTED_WITH_TORCH, ModelRepositoryError
    from modelbuild.export import model_config
    from runtime.torchscript import check_torch_version

    # What `make model-repo` writes: the torch that exported model.pt.
    assert model_config("m").parameters == {EXPORTED_WITH_TORCH: torch.__version__}
    assert model_config("m", "onnxruntime_onnx").parameters == {}
    check_torch_version(torch.__version__)  # the same torch: loads
    check_torch_version("2.4.1", runtime="2.13.0+cpu")  # a newer runtime: loads
    check_torch_version(None)  # an export from before the parameter: not checked
    with pytest.raises(
        ModelRepositoryError, match=r"exported with torch 2\.13\.0\+cu130 .* 2\.7\.1"
    ):
        check_torch_version("2.13.0+cu130", runtime="2.7.1")

    # A repository exported by a newer torch than this one: refused before torch.jit.load.
    copy = tmp_path / "repository"
    shutil.copytree(model_repository, copy)
    exported = resolve(copy, "image-classifier").config
    newer = dataclasses.replace(exported, parameters={EXPORTED_WITH_TORCH: "99.0.0"})
    (copy / "image-classifier" / CONFIG_FILE).write_text(newer.to_pbtxt())
    version = resolve(copy, "image-classifier")
    with pytest.raises(ModelRepositoryError, match=r"least 99\.0\.0 \(docker/predictor"):
        build_engine(version, plan_execution("cpu", "auto", "auto", 1, NO_CUDA), 4)
