"""The one place the batch job reaches the model runtime (import, never copy).

`ForwardRunner` builds the very engine the predictor serves with (`runtime.engines`), on the
same `runtime.worker.ForwardWorker` thread, and offers the batch job's synchronous code
`submit(batch) -> concurrent Future[logits]` and `close()`. The worker's `run` is a coroutine
(the predictor awaits it on its event loop), so the adapter keeps a small event loop on a thread
of its own to await it. When the runtime's API changes, this is the only batch code that
follows.

On the CPU it runs several instances of the engine (Triton's `instance_group { count }`), each
on its own forward thread with its own few intra-op threads, and gives each batch to the
instance with the least work. A job has no latency to keep, only throughput: instances with one
thread each never wait at an intra-op barrier for a thread the decode threads took the CPU from,
which one engine with every CPU's thread does all the time. Measured here (2 CPUs,
EfficientNet-Lite0, phone-sized JPEGs, batches of 4, decoding overlapped): onnxruntime took
27-32 CPU-ms per image with 2 instances x 1 thread, 33-36 with 1 x 2 threads.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from common.modelrepo import ModelVersion
from runtime.engines import build_engine, cuda_info, plan_engine
from runtime.plan import CudaInfo, ExecutionPlan
from runtime.tensors import Engine
from runtime.worker import ForwardWorker


@dataclass(frozen=True)
class RunnerPlan:
    """How the job runs the model: the engine's execution plan (device, threads of each
    instance) and how many instances."""

    execution: ExecutionPlan
    instances: int

    @property
    def on_cpu(self) -> bool:
        """Whether the model runs on the CPU (else on a GPU)."""
        return self.execution.device == "cpu"


# Each instance holds its own copy of the model and its buffers: measured here, an extra
# instance adds about 190 MiB of resident memory with onnxruntime and 110 MiB with TorchScript.
# Past this many CPUs, instances get more threads each instead of more copies.
MAX_DEFAULT_INSTANCES = 8


def plan_runner(
    version: ModelVersion,
    cpus: int,
    instances: int | None,
    num_threads: int | None,
    device: str = "auto",
    precision: str = "auto",
    cuda_graphs: str = "auto",
    cuda: CudaInfo | None = None,
) -> RunnerPlan:
    """The flags where given, else on the CPU one single-thread instance per CPU (at most
    MAX_DEFAULT_INSTANCES, sharing the CPUs' threads), on a GPU one instance (the GPU is then
    what limits, not the CPUs). The device, precision and graph flags are the predictor's
    (`cuda`: what torch sees, read here when not given). Raises ValueError for an unknown
    platform or an impossible choice."""
    cuda = cuda_info() if cuda is None else cuda
    plan = plan_engine(version.config.platform, device, precision, cuda_graphs, 1, cuda)
    count = instances or (min(cpus, MAX_DEFAULT_INSTANCES) if plan.device == "cpu" else 1)
    threads = num_threads or max(1, cpus // count)
    return RunnerPlan(replace(plan, num_threads=threads), count)


class ForwardRunner:
    """The predictor's engine on forward threads: submit batches, get logits futures."""

    def __init__(self, version: ModelVersion, plan: RunnerPlan, max_batch_size: int) -> None:
        """Load and warm the model on each instance's forward thread: the engine the
        repository's platform names (TorchScript on CPU or CUDA when present, or onnxruntime on
        the CPU)."""
        self.plan = plan
        # The image classifier's one input (pixels) and one output (logits).
        self._input, self._output = version.config.inputs[0].name, version.config.outputs[0].name
        self.workers: list[ForwardWorker[Engine]] = []
        self._queued = [0] * plan.instances  # batches submitted and not yet answered
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="forward-loop", daemon=True
        )
        self._loop_thread.start()
        try:
            for index in range(plan.instances):
                self.workers.append(
                    ForwardWorker(
                        lambda: build_engine(version, plan.execution, max_batch_size),
                        name=f"forward{index}",
                    )
                )
        except BaseException:
            self.close()
            raise

    def submit(self, pixels: list[np.ndarray]) -> Future[np.ndarray]:
        """Stack UINT8 [H, W, C] images and run them as one batch on the least busy instance."""
        with self._lock:
            index = min(range(len(self._queued)), key=self._queued.__getitem__)
            self._queued[index] += 1
        future = asyncio.run_coroutine_threadsafe(self._logits(index, np.stack(pixels)), self._loop)
        future.add_done_callback(lambda _: self._answered(index))
        return future

    async def _logits(self, index: int, batch: np.ndarray) -> np.ndarray:
        outputs = await self.workers[index].run({self._input: batch})
        return outputs[self._output]

    def _answered(self, index: int) -> None:
        with self._lock:
            self._queued[index] -= 1

    def close(self) -> None:
        """Stop the forward threads and the loop."""
        for worker in self.workers:
            worker.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()
