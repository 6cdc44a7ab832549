"""The model repository contract: config.pbtxt parsing and version resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import pbtxt
from common.modelrepo import ModelConfig, ModelRepositoryError, TensorSpec, resolve

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


def test_pbtxt_keeps_repeated_fields_and_nesting() -> None:
    message = pbtxt.parse('a: 1 a: 2 b { c: "x\\"y" d: [1.5, -2] } e: true')
    assert message == {"a": [1, 2], "b": [{"c": ['x"y'], "d": [1.5, -2]}], "e": [True]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "m" input [ { name: "x" data_type: TYPE_WHAT dims: [1] } ]', "TYPE_WHAT"),
        ('name: "m" input [ { name: "x" data_type: TYPE_FP32 ', "end of text"),
        ("platform: 'x'", "'name'"),
        ('name: "m" output [ { name: "y" data_type: TYPE_FP32 } ]', "declares no input"),
    ],
)
def test_malformed_config_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ModelRepositoryError, match=message):
        ModelConfig.parse(text)


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
    params = version.preprocessing()
    assert (params.resize, params.crop, params.mean, params.std) == (
        256,
        224,
        (127.0,) * 3,
        (128.0,) * 3,
    )
    assert version.config.platform == "pytorch_libtorch"  # what Triton's PyTorch backend loads
    assert version.config.inputs[0].datatype == "UINT8"
