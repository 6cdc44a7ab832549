"""The `--url` classifier: each image file goes to a running transformer over V2 gRPC.

Built on tritonclient.grpc only; it must never import kserve (both register the protobuf
package `inference`, so they cannot share a process) nor torch. Bounded concurrency (a sliding
window of requests in flight), a deadline per request, and retries with exponential backoff and
full jitter on UNAVAILABLE (the 503 of an overloaded or restarting service) and
DEADLINE_EXCEEDED. When retries run out the job stops (exit 3): a re-run resumes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .outcomes import (
    ClassifierConfigError,
    ClassifierUnavailable,
    Failure,
    Finished,
    Outcome,
    Prediction,
    read_unless_stored,
    top_up,
)
from .settings import BatchSettings
from .sources import Image, Work

IMAGE_INPUT = "image"  # the transformer's V2 input: one BYTES element per encoded image file
OUTPUTS = ("class_id", "label", "score")
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
# Statuses that no image can get past (wrong model name, key, endpoint): the job stops, exit 2.
FATAL = ("NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED")
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
# The transformer names the image in its errors ("image 0: ..."); one image per request here,
# so the prefix says nothing and is dropped to match the in-process classifier's reasons.
SINGLE_IMAGE_PREFIX = "image 0: "

T = TypeVar("T")


def status_name(exc: InferenceServerException) -> str:
    """'UNAVAILABLE' for tritonclient's 'StatusCode.UNAVAILABLE'."""
    return str(exc.status() or "UNKNOWN").removeprefix("StatusCode.")


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry `attempt` (0-based): full jitter, exponential, capped."""
    return rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


class RemoteClassifier:
    """Classifies images through a transformer's V2 gRPC endpoint, one image per request."""

    kind = "url"

    def __init__(self, settings: BatchSettings) -> None:
        """Check the service answers and find the model version; raises ClassifierUnavailable."""
        assert settings.url is not None
        self.url = settings.url
        self.model_name = settings.model_name
        self.top_k = settings.top_k
        self.timeout_s = settings.timeout_s
        self.retries = settings.retries
        self.concurrency = settings.concurrency
        self.max_image_bytes = settings.max_image_bytes
        self._local = threading.local()
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.headers = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else None
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="grpc")
        try:
            metadata = self._call(
                lambda client: client.get_model_metadata(
                    self.model_name, headers=self.headers, client_timeout=self.timeout_s
                )
            )
        except InferenceServerException as exc:
            self.close()
            raise ClassifierConfigError(
                f"{self.url}: model {self.model_name!r}: {status_name(exc)}: {exc.message()}"
            ) from exc
        except ClassifierUnavailable:
            self.close()
            raise
        versions = list(metadata.versions)
        version = settings.model_version or (versions[-1] if versions else None)
        if version is None:
            # KServe's V2 metadata carries no version (Triton's does): the caller must say.
            raise ClassifierConfigError(
                f"{self.url}: model {self.model_name!r} reports no version in its V2 metadata; "
                "pass --model_version (the version the service runs)"
            )
        self.model_version = version

    def close(self) -> None:
        """Stop the request threads and close every channel."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def classify(self, work: Iterable[Work]) -> Iterator[Outcome]:
        """One outcome per work item, `concurrency` requests in flight; raises
        ClassifierUnavailable."""
        items = iter(work)
        finished = Finished()
        in_flight: set[Future[Outcome]] = set()
        exhausted = False
        while True:
            if not exhausted:
                exhausted = top_up(
                    items,
                    in_flight,
                    self.concurrency,
                    lambda item: finished.track(self.pool.submit(self._classify_one, item)),
                )
            if not in_flight:
                return
            future = finished.next()
            in_flight.discard(future)
            yield future.result()

    def _client(self) -> grpcclient.InferenceServerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = grpcclient.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, request: Callable[[grpcclient.InferenceServerClient], T]) -> T:
        """Send with retries on UNAVAILABLE / DEADLINE_EXCEEDED; raises ClassifierUnavailable, or
        InferenceServerException for any other status."""
        for attempt in range(self.retries + 1):
            try:
                return request(self._client())
            except InferenceServerException as exc:
                status = status_name(exc)
                if status not in RETRYABLE:
                    raise
                if attempt == self.retries:
                    raise ClassifierUnavailable(
                        f"{self.url}: {status} after {self.retries + 1} attempts: {exc.message()}"
                    ) from exc
                with self._lock:
                    delay = backoff_s(attempt, self._rng)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _classify_one(self, item: Work) -> Outcome:
        """Read, hash and classify one image (a request thread)."""
        image = read_unless_stored(item, self.max_image_bytes)
        if not isinstance(image, Image):
            return image
        tensor = grpcclient.InferInput(IMAGE_INPUT, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image.data], dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            result = self._call(
                lambda client: client.infer(
                    self.model_name,
                    [tensor],
                    outputs=outputs,
                    parameters={"top_k": self.top_k},
                    headers=self.headers,
                    client_timeout=self.timeout_s,
                )
            )
        except InferenceServerException as exc:
            status, message = status_name(exc), str(exc.message() or "")
            if status in FATAL:
                raise ClassifierConfigError(f"{self.url}: {status}: {message}") from exc
            if status == "INVALID_ARGUMENT":
                return Failure(item.key, image.sha256, message.removeprefix(SINGLE_IMAGE_PREFIX))
            return Failure(item.key, image.sha256, f"{status}: {message}")
        class_ids, labels, scores = (result.as_numpy(name) for name in OUTPUTS)
        if class_ids is None or labels is None or scores is None:
            return Failure(item.key, image.sha256, f"the service answered without {OUTPUTS}")
        return Prediction(
            item.key,
            image.sha256,
            tuple(int(c) for c in class_ids[0]),
            tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in labels[0]),
            tuple(float(s) for s in scores[0]),
        )
