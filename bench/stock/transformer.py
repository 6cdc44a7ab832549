"""The stock transformer: a kserve.Model with synchronous pre- and postprocess, as KServe's docs
teach, forwarding FP32 NCHW tensors to the predictor over V2 gRPC.

    python -m bench.stock.transformer --model_dir REPO --model_name image-classifier \
        --predictor_host 127.0.0.1:Q --predictor_protocol grpc-v2 --http_port P --grpc_port R

preprocess: base64 (V1) or raw BYTES (V2) -> full Pillow decode -> resize(256) -> centre crop
-> normalise in numpy -> FP32 [N, 3, 224, 224] "input-0". postprocess: softmax top-5, V1
{"predictions": ...} or a V2 InferResponse with binary outputs.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from typing import Any

import numpy as np
from kserve import Model, ModelServer, model_server
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from PIL import Image

from common.modelrepo import resolve
from vision.preprocessing import Preprocessing

from . import PREDICTOR_INPUT

TOP_K = 5
REQUEST_TYPE_HEADER = "request-type"  # the docs' way to remember a V1 request for postprocess


def image_transform(data: bytes, params: Preprocessing) -> np.ndarray:
    """Encoded image -> normalised FP32 [3, crop, crop]: full decode, resize, centre crop."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = params.resize / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    width, height = image.size
    left, top = (width - params.crop) // 2, (height - params.crop) // 2
    image = image.crop((left, top, left + params.crop, top + params.crop))
    pixels = np.asarray(image, dtype=np.float32)
    normalised = (pixels - np.array(params.mean, np.float32)) / np.array(params.std, np.float32)
    return normalised.transpose(2, 0, 1)


def to_infer_request(batch: np.ndarray, model_name: str, request_id: str | None) -> InferRequest:
    """The predictor request: one FP32 binary input named "input-0"."""
    infer_input = InferInput(name=PREDICTOR_INPUT, shape=list(batch.shape), datatype="FP32")
    infer_input.set_data_from_numpy(batch, binary_data=True)
    return InferRequest(model_name=model_name, infer_inputs=[infer_input], request_id=request_id)


class StockTransformer(Model):
    """Decodes images synchronously and forwards FP32 tensors to the predictor."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        version = resolve(model_dir, name)
        self.params = Preprocessing.read(version.model_dir)
        self.labels = version.labels()
        self.ready = True

    def preprocess(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> InferRequest:
        """Decode every image of the request into one FP32 NCHW batch."""
        if isinstance(payload, InferRequest):
            images = [bytes(item) for item in payload.inputs[0].as_numpy().ravel()]
            request_id = payload.id
        else:
            if headers is not None:
                headers[REQUEST_TYPE_HEADER] = "v1"
            images = [base64.b64decode(i["image"]["b64"]) for i in payload["instances"]]
            request_id = None
        batch = np.stack([image_transform(data, self.params) for data in images])
        return to_infer_request(batch, self.name, request_id)

    def postprocess(
        self,
        infer_response: InferResponse,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Softmax top-5 per image, as V1 predictions or a V2 response."""
        logits = infer_response.outputs[0].as_numpy()
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        class_ids = np.argsort(-probabilities, axis=1)[:, :TOP_K].astype(np.int64)
        scores = np.take_along_axis(probabilities, class_ids, axis=1).astype(np.float32)
        if headers is not None and headers.get(REQUEST_TYPE_HEADER) == "v1":
            return {
                "predictions": [
                    [
                        {"class_id": int(c), "label": self.labels[c], "score": float(s)}
                        for c, s in zip(ids, row, strict=True)
                    ]
                    for ids, row in zip(class_ids, scores, strict=True)
                ]
            }
        labels = np.array(
            [[self.labels[c].encode() for c in ids] for ids in class_ids], dtype=np.object_
        )
        outputs = []
        for name, datatype, array in (
            ("class_id", "INT64", class_ids),
            ("label", "BYTES", labels),
            ("score", "FP32", scores),
        ):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=infer_response.id,
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=True,
        )


def main() -> int:
    """Parse kserve's flags plus --model_dir, serve (predictor host and protocol are kserve's)."""
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="Model repository root.")
    args, _ = parser.parse_known_args()
    ModelServer().start([StockTransformer(args.model_name, args.model_dir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
