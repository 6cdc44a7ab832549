"""The transformer's kserve.Model: images in, UINT8 pixels to the predictor, top-k classes out.

The hooks hand each other explicit values: preprocess returns a PreparedBatch (the pixels plus
what postprocess needs to know), predict forwards the pixels over gRPC through the coalescer
(concurrent requests share one predictor call, `transformer.coalesce`) and returns a
ForwardedBatch, postprocess shapes the answer for the protocol the client used. kserve times
each hook (`request_preprocess_seconds`, `request_predict_seconds`, `request_postprocess_seconds`).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferRequest, InferResponse
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from common import codecs, ids, telemetry, tracing
from common.cpus import DECODE_NICENESS, lower_thread_priority
from common.modelrepo import CONFIG_FILE, ModelConfig, ModelRepositoryError, resolve
from groundtruth.schema import LOGGED_TOP_K
from vision.drift import (
    PROFILE_FILENAME,
    DriftMonitor,
    ReferenceProfile,
    input_statistics,
)
from vision.imaging import DecodeLimits, ImageError, decode
from vision.postprocess import top_k, v1_predictions
from vision.preprocessing import Preprocessing

from . import metrics
from .auth import without_credentials
from .coalesce import Coalescer
from .drift_metrics import DriftCollector
from .ground_truth import GroundTruth, image_digest
from .settings import TransformerSettings
from .upstream import PredictorLink

logger = logging.getLogger(__name__)

IMAGE_INPUT = "image"
OUTPUT_CLASS_ID, OUTPUT_LABEL, OUTPUT_SCORE = "class_id", "label", "score"
TOP_K_PARAMETER = "top_k"
# What model metadata says the transformer is (the protocol's "<project>_<format>"): a KServe
# transformer, whatever engine the predictor behind it runs.
TRANSFORMER_PLATFORM = "kserve_transformer"
# One row of a V1 body, as error messages show it.
V1_IMAGE_EXAMPLE = '{"image": {"b64": "<base64 image>"}}'


@dataclass(frozen=True)
class PreparedBatch:
    """What preprocess hands predict: the pixels and how to answer the client."""

    pixels: np.ndarray  # UINT8 [N, H, W, 3]
    protocol: str  # "v1" or "v2"
    top_k: int
    response_id: str
    request_id: str  # sent to the predictor as x-request-id and as the V2 id
    statistics: np.ndarray  # per image, the drift module's INPUT_SIGNALS
    digests: tuple[str, ...]  # per image, its file's SHA-256 (only with the prediction log)


@dataclass(frozen=True)
class Answer:
    """The predictor's logits for some images and the model version that computed them (a
    canary and the stable version may answer the same transformer)."""

    logits: np.ndarray  # [N, classes], checked
    model_version: str

    def __getitem__(self, rows: slice) -> Answer:
        return Answer(self.logits[rows], self.model_version)


class Caller(NamedTuple):
    """What a request hands the coalescer with its pixels: its id, the headers to forward and
    its trace context (None with tracing off)."""

    request_id: str
    headers: dict[str, str] | None
    trace: Context | None


@dataclass(frozen=True)
class ForwardedBatch:
    """What predict hands postprocess: the predictor's answer for a prepared batch."""

    answer: Answer
    batch: PreparedBatch

    @property
    def logits(self) -> np.ndarray:
        return self.answer.logits


class ImageClassifierTransformer(Model):
    """Serves image classification over V1 and V2 in front of a V2 gRPC predictor."""

    def __init__(self, settings: TransformerSettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.repository_version = ""  # the version directory, set by load()
        self._pool = ThreadPoolExecutor(
            settings.decode_workers,
            thread_name_prefix="decode",
            initializer=lower_thread_priority,
            initargs=(DECODE_NICENESS,),
        )
        self._drift_metrics: DriftCollector | None = None  # registered by load()
        self.ground_truth: GroundTruth | None = None  # set by __main__ with --prediction_log_db
        self.predictor = PredictorLink(
            settings.predictor.predictor_host,
            settings.model_name,
            settings.predictor.predictor_request_timeout_seconds,
        )

    platform = TRANSFORMER_PLATFORM  # what model metadata says this is

    @property
    def versions(self) -> list[str]:
        """The versions served: the repository version whose labels and preprocessing it uses."""
        return [self.repository_version] if self.repository_version else []

    def load(self) -> bool:
        """Read labels, preprocessing and tensor names from the model repository."""
        version = resolve(self.settings.model_dir, self.settings.model_name)
        self.repository_version = version.version
        self.params = Preprocessing.read(version.model_dir)
        self.labels = np.array(version.labels(), dtype=np.object_)
        self.pixel_input = version.config.inputs[0]
        self.logits_output = version.config.outputs[0]
        config = version.config
        self.max_images = within_batch_limit("--max_images", self.settings.max_images, config)
        self.limits = DecodeLimits(max_pixels=self.settings.max_image_pixels)
        self.coalescer = Coalescer(
            self._forward,
            within_batch_limit("--coalesce_max_images", self.settings.coalesce_max_images, config),
            self.settings.coalesce_delay_ms / 1000,
        )
        self.drift = self._drift_monitor(version.model_dir / PROFILE_FILENAME)
        if self._drift_metrics is not None:  # loaded again in this process
            REGISTRY.unregister(self._drift_metrics)
        self._drift_metrics = DriftCollector(self.drift)
        REGISTRY.register(self._drift_metrics)
        self.ready = True
        return self.ready

    def _drift_monitor(self, path: Path) -> DriftMonitor:
        s = self.settings
        profile = ReferenceProfile.load(path) if path.is_file() else None
        monitor = DriftMonitor(profile, s.drift_window, s.drift_min_count, s.drift_learn_first)
        if profile is not None:
            logger.info("drift reference: %s (%s, %d images)", path, profile.source, profile.count)
        elif monitor.enabled:
            logger.info(
                "drift reference: none at %s; learning it from the first %d images served",
                path,
                s.drift_learn_first,
            )
        else:
            logger.info(
                "drift signals off: no %s (write one with python -m modelbuild drift-reference, "
                "or pass --drift_reference_images N)",
                path,
            )
        return monitor

    def drift_report(self, model_name: str) -> dict[str, Any]:
        """GET /v2/models/<name>/drift: the window's scores, thresholds and counts; raises
        ModelNotFound for another name."""
        if model_name != self.name:
            raise ModelNotFound(model_name)
        return {"model_name": self.name, "enabled": self.drift.enabled, **self.drift.report()}

    def stop(self) -> None:
        """Release the decode threads and the drift gauges; write what the prediction log
        holds."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.ground_truth is not None:
            self.ground_truth.close()
            self.ground_truth = None
        if self._drift_metrics is not None:
            REGISTRY.unregister(self._drift_metrics)
            self._drift_metrics = None
        super().stop()

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata: one BYTES element per encoded image file."""
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        """V2 metadata: top-k class ids, labels and softmax scores per image."""
        return [
            {"name": OUTPUT_CLASS_ID, "datatype": "INT64", "shape": [-1, -1]},
            {"name": OUTPUT_LABEL, "datatype": "BYTES", "shape": [-1, -1]},
            {"name": OUTPUT_SCORE, "datatype": "FP32", "shape": [-1, -1]},
        ]

    async def preprocess(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> PreparedBatch:
        """Decode every image of a V1 or V2 request (in the decode pool); raises InvalidInput."""
        if isinstance(payload, InferRequest):
            images, parameters = self._v2_images(payload), payload.parameters
            request_id = ids.adopt_v2_id(payload.id)
            protocol, response_id = "v2", payload.id or request_id
        elif isinstance(payload, dict):
            images, parameters = self._v1_images(payload), payload.get("parameters")
            request_id = ids.adopt_v2_id(None)
            protocol, response_id = "v1", request_id
        else:
            raise InvalidInput(
                f"expected a JSON object, got {type(payload).__name__}: send "
                'Content-Type: application/json with {"instances": [...]}'
            )
        k = self._top_k(parameters)
        if not 1 <= len(images) <= self.max_images:
            raise InvalidInput(
                f"{len(images)} images in one request, expected 1 to {self.max_images}"
            )
        with telemetry.span("preprocess", {telemetry.IMAGES: len(images)}):
            pixels, statistics, digests = await self._decode_all(images)
        return PreparedBatch(pixels, protocol, k, response_id, request_id, statistics, digests)

    async def predict(
        self,
        payload: PreparedBatch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> ForwardedBatch:
        """Forward the pixels to the predictor (through the coalescer); its errors become 400,
        503, 504 or 500 here."""
        # kserve forwards an incoming Authorization header; the client's key stays here.
        tag = Caller(payload.request_id, without_credentials(headers), telemetry.current())
        answer = await self.coalescer.submit(payload.pixels, tag)
        return ForwardedBatch(answer, payload)

    async def postprocess(
        self,
        result: ForwardedBatch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Top-k classes per image, shaped for the protocol the client used."""
        with telemetry.span("postprocess", {telemetry.IMAGES: result.logits.shape[0]}):
            return self._answer(result)

    def _answer(self, result: ForwardedBatch) -> dict[str, Any] | InferResponse:
        batch = result.batch
        class_ids, scores = top_k(result.logits, batch.top_k)
        if self.drift.enabled:
            top1 = scores[:, :1].astype(np.float64)
            self.drift.record(np.hstack([batch.statistics, top1]), class_ids[:, 0])
        if self.ground_truth is not None:
            logged_ids, logged_scores = (
                (class_ids, scores)
                if batch.top_k >= LOGGED_TOP_K
                else top_k(result.logits, LOGGED_TOP_K)
            )
            self.ground_truth.record(
                batch.request_id,
                batch.digests,
                logged_ids,
                logged_scores,
                self.labels,
                # The version that answered (a canary's, during a canary), else this one.
                result.answer.model_version or self.repository_version,
            )
        if batch.protocol == "v1":
            return {"predictions": v1_predictions(class_ids, scores, self.labels)}
        return InferResponse(
            response_id=batch.response_id,
            model_name=self.name,
            infer_outputs=[
                codecs.numpy_output(OUTPUT_CLASS_ID, class_ids),
                codecs.numpy_output(OUTPUT_LABEL, self.labels[class_ids]),
                codecs.numpy_output(OUTPUT_SCORE, scores),
            ],
            use_binary_outputs=True,
        )

    def _v2_images(self, request: InferRequest) -> list[bytes | str]:
        names = [t.name for t in request.inputs]
        if names != [IMAGE_INPUT]:
            raise InvalidInput(
                f'expected one input named "{IMAGE_INPUT}" (BYTES, one encoded image file per '
                f"element), got {names}"
            )
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f'input "{IMAGE_INPUT}": datatype {tensor.datatype}, expected BYTES')
        return list(codecs.input_to_numpy(tensor).ravel())

    @staticmethod
    def _v1_images(payload: dict[str, Any]) -> list[bytes | str]:
        instances = codecs.v1_instances(payload, V1_IMAGE_EXAMPLE)
        images: list[bytes | str] = []
        for index, instance in enumerate(instances):
            image = instance.get("image", instance) if isinstance(instance, dict) else None
            encoded = image.get("b64") if isinstance(image, dict) else None
            if not isinstance(encoded, str):
                raise InvalidInput(
                    f"instance {index}: expected {V1_IMAGE_EXAMPLE}, got {str(instance)[:80]}"
                )
            images.append(encoded)
        return images

    def _top_k(self, parameters: Any) -> int:
        value = codecs.parameter(parameters, TOP_K_PARAMETER)
        if value is None:
            return self.settings.default_top_k
        limit = len(self.labels)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise InvalidInput(f"parameter top_k is {value!r}, expected an integer 1 to {limit}")
        return value

    async def _decode_all(
        self, images: list[bytes | str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Pixels [N, crop, crop, 3], the drift input statistics [N, 6] and the SHA-256 (with
        the prediction log, else "") of every image."""
        loop = asyncio.get_running_loop()
        metrics.DECODE_QUEUE_DEPTH.inc(len(images))
        jobs = [
            loop.run_in_executor(self._pool, self._decode_one, index, image, len(images))
            for index, image in enumerate(images)
        ]
        decoded = await asyncio.gather(*jobs)
        return (
            np.stack([p for p, _, _ in decoded]),
            np.array([s for _, s, _ in decoded]),
            tuple(d for _, _, d in decoded),
        )

    def _decode_one(
        self, index: int, image: bytes | str, count: int
    ) -> tuple[np.ndarray, tuple[float, ...], str]:
        where = f"image {index}" if count == 1 else f"image {index} of {count}"
        try:
            data = _b64decode(image) if isinstance(image, str) else image
            metrics.IMAGE_BYTES.observe(len(data))
            result = decode(data, self.params, self.limits)
        except ImageError as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
        except InvalidInput as exc:  # the base64 text
            raise InvalidInput(f"{where}: {exc.reason}") from exc
        finally:
            metrics.DECODE_QUEUE_DEPTH.dec()
        metrics.IMAGE_PIXELS.observe(result.width * result.height)
        metrics.IMAGES_DECODED.labels(result.format).inc()
        statistics = (
            input_statistics(result.pixels, result.width, result.height, len(data))
            if self.drift.enabled
            else ()
        )
        digest = image_digest(data) if self.ground_truth is not None else ""
        return result.pixels, statistics, digest

    async def _forward(self, pixels: np.ndarray, tags: Sequence[Caller]) -> Answer:
        """One predictor call (the coalescer's `send`): pixels in, checked logits and the
        answering version out. A call for one request carries its id and forwardable headers;
        a call shared by several carries their ids joined by commas (so the predictor's log
        lines name every request in it). With tracing on, the call is a client span, child of
        the first request's span and linked to every request's, whose context travels to the
        predictor in `traceparent`."""
        if len(tags) == 1:
            request_id, headers = tags[0].request_id, dict(tags[0].headers or {})
        else:
            request_id, headers = tracing.join_ids(tags), {}
        headers[tracing.REQUEST_ID_HEADER] = request_id
        request = InferRequest(
            model_name=self.name,
            infer_inputs=[codecs.numpy_input(self.pixel_input.name, pixels)],
            request_id=request_id,
        )
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": "ModelInfer",
            "server.address": self.predictor.target,
            telemetry.MODEL_NAME: self.name,
            telemetry.IMAGES: pixels.shape[0],
            telemetry.REQUEST_IDS: [tag.request_id for tag in tags],
        }
        trace: dict[str, str] = {}
        with telemetry.shared_span(
            "predictor ModelInfer",
            SpanKind.CLIENT,
            [tag.trace for tag in tags],
            attributes,
            trace,
        ) as span:
            response = await self.predictor.infer(request, headers, trace)
            if span is not None and response.model_version:
                span.set_attribute(telemetry.MODEL_VERSION, response.model_version)
        return Answer(self._logits(response, pixels.shape[0]), response.model_version or "")

    def _logits(self, response: InferResponse, count: int) -> np.ndarray:
        output = response.get_output_by_name(self.logits_output.name)
        if output is None:
            names = [o.name for o in response.outputs]
            raise InferenceError(
                f"the predictor answered outputs {names}, expected {self.logits_output.name!r}"
            )
        logits = codecs.output_to_numpy(output)
        if logits.ndim != 2 or logits.shape[0] != count:
            raise InferenceError(
                f"the predictor answered logits of shape {list(logits.shape)} for {count} images"
            )
        return logits


def within_batch_limit(flag: str, value: int | None, config: ModelConfig) -> int:
    """An image count limit: the config's max_batch_size, or the smaller `value` of `flag`.

    Raises ModelRepositoryError for a larger one: the predictor refuses requests of more than
    max_batch_size images, so the transformer must never accept or send them.
    """
    if value is None:
        return config.max_batch_size
    if value > config.max_batch_size:
        raise ModelRepositoryError(
            f"{flag} {value} exceeds max_batch_size {config.max_batch_size} in "
            f"{CONFIG_FILE}: the predictor refuses requests of more images than that"
        )
    return value


def _b64decode(text: str) -> bytes:
    # binascii reads an ASCII str in place; base64.b64decode would first copy it to bytes.
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"invalid base64 ({len(text)} characters): {exc}") from exc
