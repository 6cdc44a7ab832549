"""The predictor's kserve.Model: the declared tensors in, the declared tensors out, through the
adaptive batcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from common import admission, codecs, ids, pacing, telemetry
from common.modelrepo import ModelVersion, resolve
from runtime.engines import (
    build_engine,
    cuda_info,
    describe,
    engine_name,
    plan_engine,
)
from runtime.tensors import Contract, ContractError, Engine, Tensors, rows_of
from runtime.worker import ForwardWorker

from . import metrics
from .batcher import AdaptiveBatcher, BatcherClosed, DeadlineExpired, QueueFull
from .settings import PredictorSettings

logger = logging.getLogger(__name__)


async def forward_in_passes(
    batcher: AdaptiveBatcher, inputs: Tensors, deadline: float | None = None
) -> Tensors:
    """Outputs for every row of `inputs`, split across forward passes when a pass takes fewer
    rows; raises what AdaptiveBatcher.submit raises."""
    size, rows = batcher.max_batch_size, rows_of(inputs)
    if rows <= size:
        return await batcher.submit(inputs, deadline)
    refused = batcher.refusal(rows)  # all of it or none: no pass run for a refused request
    if refused is not None:
        raise QueueFull(refused)
    parts = [
        batcher.submit(
            {name: array[i : i + size] for name, array in inputs.items()}, deadline, admitted=True
        )
        for i in range(0, rows, size)
    ]
    done = await asyncio.gather(*parts)
    return {name: np.concatenate([part[name] for part in done]) for name in done[0]}


def timed_forward(
    run: Callable[[Tensors], Awaitable[Tensors]],
) -> Callable[[Tensors], Awaitable[Tensors]]:
    """`run`, observing each pass's duration in predictor_forward_seconds."""

    async def forward(inputs: Tensors) -> Tensors:
        with metrics.FORWARD_SECONDS.time():
            return await run(inputs)

    return forward


class RepositoryModel(Model):
    """Serves one model version from a model repository over V1, V2 REST and V2 gRPC.

    Whatever its config.pbtxt declares: the named inputs and outputs (datatypes and dims, the
    batch dimension first), `max_batch_size`, and the `platform` that picks the engine. Requests
    are checked against that contract, then share forward passes in the adaptive batcher.
    """

    def __init__(self, settings: PredictorSettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.version: ModelVersion | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.workers: list[ForwardWorker[Engine]] = []
        self.contract: Contract | None = None

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
        plan = plan_engine(
            config.platform, s.device, s.precision, s.cuda_graphs, s.num_threads, cuda_info()
        )
        # config.pbtxt decides; a flag given on the command line overrides the forward-pass size
        # only. A request may carry up to config.max_batch_size rows whatever the flag says
        # (the transformer reads the same limit); a larger one than a pass takes is split.
        max_batch = s.max_batch_size or config.max_batch_size
        delay_ms = (
            s.max_batch_delay_ms
            if s.max_batch_delay_ms is not None
            else config.max_queue_delay_us / 1000
        )
        version = self.version
        for index in range(s.instances):
            self.workers.append(
                ForwardWorker(
                    lambda: build_engine(version, plan, max_batch), name=f"forward{index}"
                )
            )
        engine = self.workers[0].engine
        # What requests are checked against: the engine's contract (with any second entrance
        # its model offers), at the request size config.pbtxt allows.
        self.contract = replace(engine.contract, max_batch_size=config.max_batch_size)
        # Always room for one full request (it may be split into several passes).
        queue_size = max(s.max_queue_size, max_batch, config.max_batch_size)
        self.batcher = AdaptiveBatcher(
            [timed_forward(worker.run) for worker in self.workers],
            max_batch,
            delay_ms / 1000,
            queue_size,
            # Before any rate is known: two of the largest batches a request may bring.
            pacing.target(s.max_expected_wait_s, "images", 2 * config.max_batch_size),
            span_attributes={
                telemetry.MODEL_NAME: s.model_name,
                telemetry.MODEL_VERSION: version.version,
                telemetry.ENGINE: engine_name(version, plan, engine),
            },
        )
        batcher = self.batcher
        metrics.QUEUE_DEPTH.set_function(lambda: batcher.queued_images)
        logger.info(
            "loaded %s version %s: %s, %d instance(s), max batch %d, delay %.1f ms, queue %d "
            "rows, expected wait %g s at most",
            s.model_name,
            version.version,
            describe(version, plan, engine),
            s.instances,
            max_batch,
            delay_ms,
            queue_size,
            s.max_expected_wait_s,
        )
        self.ready = True
        return self.ready

    def overloaded(self) -> str | None:
        """Why a one-image request would be refused by the batch queue now, or None (also
        before load)."""
        return None if self.batcher is None else self.batcher.refusal(1)

    def stop(self) -> None:
        """Release the forward threads."""
        if self.batcher is not None:
            self.batcher.close()
        for worker in self.workers:
            worker.close()
        super().stop()

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata: the inputs declared in config.pbtxt."""
        return [spec.metadata() for spec in self.contract.inputs] if self.contract else []

    def get_output_types(self) -> list[dict[str, Any]]:
        """V2 metadata: the outputs declared in config.pbtxt."""
        return [spec.metadata() for spec in self.contract.outputs] if self.contract else []

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """The declared outputs for a V1 {"instances": ...} body or a V2 request; raises
        InvalidInput when the request does not match the model's contract."""
        batcher, contract = self.batcher, self.contract
        if batcher is None or contract is None:
            raise ModelNotReady(self.name)
        if isinstance(payload, InferRequest):
            inputs = self._v2_inputs(payload)
        else:
            inputs = codecs.v1_tensors(payload, contract.inputs, contract.alternates)
        try:
            checked = contract.check(inputs)
        except ContractError as exc:
            raise InvalidInput(str(exc)) from exc
        outputs = await self._run(batcher, checked)
        if not isinstance(payload, InferRequest):
            return {"predictions": codecs.v1_predictions(outputs)}
        return InferResponse(
            response_id=ids.adopt_v2_id(payload.id),
            model_name=self.name,
            # As Triton's: which version answered (a transformer in front of a canary and its
            # stable version logs it, rollout/analysis.py compares them).
            model_version=self.version.version if self.version else None,
            infer_outputs=[
                codecs.numpy_output(name, outputs[name]) for name in contract.output_names
            ],
            use_binary_outputs=True,
        )

    @staticmethod
    async def _run(batcher: AdaptiveBatcher, inputs: Tensors) -> Tensors:
        """The outputs for `inputs` from some batch; refusals become 503 and 504 errors."""
        try:
            return await forward_in_passes(batcher, inputs, admission.deadline())
        except QueueFull as exc:
            raise admission.Overloaded(f"the predictor is at capacity: {exc}") from exc
        except BatcherClosed as exc:
            raise admission.Unavailable(f"the predictor is stopping: {exc}") from exc
        except DeadlineExpired as exc:
            raise admission.DeadlinePassed(str(exc)) from exc

    @staticmethod
    def _v2_inputs(request: InferRequest) -> Tensors:
        """The request's tensors by name; raises InvalidInput for a name given twice."""
        names = [t.name for t in request.inputs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidInput(f"inputs {repeated} are given more than once")
        return {t.name: codecs.input_to_numpy(t) for t in request.inputs}
