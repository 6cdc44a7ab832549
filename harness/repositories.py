"""The model repositories tests run against: the ones `make model-repo` built, else exported
into a pytest temporary directory on first use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.cli import DEFAULT_MODEL_NAME as MODEL_NAME
from common.modelrepo import CONFIG_FILE, MODEL_FILE

from .servers import ROOT

# The engines every end-to-end test runs against: the config's platform picks the engine.
ENGINES = ("torchscript", "onnx", "int8", "openvino", "openvino-int8")
ENGINE_REPOSITORIES = {
    "torchscript": ("MODEL_REPOSITORY", "model_repository", "model.pt"),
    "onnx": ("MODEL_REPOSITORY_ONNX", "model_repository-onnx", "model.onnx"),
    "int8": ("MODEL_REPOSITORY_INT8", "model_repository-int8", "model.onnx"),
    "openvino": ("MODEL_REPOSITORY_OPENVINO", "model_repository-openvino", "model.xml"),
    "openvino-int8": (
        "MODEL_REPOSITORY_OPENVINO_INT8",
        "model_repository-openvino-int8",
        "model.xml",
    ),
}


def engine_repository(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository `make model-repo` built for `engine`, else one exported now."""
    variable, default, artifact = ENGINE_REPOSITORIES[engine]
    configured = Path(os.environ.get(variable, ROOT / default))
    if not configured.is_absolute():
        configured = ROOT / configured
    if (configured / MODEL_NAME / "1" / artifact).is_file():
        return configured
    target = tmp_path_factory.mktemp(default)
    if engine == "torchscript":
        from modelbuild.export import export

        export(target, MODEL_NAME)
        return target
    from modelbuild import cli, export_onnx

    if engine == "onnx":
        export_onnx.export(target, MODEL_NAME)
        return target
    if engine in ("openvino", "openvino-int8"):
        fp32 = engine_repository("onnx", tmp_path_factory)
        source = fp32 if engine == "openvino" else engine_repository("int8", tmp_path_factory)
        command = ["openvino", "--source", str(source), "--repository", str(target)]
        assert cli.main([*command, "--reference", str(fp32)]) == 0
        return target
    fp32 = engine_repository("onnx", tmp_path_factory) / MODEL_NAME / "1" / artifact
    assert (
        cli.main(["onnx", "--repository", str(target), "--int8", "--fp32_model", str(fp32)]) == 0
    ), "the INT8 export did not pass its fidelity gate"
    return target


def version_repository(source: Path, target: Path, version: str, model: Path) -> Path:
    """A copy of `source` whose only version is `version`, serving the model file `model`
    (everything linked, nothing copied); returns `target`."""
    source_dir, model_dir = source / MODEL_NAME, target / MODEL_NAME
    (model_dir / version).mkdir(parents=True)
    for path in source_dir.iterdir():
        if path.is_file():
            (model_dir / path.name).symlink_to(path.resolve())
    (model_dir / version / MODEL_FILE).symlink_to(model.resolve())
    assert (model_dir / CONFIG_FILE).is_file()
    return target
