"""The one place the batch job reaches the predictor's model runner (import, never copy).

`ForwardRunner` builds the very engine the predictor serves with, on the predictor's own
`ForwardWorker` thread, and offers the batch job's synchronous code `submit(batch) ->
concurrent Future[logits]` and `close()`. The worker's `run` is a coroutine (the predictor
awaits it on its event loop), so the adapter keeps a small event loop on a thread of its own
to await it. When the predictor's runner API changes, this is the only batch code that follows.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import numpy as np
import torch

from common.modelrepo import ModelVersion
from predictor.engines import build_engine, plan_engine
from predictor.torchscript import ExecutionPlan
from predictor.worker import Engine, ForwardWorker


class ForwardRunner:
    """The predictor's engine on its forward thread: submit batches, get logits futures."""

    def __init__(self, version: ModelVersion, max_batch_size: int, num_threads: int) -> None:
        """Load and warm the model on a new forward thread: the engine the repository's
        platform names (TorchScript on CPU or CUDA when present, or onnxruntime on the CPU)."""
        self.plan: ExecutionPlan = plan_engine(
            version.config.platform, "auto", "auto", "auto", num_threads, torch.cuda.is_available()
        )
        plan = self.plan
        self.worker: ForwardWorker[Engine] = ForwardWorker(
            lambda: build_engine(version, plan, max_batch_size)
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="forward-loop", daemon=True
        )
        self._loop_thread.start()

    def submit(self, pixels: list[np.ndarray]) -> Future[np.ndarray]:
        """Stack UINT8 [H, W, C] images and run them as one batch on the forward thread."""
        return asyncio.run_coroutine_threadsafe(self.worker.run(np.stack(pixels)), self._loop)

    def close(self) -> None:
        """Stop the forward thread and the loop."""
        self.worker.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()
