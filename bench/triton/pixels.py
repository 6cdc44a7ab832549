"""Decoded pixels to a V2 gRPC endpoint (our predictor's or Triton's): the comparison's client.

Both servers take the same request: the model's declared input (UINT8 [1, 224, 224, 3] for
the image classifier) as raw tensor contents, answered with its declared output (the logits).
Images are decoded and preprocessed once, here, with the transformer's own functions
(`vision.imaging.preprocess`), and each request's input is built once, before the clock
starts. Imports tritonclient.grpc: never in a process with kserve.

    python -m bench.triton.pixels TARGET MODEL INPUT.npy OUTPUT.npy [--input NAME --output NAME]

sends each row of INPUT.npy as one request and writes the answers' rows to OUTPUT.npy (the
tests' gRPC client, which cannot run in pytest's process).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from common.modelrepo import ModelVersion
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

from ..load import REQUEST_TIMEOUT_S, Client


@dataclass(frozen=True)
class TensorNames:
    """The one input and the one output a pixels request uses."""

    input: str
    datatype: str
    output: str

    @classmethod
    def of(cls, version: ModelVersion) -> TensorNames:
        """The first declared input and output of a model repository's config."""
        config = version.config
        return cls(config.inputs[0].name, config.inputs[0].datatype, config.outputs[0].name)


def decode_all(images: Sequence[bytes], version: ModelVersion) -> list[np.ndarray]:
    """Each image as the model's pixels (the transformer's preprocessing); raises ImageError."""
    params = Preprocessing.read(version.model_dir)
    limits = DecodeLimits()  # the transformer's default
    return [preprocess(image, params, limits) for image in images]


def build_inputs(
    pixels: Sequence[np.ndarray], names: TensorNames
) -> list[list[grpcclient.InferInput]]:
    """One single-row input per image, serialised once."""
    inputs = []
    for array in pixels:
        tensor = grpcclient.InferInput(names.input, [1, *array.shape], names.datatype)
        tensor.set_data_from_numpy(array[None])
        inputs.append([tensor])
    return inputs


class PixelSender:
    """ModelInfer over gRPC with one image's pixels per request."""

    def __init__(
        self,
        target: str,
        model: str,
        inputs: Sequence[list[grpcclient.InferInput]],
        names: TensorNames,
    ) -> None:
        self._client = grpcclient.InferenceServerClient(target)
        self._model = model
        self._inputs = inputs
        self._outputs = [grpcclient.InferRequestedOutput(names.output)]
        self._output = names.output

    def logits(self, index: int) -> np.ndarray:
        """The declared output for image `index`; raises InferenceServerException, or
        RuntimeError when the answer lacks it."""
        result = self._client.infer(
            self._model,
            self._inputs[index],
            outputs=self._outputs,
            client_timeout=REQUEST_TIMEOUT_S,
        )
        array = result.as_numpy(self._output)
        if array is None:
            raise RuntimeError(f"the answer has no {self._output!r} output")
        return array

    def send(self, index: int) -> bool:
        """True for an answer that carries one row of the declared output."""
        try:
            return len(self.logits(index)) == 1
        except (InferenceServerException, RuntimeError):
            return False

    def top1(self, index: int) -> int:
        """The top class id for image `index` (a sanity check, not timed)."""
        return int(np.argmax(self.logits(index)[0]))

    def close(self) -> None:
        """Close the channel."""
        self._client.close()


def pixel_client(
    target: str, model: str, pixels: Sequence[np.ndarray], names: TensorNames
) -> Client:
    """A sender factory for bench.load.closed_loop; request inputs are built here, once."""
    inputs = build_inputs(pixels, names)
    return Client("v2-grpc pixels", lambda: PixelSender(target, model, inputs, names))


def main(argv: list[str] | None = None) -> int:
    """Send each row of an .npy file, write the answers' rows to another; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m bench.triton.pixels", description=__doc__)
    p.add_argument("target", help="host:port of a V2 gRPC endpoint")
    p.add_argument("model")
    p.add_argument("input", type=Path, help=".npy of rows, batch dimension first")
    p.add_argument("output", type=Path, help="where the answers' rows go (.npy)")
    p.add_argument("--input_name", default="pixels__0")
    p.add_argument("--datatype", default="UINT8")
    p.add_argument("--output_name", default="logits__0")
    args = p.parse_args(argv)
    rows = np.load(args.input)
    names = TensorNames(args.input_name, args.datatype, args.output_name)
    sender = PixelSender(args.target, args.model, build_inputs(list(rows), names), names)
    try:
        answers = [sender.logits(i)[0] for i in range(len(rows))]
    finally:
        sender.close()
    np.save(args.output, np.stack(answers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
