"""The stock predictor: a kserve.Model with a synchronous `predict`, as KServe's docs teach.

    python -m bench.stock.predictor --model_dir REPO --model_name image-classifier \
        --http_port P --grpc_port Q

It takes FP32 [N, 3, 224, 224] normalised pixels (input "input-0") and runs the same TorchScript
artifact as the served predictor through its `forward_normalized` entry point, on the event
loop, one request at a time, with torch's default threads. No batching, no tuning.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch
from kserve import Model, ModelServer, model_server
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from common.modelrepo import resolve

from . import PREDICTOR_OUTPUT


class StockPredictor(Model):
    """Loads the TorchScript artifact and answers V2 requests synchronously."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model: Any = None

    def load(self) -> bool:
        """Load the TorchScript module on the CPU."""
        artifact = resolve(self.model_dir, self.name).artifact
        self.model = torch.jit.load(str(artifact), map_location="cpu").eval()
        self.ready = True
        return self.ready

    # kserve calls synchronous hooks directly (it inspects them), as the docs' examples rely on.
    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        """Logits FP32 [N, 1000] for FP32 [N, 3, 224, 224] normalised input."""
        batch = payload.inputs[0].as_numpy()
        with torch.no_grad():
            logits = self.model.forward_normalized(torch.from_numpy(batch)).numpy()
        output = InferOutput(name=PREDICTOR_OUTPUT, shape=list(logits.shape), datatype="FP32")
        output.set_data_from_numpy(np.ascontiguousarray(logits), binary_data=True)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=True,
        )


def main() -> int:
    """Parse kserve's flags plus --model_dir, load, serve."""
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="Model repository root.")
    args, _ = parser.parse_known_args()
    model = StockPredictor(args.model_name, args.model_dir)
    model.load()
    ModelServer().start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
