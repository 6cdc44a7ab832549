"""The one place the batch job reaches the predictor's model runner (import, never copy).

`open_runner` builds the very runner the predictor serves with, on its own forward thread, and
hands back something with `async`-free `submit(batch) -> Future[logits]` and `close()`. When the
predictor's runner API changes, this adapter is the only batch code that follows it.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from common.modelrepo import ModelVersion
from predictor.runtime import plan_execution, start_forward_thread


class ForwardRunner:
    """The predictor's runner on its own forward thread: submit batches, get logits futures."""

    def __init__(self, version: ModelVersion, max_batch_size: int, num_threads: int) -> None:
        """Load and warm the model (CPU, or CUDA when present) on a new forward thread."""
        plan = plan_execution("auto", "auto", "auto", num_threads, torch.cuda.is_available())
        self.plan = plan
        self._runner, self._thread = start_forward_thread(
            Path(version.artifact), plan, max_batch_size, version.config.inputs[0].dims
        )

    def submit(self, pixels: list[np.ndarray]) -> Future[np.ndarray]:
        """Stack UINT8 [H, W, C] images and run them as one batch on the forward thread."""
        return self._thread.submit(lambda: self._runner.run(np.stack(pixels)))

    def close(self) -> None:
        """Stop the forward thread once the batches already submitted are done."""
        self._thread.shutdown(wait=True)
