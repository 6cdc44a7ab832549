"""The model repository contract: config.pbtxt parsing and version resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import pbtxt
from common.modelrepo import ModelConfig, ModelRepositoryError, TensorSpec, resolve
from vision.preprocessing import Preprocessing

CONFIG = """
name: "image-classifier"   # a comment
platform: "pytorch_libtorch"
max_batch_size: 16
input [ { name: "pixels__0", data_type: TYPE_UINT8, dims: [ 224, 224, 3 ] } ]
output [
  { name: "logits__0"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt" }
]
dynamic_batching { max_queue_delay_microseconds: 1500 }
"""


def test_config_declares_tensors_batching_and_labels() -> None:
    config = ModelConfig.parse(CONFIG)
    assert config.name == "image-classifier"
    assert config.max_batch_size == 16
    assert config.inputs == (TensorSpec("pixels__0", "UINT8", (224, 224, 3)),)
    assert config.outputs[0].metadata() == {
        "name": "logits__0",
        "datatype": "FP32",
        "shape": [-1, 1000],
    }
    assert config.max_queue_delay_us == 1500
    assert config.label_filename == "labels.txt"


def test_a_backend_says_what_a_platform_would() -> None:
    onnx = CONFIG.replace('platform: "pytorch_libtorch"', 'backend: "onnxruntime"')
    assert ModelConfig.parse(onnx).platform == "onnxruntime_onnx"
    torch = CONFIG.replace('platform: "pytorch_libtorch"', 'backend: "pytorch"')
    assert ModelConfig.parse(torch).platform == "pytorch_libtorch"
    python = CONFIG.replace('platform: "pytorch_libtorch"', 'backend: "python"')
    with pytest.raises(ModelRepositoryError, match="backend 'python', expected a platform"):
        ModelConfig.parse(python)


def test_writer_and_reader_round_trip() -> None:
    from modelbuild.export import model_config

    written = model_config("some-model")
    text = written.to_pbtxt()
    assert ModelConfig.parse(text) == written
    # What a Triton server would read: the real proto, field by field.
    message = pbtxt.parse(text, "config.pbtxt")
    assert message.max_batch_size == written.max_batch_size
    assert message.dynamic_batching.max_queue_delay_microseconds == written.max_queue_delay_us
    assert [d for d in message.input[0].dims] == list(written.inputs[0].dims)


def test_exported_config_is_what_the_writer_writes(model_repository: Path) -> None:
    from modelbuild.export import model_config

    assert resolve(model_repository, "image-classifier").config == model_config("image-classifier")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # A typo: Triton's schema has no such field (it used to parse, leaving the limit at 0).
        (
            ("max_batch_size: 16", "max_batch_sise: 16"),
            r'line 4: .*no field named "max_batch_sise"',
        ),
        (("max_batch_size: 16", 'max_batch_size: "16"'), r"line 4: .*Couldn't parse integer"),
        (("max_batch_size: 16", "max_batch_size: 0"), r"line 4: max_batch_size is 0, expected"),
        (("max_batch_size: 16", "max_batch_size: -2"), r"line 4: max_batch_size is -2"),
        (("TYPE_UINT8", "TYPE_UINT9"), r"line 5: .*no value named TYPE_UINT9"),
        (("TYPE_FP32", "TYPE_BF16"), r"line 8: output 'logits__0' has data_type TYPE_BF16"),
        (("224, 224, 3", "224, 0, 3"), r"line 5: input 'pixels__0' has dims \[224, 0, 3\]"),
        (
            ("max_queue_delay_microseconds: 1500", "max_queue_delay_microseconds: 1.5"),
            r"line 12: .*integer: 1.5",
        ),
        (('name: "image-classifier"', 'name: "a" name: "b"'), r"line 2: .*multiple \"name\""),
    ],
)
def test_config_mistakes_name_file_line_and_expectation(
    change: tuple[str, str], message: str
) -> None:
    text = CONFIG.replace(*change)
    assert text != CONFIG
    with pytest.raises(ModelRepositoryError, match=r"^/repo/m/config\.pbtxt " + message):
        ModelConfig.parse(text, "/repo/m/config.pbtxt")


def _repo(tmp_path: Path, versions: list[str]) -> Path:
    model = tmp_path / "image-classifier"
    model.mkdir()
    (model / "config.pbtxt").write_text(CONFIG)
    for version in versions:
        (model / version).mkdir()
        (model / version / "model.pt").write_bytes(b"x")
    return tmp_path


def test_newest_numeric_version_is_default(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1", "2", "10"])
    assert resolve(repo, "image-classifier").version == "10"
    assert resolve(repo, "image-classifier", "2").artifact == repo / "image-classifier/2/model.pt"
    # A storageUri may point at the model directory itself.
    assert resolve(repo / "image-classifier", "image-classifier").version == "10"


def test_missing_model_or_version_is_explained(tmp_path: Path) -> None:
    repo = _repo(tmp_path, ["1"])
    with pytest.raises(ModelRepositoryError, match=r"no config\.pbtxt for model 'other'"):
        resolve(repo, "other")
    with pytest.raises(ModelRepositoryError, match="not '3'"):
        resolve(repo, "image-classifier", "3")


def test_exported_repository_is_complete(model_repository: Path) -> None:
    version = resolve(model_repository, "image-classifier")
    labels = version.labels()
    assert len(labels) == 1000 and labels[967] == "espresso"
    params = Preprocessing.read(version.model_dir)
    assert (params.resize, params.crop, params.mean, params.std) == (
        256,
        224,
        (127.0,) * 3,
        (128.0,) * 3,
    )
    assert version.config.platform == "pytorch_libtorch"  # what Triton's PyTorch backend loads
    assert version.config.inputs[0].datatype == "UINT8"
