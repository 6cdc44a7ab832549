"""The model repository contract: a Triton-style directory that both components read.

    <repository>/<model>/config.pbtxt        tensor names, dtypes and dims (declared once)
    <repository>/<model>/labels.txt          one class name per line (Triton's label_filename)
    <repository>/<model>/preprocess.json     resize, crop, mean and std for the transformer
    <repository>/<model>/<version>/model.pt  TorchScript (platform pytorch_libtorch), or
    <repository>/<model>/<version>/model.onnx  ONNX (platform onnxruntime_onnx), or
    <repository>/<model>/<version>/model.xml   OpenVINO IR (backend openvino), as Triton has them

Everything else (the predictor's input checks, the transformer's output names, metadata) is
derived from what this module reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import pbtxt

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.pt"
TORCHSCRIPT_PLATFORM = "pytorch_libtorch"
ONNX_PLATFORM = "onnxruntime_onnx"
# Triton's OpenVINO backend has no platform name: configs say `backend: "openvino"`.
OPENVINO = "openvino"
# The config parameter naming the torch that exported a TorchScript model.pt (`python -m
# modelbuild torchscript` writes it): TorchScript files load in the same or a newer torch only,
# so the predictor refuses an older one at load with a message instead of failing inside
# torch.jit.load. Triton's PyTorch backend ignores parameters it does not know.
EXPORTED_WITH_TORCH = "exported_with_torch"
# Triton's default model file name per platform (`default_model_filename` overrides it).
PLATFORM_FILES = {
    TORCHSCRIPT_PLATFORM: MODEL_FILE,
    ONNX_PLATFORM: "model.onnx",
    OPENVINO: "model.xml",  # OpenVINO IR (model.bin beside it)
}
# Triton configs may name the backend instead of the platform; these say the same thing.
BACKEND_PLATFORMS = {
    "pytorch": TORCHSCRIPT_PLATFORM,
    "onnxruntime": ONNX_PLATFORM,
    OPENVINO: OPENVINO,
}

# Triton's TYPE_* names to the V2 protocol's datatype names.
TRITON_TO_V2 = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}
V2_TO_TRITON = {v2: triton for triton, v2 in TRITON_TO_V2.items()}
DATA_TYPES = pbtxt.model_config_pb2.DataType
# The V2 datatype names to numpy's (BYTES: Python objects, one bytes value each).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


def datatype_name(dtype: np.dtype[Any]) -> str | None:
    """The V2 datatype name of a numpy dtype (strings are BYTES), or None when V2 has none."""
    for name, candidate in NUMPY_DTYPES.items():
        if dtype == candidate:
            return name
    return "BYTES" if dtype.kind in "SU" else None


class ModelRepositoryError(ValueError):
    """The model repository is missing something or holds something malformed."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: V2 datatype and dims without the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    def batched_shape(self) -> list[int]:
        """The V2 metadata shape: a variable batch dimension (-1) before the declared dims."""
        return [-1, *self.dims]

    def metadata(self) -> dict[str, Any]:
        """The V2 model-metadata entry for this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": self.batched_shape()}

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this tensor's datatype."""
        return NUMPY_DTYPES[self.datatype]

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether `shape` (batch dimension first) matches the declared dims (-1: any size)."""
        return len(shape) == len(self.dims) + 1 and all(
            want in (-1, got) for want, got in zip(self.dims, shape[1:], strict=True)
        )

    def describe(self) -> str:
        """ "UINT8 [N, 224, 224, 3]": the datatype and the batched shape, for error messages."""
        dims = ", ".join(str(d) for d in self.dims)
        return f"{self.datatype} [N{', ' if dims else ''}{dims}]"


@dataclass(frozen=True)
class ModelConfig:
    """What config.pbtxt declares about one model: the one place its batching is decided.

    `max_batch_size` is the most images one request may carry, at the transformer and at the
    predictor alike, and the predictor's default forward-pass size; `max_queue_delay_us` is how
    long the predictor (and Triton's dynamic batcher) waits for a fuller batch.
    """

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_queue_delay_us: int
    label_filename: str | None
    backend: str = ""  # as config.pbtxt names it, when it names a backend, not a platform
    default_model_filename: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)  # Triton's string parameters

    @classmethod
    def parse(cls, text: str, source: str = CONFIG_FILE) -> ModelConfig:
        """Parse config.pbtxt text with Triton's ModelConfig proto and check what these servers
        need; raises ModelRepositoryError naming the file, the line and what was expected."""
        try:
            message = pbtxt.parse(text, source)
        except pbtxt.PbtxtError as exc:
            raise ModelRepositoryError(str(exc)) from exc

        def fail(field: str, problem: str, after: str | None = None) -> ModelRepositoryError:
            line = pbtxt.line_of(text, field, after)
            return ModelRepositoryError(f"{source}{f' line {line}' if line else ''}: {problem}")

        if not message.name:
            raise fail("name", 'missing required field "name"')
        if message.max_batch_size < 1:
            raise fail(
                "max_batch_size",
                f"max_batch_size is {message.max_batch_size}, expected an integer >= 1 (the most "
                "rows, e.g. images, per request; these servers always batch, so inputs have a "
                "batch dimension that dims leave out)",
            )

        def tensors(key: str, entries: Any) -> tuple[TensorSpec, ...]:
            specs = []
            for entry in entries:
                if not entry.name:
                    raise fail(key, f'each {key} needs a "name"')
                triton_type = DATA_TYPES.Name(entry.data_type)
                if triton_type not in TRITON_TO_V2:
                    raise fail(
                        "data_type",
                        f"{key} {entry.name!r} has data_type {triton_type}, expected one of "
                        f"{sorted(TRITON_TO_V2)}",
                        f'"{entry.name}"',
                    )
                if any(d < 1 and d != -1 for d in entry.dims):
                    raise fail(
                        "dims",
                        f"{key} {entry.name!r} has dims {list(entry.dims)}, expected sizes >= 1 "
                        "(or -1 for a variable size)",
                        f'"{entry.name}"',
                    )
                specs.append(TensorSpec(entry.name, TRITON_TO_V2[triton_type], tuple(entry.dims)))
            if not specs:
                raise fail(key, f"declares no {key}")
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise fail(key, f"{key} names repeat: {names}")
            return tuple(specs)

        platform = message.platform
        if not platform and message.backend:
            if message.backend not in BACKEND_PLATFORMS:
                raise fail(
                    "backend",
                    f"backend {message.backend!r}, expected a platform, or one of the backends "
                    f"{sorted(BACKEND_PLATFORMS)}",
                )
            platform = BACKEND_PLATFORMS[message.backend]
        labels = [o.label_filename for o in message.output if o.label_filename]
        return cls(
            name=message.name,
            platform=platform,
            max_batch_size=message.max_batch_size,
            inputs=tensors("input", message.input),
            outputs=tensors("output", message.output),
            max_queue_delay_us=message.dynamic_batching.max_queue_delay_microseconds,
            label_filename=labels[0] if labels else None,
            backend=message.backend if not message.platform else "",
            default_model_filename=message.default_model_filename,
            parameters={key: value.string_value for key, value in message.parameters.items()},
        )

    def to_pbtxt(self) -> str:
        """This configuration as config.pbtxt text (what `parse` reads back unchanged).

        One instance (KIND_AUTO): the predictor runs one model copy on one forward thread.
        """
        pb = pbtxt.model_config_pb2
        message = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        if self.backend:
            message.backend = self.backend
        else:
            message.platform = self.platform
        if self.default_model_filename:
            message.default_model_filename = self.default_model_filename
        for key, value in sorted(self.parameters.items()):
            message.parameters[key].string_value = value
        for spec in self.inputs:
            message.input.add(
                name=spec.name,
                data_type=DATA_TYPES.Value(V2_TO_TRITON[spec.datatype]),
                dims=spec.dims,
            )
        for index, spec in enumerate(self.outputs):
            output = message.output.add(
                name=spec.name,
                data_type=DATA_TYPES.Value(V2_TO_TRITON[spec.datatype]),
                dims=spec.dims,
            )
            if index == 0 and self.label_filename:
                output.label_filename = self.label_filename
        message.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us
        message.instance_group.add(kind=pb.ModelInstanceGroup.KIND_AUTO, count=1)
        return pbtxt.to_text(message)


@dataclass(frozen=True)
class ModelVersion:
    """A model resolved in a repository: its config, chosen version and side files."""

    model_dir: Path
    version: str
    config: ModelConfig

    @property
    def artifact(self) -> Path:
        """The model file of the chosen version: config.pbtxt's default_model_filename, else
        Triton's default for the platform (model.pt, model.onnx, model.xml)."""
        name = self.config.default_model_filename or PLATFORM_FILES[self.config.platform]
        return self.model_dir / self.version / name

    def labels(self) -> list[str]:
        """Class names in class-id order; raises ModelRepositoryError when the file is absent."""
        if self.config.label_filename is None:
            raise ModelRepositoryError(f"{self.model_dir / CONFIG_FILE} names no label_filename")
        path = self.model_dir / self.config.label_filename
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelRepositoryError(f"cannot read labels {path}: {exc}") from exc


def resolve(repository: Path | str, model_name: str, version: str | None = None) -> ModelVersion:
    """Find `model_name` in a repository and pick `version` (default: the newest numeric one).

    `repository` may also be the model's own directory (the one holding config.pbtxt), which is
    what a storageUri pointing at a single model mounts. Raises ModelRepositoryError saying what
    was looked for and what was found.
    """
    root = Path(repository)
    candidates = [root / model_name, root]
    model_dir = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
    if model_dir is None:
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no such directory"
        raise ModelRepositoryError(
            f"no {CONFIG_FILE} for model {model_name!r} in {root} or {root / model_name}; "
            f"found: {found}"
        )
    config = ModelConfig.parse(
        (model_dir / CONFIG_FILE).read_text(encoding="utf-8"), str(model_dir / CONFIG_FILE)
    )
    versions = sorted(
        (p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int
    )
    if version is None:
        if not versions:
            raise ModelRepositoryError(f"{model_dir} holds no numeric version directory")
        version = versions[-1]
    elif version not in versions:
        raise ModelRepositoryError(f"{model_dir} has versions {versions}, not {version!r}")
    if config.platform not in PLATFORM_FILES:
        raise ModelRepositoryError(
            f"{model_dir / CONFIG_FILE}: platform {config.platform!r}, expected one of "
            f"{sorted(PLATFORM_FILES)}"
        )
    resolved = ModelVersion(model_dir, version, config)
    if not resolved.artifact.is_file():
        raise ModelRepositoryError(f"missing model file {resolved.artifact}")
    return resolved
