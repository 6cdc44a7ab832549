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
from runtime.plan import ExecutionPlan, plan_execution
from runtime.tensors import Engine
from runtime.worker import ForwardWorker


def test_auto_picks_cuda_fp16_and_graphs_when_cuda_is_present() -> None:
    plan = plan_execution("auto", "auto", "auto", 4, cuda_available=True)
    assert plan == ExecutionPlan("cuda", "fp16", cuda_graphs=True, num_threads=4)


def test_auto_picks_cpu_fp32_without_cuda() -> None:
    plan = plan_execution("auto", "auto", "auto", 2, cuda_available=False)
    assert plan == ExecutionPlan("cpu", "fp32", cuda_graphs=False, num_threads=2)


def test_explicit_choices_are_honoured() -> None:
    plan = plan_execution("cuda:1", "fp32", "off", 2, cuda_available=True)
    assert (plan.device, plan.dtype, plan.cuda_graphs) == ("cuda:1", "fp32", False)


@pytest.mark.parametrize(
    ("device", "precision", "graphs", "message"),
    [
        ("cuda", "auto", "auto", "CUDA is not available"),
        ("cpu", "fp16", "auto", "fp16 needs a CUDA device"),
        ("cpu", "auto", "on", "needs a CUDA device"),
        ("tpu", "auto", "auto", "expected auto, cpu"),
        ("cpu", "bf16", "auto", "bf16 is the OpenVINO engine's"),
    ],
)
def test_impossible_choices_are_refused(
    device: str, precision: str, graphs: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_execution(device, precision, graphs, 1, cuda_available=False)


def test_cpu_engine_gives_same_logits_for_pixels_and_normalised_input(
    model_repository: Path,
) -> None:
    version = resolve(model_repository, "image-classifier")
    plan = plan_execution("cpu", "auto", "auto", 2, False)
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
        build_engine(version, plan_execution("cpu", "auto", "auto", 1, False), 4)
