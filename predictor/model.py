"""The predictor's kserve.Model: request tensors in, logits out, through the adaptive batcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import torch
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from common import admission, codecs, tracing
from common.modelrepo import ModelRepositoryError, ModelVersion, TensorSpec, resolve

from . import metrics
from .batcher import AdaptiveBatcher, BatcherClosed, DeadlineExpired, QueueFull
from .engines import build_engine, describe, plan_engine
from .settings import PredictorSettings
from .worker import Engine, ForwardWorker

logger = logging.getLogger(__name__)


def check_pixels(array: np.ndarray, spec: TensorSpec, max_batch_size: int) -> np.ndarray:
    """Accept UINT8 [N, H, W, C] pixels or normalised FP32 [N, C, H, W]; raises InvalidInput."""
    height, width, channels = spec.dims
    expected = {
        np.dtype(np.uint8): ("UINT8", (height, width, channels)),
        np.dtype(np.float32): ("FP32", (channels, height, width)),
    }
    accepted = (
        f"UINT8 [N, {height}, {width}, {channels}] RGB pixels or "
        f"FP32 [N, {channels}, {height}, {width}] normalised"
    )
    if array.dtype not in expected:
        raise InvalidInput(f"input {spec.name!r}: datatype {array.dtype}, expected {accepted}")
    _, dims = expected[array.dtype]
    if array.ndim != 4 or array.shape[1:] != dims:
        raise InvalidInput(f"input {spec.name!r}: shape {list(array.shape)}, expected {accepted}")
    if not 1 <= array.shape[0] <= max_batch_size:
        raise InvalidInput(
            f"input {spec.name!r}: batch of {array.shape[0]}, expected 1 to {max_batch_size}"
        )
    return array


async def forward_in_passes(
    batcher: AdaptiveBatcher, array: np.ndarray, deadline: float | None = None
) -> np.ndarray:
    """Results for every row of `array`, split across forward passes when a pass takes fewer;
    raises what AdaptiveBatcher.submit raises."""
    size = batcher.max_batch_size
    if len(array) <= size:
        return await batcher.submit(array, deadline)
    parts = [batcher.submit(array[i : i + size], deadline) for i in range(0, len(array), size)]
    return np.concatenate(await asyncio.gather(*parts))


def v1_pixels(payload: Any) -> np.ndarray:
    """The pixel array of a V1 {"instances": [...]} (or {"inputs": [...]}) body; raises
    InvalidInput."""
    instances = codecs.v1_instances(payload, "<pixel array [H, W, 3]>")
    try:
        array = np.asarray(instances)
    except ValueError as exc:
        raise InvalidInput(f"instances are not arrays of one shape: {exc}") from exc
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInput("integer instances must be pixel values from 0 to 255")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise InvalidInput(
        f"instances must be numbers (UINT8 pixels or FP32 normalised), got {array.dtype}"
    )


def timed_forward(
    run: Callable[[np.ndarray], Awaitable[np.ndarray]],
) -> Callable[[np.ndarray], Awaitable[np.ndarray]]:
    """`run`, observing each pass's duration in predictor_forward_seconds."""

    async def forward(inputs: np.ndarray) -> np.ndarray:
        with metrics.FORWARD_SECONDS.time():
            return await run(inputs)

    return forward


class ImageClassifierPredictor(Model):
    """Serves one model version from a model repository over V1, V2 REST and V2 gRPC."""

    def __init__(self, settings: PredictorSettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.version: ModelVersion | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.worker: ForwardWorker[Engine] | None = None

    @property
    def platform(self) -> str:
        """What model metadata says this is: the config's platform (onnxruntime_onnx, ...)."""
        return self.version.config.platform if self.version else ""

    @property
    def versions(self) -> list[str]:
        """The versions served: the one loaded."""
        return [self.version.version] if self.version else []

    def load(self) -> bool:
        """Load the artifact on its device and warm it up; ready only after that."""
        s = self.settings
        self.version = resolve(s.model_dir, s.model_name, s.model_version)
        config = self.version.config
        self.input_spec, self.output_spec = config.inputs[0], config.outputs[0]
        if len(self.input_spec.dims) != 3 or self.input_spec.datatype != "UINT8":
            raise ModelRepositoryError(
                f"{self.version.model_dir}: input {self.input_spec.name!r} is "
                f"{self.input_spec.datatype} {list(self.input_spec.dims)}, expected UINT8 "
                "[height, width, channels] pixels"
            )
        plan = plan_engine(
            config.platform,
            s.device,
            s.precision,
            s.cuda_graphs,
            s.num_threads,
            torch.cuda.is_available(),
        )
        # config.pbtxt decides; a flag given on the command line overrides the forward-pass size
        # only. A request may carry up to config.max_batch_size images whatever the flag says
        # (the transformer reads the same limit); a larger one than a pass takes is split.
        self.max_request_images = config.max_batch_size
        max_batch = s.max_batch_size or config.max_batch_size
        delay_ms = (
            s.max_batch_delay_ms
            if s.max_batch_delay_ms is not None
            else config.max_queue_delay_us / 1000
        )
        version = self.version
        self.worker = ForwardWorker(lambda: build_engine(version, plan, max_batch))
        # Always room for one full request (it may be split into several passes).
        queue_size = max(s.max_queue_size, max_batch, self.max_request_images)
        self.batcher = AdaptiveBatcher(
            timed_forward(self.worker.run), max_batch, delay_ms / 1000, queue_size
        )
        batcher = self.batcher
        metrics.QUEUE_DEPTH.set_function(lambda: batcher.queued_images)
        logger.info(
            "loaded %s version %s: %s, max batch %d, delay %.1f ms, queue %d images",
            s.model_name,
            version.version,
            describe(version, plan, self.worker.engine),
            max_batch,
            delay_ms,
            queue_size,
        )
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Release the forward thread."""
        if self.batcher is not None:
            self.batcher.close()
        if self.worker is not None:
            self.worker.close()
        super().stop()

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata: the input declared in config.pbtxt."""
        return [self.input_spec.metadata()]

    def get_output_types(self) -> list[dict[str, Any]]:
        """V2 metadata: the output declared in config.pbtxt."""
        return [self.output_spec.metadata()]

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Logits for a V1 {"instances": ...} body or a V2 request; raises InvalidInput."""
        batcher = self.batcher
        if batcher is None:
            raise ModelNotReady(self.name)
        if isinstance(payload, InferRequest):
            array = self._v2_input(payload)
        else:
            array = v1_pixels(payload)
        pixels = check_pixels(array, self.input_spec, self.max_request_images)
        logits = await self._run(batcher, pixels)
        if not isinstance(payload, InferRequest):
            return {"predictions": logits}
        return InferResponse(
            response_id=tracing.adopt_v2_id(payload.id),
            model_name=self.name,
            infer_outputs=[codecs.numpy_output(self.output_spec.name, logits)],
            use_binary_outputs=True,
        )

    @staticmethod
    async def _run(batcher: AdaptiveBatcher, pixels: np.ndarray) -> np.ndarray:
        """The logits for `pixels` from some batch; refusals become 503 and 504 errors."""
        try:
            return await forward_in_passes(batcher, pixels, admission.deadline())
        except QueueFull as exc:
            raise admission.Overloaded(f"the predictor is at capacity: {exc}") from exc
        except BatcherClosed as exc:
            raise admission.Unavailable(f"the predictor is stopping: {exc}") from exc
        except DeadlineExpired as exc:
            raise admission.DeadlinePassed(str(exc)) from exc

    def _v2_input(self, request: InferRequest) -> np.ndarray:
        names = [t.name for t in request.inputs]
        if names != [self.input_spec.name]:
            raise InvalidInput(f"expected one input named {self.input_spec.name!r}, got {names}")
        return codecs.input_to_numpy(request.inputs[0])
