"""Closed-loop load: N workers, each sending one single-image request after another.

Clients: V1 JSON over httpx (bodies encoded once, before the clock starts) and V2 gRPC over
tritonclient.grpc (raw BYTES, inputs built once). Each worker has its own connection. This module
imports tritonclient.grpc, so it must never share a process with kserve.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness.v1 import JSON_HEADERS, v1_body

from .stats import V1_JSON, V2_GRPC

REQUEST_TIMEOUT_S = 60.0
T = TypeVar("T")


class Sender(Protocol):
    """One worker's client: sends image `index`, says whether a valid answer came back."""

    def send(self, index: int) -> bool: ...

    def top1(self, index: int) -> int: ...

    def close(self) -> None: ...


class V1Sender:
    """POST /v1/models/<model>:predict with pre-encoded JSON bodies."""

    def __init__(self, base_url: str, model: str, bodies: Sequence[bytes]) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        self._path = f"/v1/models/{model}:predict"
        self._bodies = bodies

    def send(self, index: int) -> bool:
        """True for a 200 answer that carries predictions."""
        try:
            response = self._client.post(
                self._path, content=self._bodies[index], headers=JSON_HEADERS
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and b'"predictions"' in response.content

    def top1(self, index: int) -> int:
        """The first prediction's class id for image `index` (a sanity check, not timed)."""
        response = self._client.post(self._path, content=self._bodies[index], headers=JSON_HEADERS)
        response.raise_for_status()
        return int(response.json()["predictions"][0][0]["class_id"])

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


def v2_inputs(images: Sequence[bytes]) -> list[list[grpcclient.InferInput]]:
    """One single-element BYTES input named "image" per image, serialised once."""
    inputs = []
    for image in images:
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
        inputs.append([tensor])
    return inputs


class V2Sender:
    """ModelInfer over gRPC with raw BYTES inputs."""

    def __init__(
        self, target: str, model: str, inputs: Sequence[list[grpcclient.InferInput]]
    ) -> None:
        self._client = grpcclient.InferenceServerClient(target)
        self._model = model
        self._inputs = inputs

    def send(self, index: int) -> bool:
        """True for an answer that carries the class_id output."""
        try:
            result = self._client.infer(
                self._model, self._inputs[index], client_timeout=REQUEST_TIMEOUT_S
            )
        except InferenceServerException:
            return False
        return result.as_numpy("class_id") is not None

    def top1(self, index: int) -> int:
        """The first class id for image `index` (a sanity check, not timed)."""
        result = self._client.infer(self._model, self._inputs[index])
        class_ids = result.as_numpy("class_id")
        if class_ids is None:
            raise RuntimeError("the answer has no class_id output")
        return int(class_ids[0][0])

    def close(self) -> None:
        """Close the channel."""
        self._client.close()


@dataclass(frozen=True)
class Client:
    """Builds senders of one protocol against one transformer."""

    protocol: str
    make: Callable[[], Sender]


def client_for(
    protocol: str, url: str, grpc_target: str, model: str, images: Sequence[bytes]
) -> Client:
    """The sender factory for V1_JSON or V2_GRPC; request payloads are encoded here, once."""
    if protocol == V1_JSON:
        bodies = [v1_body(image) for image in images]
        return Client(protocol, lambda: V1Sender(url, model, bodies))
    if protocol == V2_GRPC:
        inputs = v2_inputs(images)
        return Client(protocol, lambda: V2Sender(grpc_target, model, inputs))
    raise ValueError(f"unknown protocol {protocol!r}, expected {V1_JSON} or {V2_GRPC}")


@dataclass(frozen=True)
class Sample:
    """One request: when it finished (perf_counter seconds), how long it took, whether it was ok."""

    finished: float
    latency_s: float
    ok: bool
    index: int  # which image of the set


@dataclass(frozen=True)
class LoadRun(Generic[T]):
    """Every request of a cell, the measurement window, and probes taken at its edges."""

    samples: list[Sample]
    window_start: float
    window_end: float
    before: T
    after: T
    hit_request_cap: bool

    def in_window(self) -> list[Sample]:
        """Requests that finished inside the window."""
        return [s for s in self.samples if self.window_start <= s.finished < self.window_end]

    def window_seconds(self) -> float:
        """The measurement window's length: to the last answer when the request cap ended it."""
        end = self.window_end
        if self.hit_request_cap and self.samples:
            end = min(end, self.samples[-1].finished)
        return max(end - self.window_start, 1e-9)


def closed_loop(
    client: Client,
    image_count: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    max_requests: int,
    probe: Callable[[], T],
) -> LoadRun[T]:
    """Run `concurrency` workers for warmup_s + duration_s (or until `max_requests` in all),
    calling `probe` when the window opens and closes. Workers start on different images and
    cycle through the set. Raises RuntimeError when a worker cannot build its client."""
    senders = [client.make() for _ in range(concurrency)]
    samples: list[list[Sample]] = [[] for _ in range(concurrency)]
    stop = threading.Event()
    budget = threading.Semaphore(max_requests)

    def work(worker: int) -> None:
        sender, record = senders[worker], samples[worker]
        index = worker % image_count
        while not stop.is_set() and budget.acquire(blocking=False):
            started = time.perf_counter()
            ok = sender.send(index)
            finished = time.perf_counter()
            record.append(Sample(finished, finished - started, ok, index))
            index = (index + 1) % image_count

    threads = [
        threading.Thread(target=work, args=(w,), name=f"load-{w}", daemon=True)
        for w in range(concurrency)
    ]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    window_start = begin + warmup_s
    window_end = window_start + duration_s
    _sleep_until(window_start)
    before = probe()
    _sleep_until(window_end)
    after = probe()
    stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 5)
    for sender in senders:
        sender.close()
    merged = sorted((s for record in samples for s in record), key=lambda s: s.finished)
    return LoadRun(
        samples=merged,
        window_start=window_start,
        window_end=window_end,
        before=before,
        after=after,
        hit_request_cap=len(merged) >= max_requests,
    )


def _sleep_until(deadline: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
