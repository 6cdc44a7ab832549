"""Named tensors and a model's tensor contract: what every engine takes and gives.

A model runs on `Tensors`, `{name: array}` with the batch dimension first, for the inputs and
outputs its config.pbtxt declares (as Triton's backends and PyTriton's bound functions do).
`Contract` is that declaration plus the model's batch limit: it checks a request's tensors
(names, datatypes, dims, one batch size) with errors that say what was received and what was
expected, and makes the zero tensors engines warm up with. Nothing here knows what the tensors
mean, and nothing imports kserve or torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.modelrepo import ModelConfig, TensorSpec, datatype_name

Tensors = dict[str, np.ndarray]


class EngineLoadError(RuntimeError):
    """An engine could not be built as configured (its file, its device, a self-check): the
    model must not become ready."""


class ContractError(ValueError):
    """A request's tensors are not what the model declares; the message says what differs."""


def rows_of(tensors: Mapping[str, np.ndarray]) -> int:
    """The batch size the tensors share; raises ContractError when there are none or they
    disagree."""
    sizes = {name: int(array.shape[0]) if array.ndim else 0 for name, array in tensors.items()}
    if not sizes:
        raise ContractError("no tensors")
    if len(set(sizes.values())) != 1:
        raise ContractError(f"the inputs' batch sizes differ: {sizes}; expected one batch size")
    return next(iter(sizes.values()))


@dataclass(frozen=True)
class Contract:
    """A model's declared inputs and outputs (from config.pbtxt) and its batch limit.

    `alternates` are other forms an input may take, when the model offers a second entrance
    for it (the image classifier takes normalised FP32 NCHW beside UINT8 NHWC pixels; see
    runtime/normalized.py). They are accepted by `check`, never advertised in metadata.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    alternates: Mapping[str, TensorSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, config: ModelConfig) -> Contract:
        """The contract config.pbtxt declares."""
        return cls(config.inputs, config.outputs, config.max_batch_size)

    @property
    def input_names(self) -> list[str]:
        """The declared input names, in config order."""
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The declared output names, in config order."""
        return [spec.name for spec in self.outputs]

    def check(self, tensors: Mapping[str, np.ndarray]) -> Tensors:
        """`tensors` if they are every declared input, each with its datatype and dims, all
        with one batch size from 1 to max_batch_size; raises ContractError saying what differs."""
        given, wanted = sorted(tensors), sorted(self.input_names)
        if given != wanted:
            unknown = [n for n in given if n not in wanted]
            missing = [n for n in wanted if n not in given]
            problems = [f"unknown {unknown}"] if unknown else []
            problems += [f"missing {missing}"] if missing else []
            raise ContractError(
                f"inputs {given}: {' and '.join(problems)}; expected "
                + ", ".join(f"{spec.name!r} {spec.describe()}" for spec in self.inputs)
            )
        for spec in self.inputs:
            self._check_one(spec, tensors[spec.name])
        rows = rows_of(tensors)
        if not 1 <= rows <= self.max_batch_size:
            raise ContractError(f"a batch of {rows}, expected 1 to {self.max_batch_size}")
        return dict(tensors)

    def _check_one(self, spec: TensorSpec, array: np.ndarray) -> None:
        forms = [spec] + ([self.alternates[spec.name]] if spec.name in self.alternates else [])
        if any(array.dtype == form.dtype and form.fits(array.shape) for form in forms):
            return
        expected = " or ".join(form.describe() for form in forms)
        if all(array.dtype != form.dtype for form in forms):
            received = f"datatype {array.dtype} ({datatype_name(array.dtype) or 'not V2'})"
        else:
            received = f"shape {list(array.shape)}"
        raise ContractError(f"input {spec.name!r}: {received}, expected {expected}")

    def zeros(self, rows: int) -> Tensors:
        """All-zero inputs of `rows` rows (a variable dimension taken as 1): for warm-up."""
        return {
            spec.name: np.full(
                (rows, *(max(d, 1) for d in spec.dims)),
                b"" if spec.datatype == "BYTES" else 0,
                dtype=spec.dtype,
            )
            for spec in self.inputs
        }

    def sample(self, rows: int, seed: int = 0) -> Tensors:
        """Inputs of `rows` rows with a different non-zero value in every element (a variable
        dimension taken as 1): for self-checks, where all-zero input would hide a wrong
        answer. Raises ContractError for BYTES inputs."""
        rng = np.random.default_rng(seed)
        sampled: Tensors = {}
        for spec in self.inputs:
            shape = (rows, *(max(d, 1) for d in spec.dims))
            if spec.datatype == "BYTES":
                raise ContractError(f"input {spec.name!r}: no sample of BYTES")
            if spec.datatype == "BOOL":
                sampled[spec.name] = np.ones(shape, dtype=bool)
            elif np.issubdtype(spec.dtype, np.integer):
                high = min(int(np.iinfo(spec.dtype).max), 255)
                sampled[spec.name] = rng.integers(1, high, shape, endpoint=True).astype(spec.dtype)
            else:
                sampled[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return sampled


class Runner(Protocol):
    """Runs batches: named input tensors in, named output tensors out, batch first and rows
    in the same order."""

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """The outputs for `inputs`."""
        ...


class Engine(Runner, Protocol):
    """A Runner for one model version; `contract` is what it was built for."""

    contract: Contract


def run_one(engine: Engine, array: np.ndarray) -> np.ndarray:
    """For a model of one input and one output (the image classifier): its output for
    `array`; raises ContractError for a model with more."""
    inputs, outputs = engine.contract.inputs, engine.contract.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ContractError(
            f"run_one needs one input and one output, the model has {len(inputs)} and "
            f"{len(outputs)}"
        )
    return engine.run({inputs[0].name: array})[outputs[0].name]


def split_rows(outputs: Mapping[str, np.ndarray], sizes: Sequence[int]) -> list[Tensors]:
    """Each request's rows of a batch's outputs, in order (`sizes`: each request's rows)."""
    parts: list[Tensors] = []
    start = 0
    for size in sizes:
        parts.append({name: array[start : start + size] for name, array in outputs.items()})
        start += size
    return parts
