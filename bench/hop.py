"""Bytes per image on the transformer -> predictor hop, measured on the gRPC messages themselves.

    python -m bench.hop --model_dir REPO --image FILE

Builds the predictor request for one image exactly as each transformer builds it (ours: UINT8
pixels through `common.codecs.numpy_input`; the stock peer: FP32 NCHW through
`bench.stock.transformer.to_infer_request`), converts it with kserve's `InferRequest.to_grpc()`
(what kserve's gRPC client sends) and prints `ModelInferRequest.ByteSize()` as JSON. Runs in its
own process because it imports kserve.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

from kserve.protocol.infer_type import InferRequest

from common import codecs
from common.cli import DEFAULT_MODEL_NAME
from common.modelrepo import resolve
from vision.imaging import DecodeLimits, preprocess
from vision.preprocessing import Preprocessing

from .stock.transformer import image_transform, to_infer_request


def measure(model_dir: Path, model_name: str, image: Path) -> dict[str, int]:
    """Serialised request sizes for one image, ours and the peer's, plus the bare tensors."""
    version = resolve(model_dir, model_name)
    params = Preprocessing.read(version.model_dir)
    data = image.read_bytes()
    request_id = str(uuid.uuid4())  # both transformers send an id of this length

    pixels = preprocess(data, params, DecodeLimits())[None]
    ours = InferRequest(
        model_name=model_name,
        infer_inputs=[codecs.numpy_input(version.config.inputs[0].name, pixels)],
        request_id=request_id,
    )
    normalised = image_transform(data, params)[None]
    peer = to_infer_request(normalised, model_name, request_id)
    return {
        "served_bytes": ours.to_grpc().ByteSize(),
        "peer_bytes": peer.to_grpc().ByteSize(),
        "served_tensor_bytes": pixels.nbytes,
        "peer_tensor_bytes": normalised.nbytes,
    }


def main() -> int:
    """Print the hop sizes as one JSON object on stdout."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--image", type=Path, required=True)
    args = p.parse_args()
    json.dump(measure(args.model_dir, args.model_name, args.image), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
