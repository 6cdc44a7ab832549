"""`Classifier`: one model repository's ONNX model in this process, image bytes to top-k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import DEFAULT_MODEL_NAME
from common.cpus import available_cpus
from common.modelrepo import (
    ONNX_PLATFORM,
    ModelRepositoryError,
    resolve,
)
from runtime.onnx_engine import OnnxEngine
from runtime.tensors import Contract, run_one
from vision.imaging import DEFAULT_MAX_PIXELS, DecodeLimits, ImageError, preprocess
from vision.postprocess import top_k as top_k_classes
from vision.preprocessing import Preprocessing


@dataclass(frozen=True)
class Prediction:
    """One class of an image's top-k."""

    class_id: int
    label: str
    score: float


class Classifier:
    """Decodes, preprocesses and classifies images with a repository's ONNX model."""

    def __init__(
        self,
        model_dir: Path | str,
        model_name: str = DEFAULT_MODEL_NAME,
        version: str | None = None,
        num_threads: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Load the model; raises ModelRepositoryError when the repository holds no ONNX model."""
        self.version = resolve(model_dir, model_name, version)
        config = self.version.config
        if config.platform != ONNX_PLATFORM:
            raise ModelRepositoryError(
                f"{self.version.model_dir}: platform {config.platform!r}; the edge classifier "
                f"runs {ONNX_PLATFORM!r} models (python -m modelbuild onnx writes one)"
            )
        self.params = Preprocessing.read(self.version.model_dir)
        self.labels = self.version.labels()
        self.limits = DecodeLimits(max_pixels=max_image_pixels)
        self.max_batch_size = config.max_batch_size or 1
        self.engine = OnnxEngine(
            self.version.artifact, Contract.of(config), num_threads or available_cpus()
        )

    def classify(self, image: bytes, top_k: int = 5) -> list[Prediction]:
        """The `top_k` most probable classes of one encoded image; raises ValueError."""
        return self.classify_many([image], top_k)[0]

    def classify_many(self, images: Sequence[bytes], top_k: int = 5) -> list[list[Prediction]]:
        """Top-k per image, in batches of the model's max batch size; raises ValueError for
        the first image that cannot be decoded (saying which)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        results: list[list[Prediction]] = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            pixels = np.stack(
                [self._pixels(data, start + i, len(images)) for i, data in enumerate(chunk)]
            )
            class_ids, scores = top_k_classes(run_one(self.engine, pixels), top_k)
            results += [
                [
                    Prediction(int(c), self.labels[c], float(s))
                    for c, s in zip(ids, row, strict=True)
                ]
                for ids, row in zip(class_ids, scores, strict=True)
            ]
        return results

    def _pixels(self, data: bytes, index: int, count: int) -> np.ndarray:
        try:
            return preprocess(data, self.params, self.limits)
        except ImageError as exc:
            where = f"image {index} of {count}: " if count > 1 else ""
            raise ValueError(f"{where}{exc}") from exc
