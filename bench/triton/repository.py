"""The Triton model repository for the benchmark, written from our ONNX repository.

    <target>/<model>/config.pbtxt   backend "python"; our config's tensors, dims and batch limit
    <target>/<model>/labels.txt     copied (the output's label_filename)
    <target>/<model>/1/model.py     bench/triton/model.py, which runs our model.onnx in place

The tensor contract is read from our repository's config.pbtxt (`common.modelrepo`) and
written back unchanged; only what runs it differs: Triton's python backend, its dynamic
batcher (`dynamic_batching {}`, Triton's defaults) and one CPU instance. The ONNX file is
not copied: config.pbtxt's `onnx_file` parameter names it, so both servers load the same
file. The session options are our engine's (the spin duration is read from it); the thread
count is our predictor's default (`available_cpus()`) unless given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import pbtxt
from common.cpus import available_cpus
from common.modelrepo import CONFIG_FILE, DATA_TYPES, ONNX_PLATFORM, V2_TO_TRITON, resolve
from runtime.onnx_engine import SPIN_DURATION_US

from . import model

MODEL_SOURCE = Path(model.__file__)
BACKEND = "python"
VERSION = "1"


class TritonRepositoryError(ValueError):
    """The source repository is not one the Triton repository can be written from."""


def triton_config(source: Path, model_name: str, threads: int, max_queue_delay_us: int = 0) -> str:
    """config.pbtxt text for Triton's python backend serving `source`'s ONNX model (the
    batcher's delay: Triton's default, none, unless given); raises TritonRepositoryError when
    `source`'s model is not ONNX (ModelRepositoryError when it cannot be read)."""
    version = resolve(source, model_name)
    config = version.config
    if config.platform != ONNX_PLATFORM:
        raise TritonRepositoryError(
            f"{version.model_dir / CONFIG_FILE}: platform {config.platform!r}, expected "
            f"{ONNX_PLATFORM!r} (the Triton comparison runs our ONNX repository's file)"
        )
    if threads < 1:
        raise TritonRepositoryError(f"intra-op threads {threads}, expected at least 1")
    if max_queue_delay_us < 0:
        raise TritonRepositoryError(f"queue delay {max_queue_delay_us} us, expected >= 0")
    pb = pbtxt.model_config_pb2
    message = pb.ModelConfig(
        name=config.name, backend=BACKEND, max_batch_size=config.max_batch_size
    )
    for spec in config.inputs:
        message.input.add(
            name=spec.name, data_type=DATA_TYPES.Value(V2_TO_TRITON[spec.datatype]), dims=spec.dims
        )
    for index, spec in enumerate(config.outputs):
        output = message.output.add(
            name=spec.name, data_type=DATA_TYPES.Value(V2_TO_TRITON[spec.datatype]), dims=spec.dims
        )
        if index == 0 and config.label_filename:
            output.label_filename = config.label_filename
    # Triton's defaults: batch whatever is queued when the instance frees up, no added delay.
    message.dynamic_batching.SetInParent()
    if max_queue_delay_us:  # tests: requests sent together are batched together
        message.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    message.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=1)
    for key, value in (
        (model.ONNX_FILE, str(version.artifact.resolve())),
        (model.INTRA_OP_THREADS, str(threads)),
        (model.SPIN_DURATION_US, SPIN_DURATION_US),
    ):
        message.parameters[key].string_value = value
    return pbtxt.to_text(message)


def write_repository(
    source: Path,
    model_name: str,
    target: Path,
    threads: int | None = None,
    max_queue_delay_us: int = 0,
) -> Path:
    """Write the Triton repository for `source`'s ONNX model under `target` (replacing the
    model's directory there) and return `target`; raises TritonRepositoryError or
    ModelRepositoryError as `triton_config`."""
    count = available_cpus() if threads is None else threads
    text = triton_config(source, model_name, count, max_queue_delay_us)
    version = resolve(source, model_name)
    model_dir = target / model_name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / VERSION).mkdir(parents=True)
    (model_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    if version.config.label_filename:
        shutil.copyfile(
            version.model_dir / version.config.label_filename,
            model_dir / version.config.label_filename,
        )
    shutil.copyfile(MODEL_SOURCE, model_dir / VERSION / "model.py")
    return target
