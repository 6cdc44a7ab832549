"""The image model's preprocessing parameters: preprocess.json beside config.pbtxt (Triton's
config has no place for them), read by everything that turns images into the model's input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.modelrepo import ModelRepositoryError

PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: RGB, shorter side to `resize`, centre `crop`."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        """Build from preprocess.json; raises ModelRepositoryError on missing or bad values."""
        try:
            resize, crop = int(data["resize"]), int(data["crop"])
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelRepositoryError(
                f"{PREPROCESS_FILE} needs resize, crop, mean[3] and std[3]: {exc!r} in {data}"
            ) from exc
        if len(mean) != 3 or len(std) != 3 or crop <= 0 or resize < crop or 0 in std:
            raise ModelRepositoryError(
                f"{PREPROCESS_FILE}: expected resize >= crop > 0 and 3 means and non-zero stds, "
                f"got {data}"
            )
        return cls(resize, crop, mean, std)

    @classmethod
    def read(cls, model_dir: Path) -> Preprocessing:
        """The parameters in `model_dir`'s preprocess.json; raises ModelRepositoryError."""
        path = model_dir / PREPROCESS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelRepositoryError(f"cannot read {path}: {exc}") from exc
        return cls.from_json(data)

    def to_json(self) -> dict[str, Any]:
        """The preprocess.json form of these parameters."""
        return {"resize": self.resize, "crop": self.crop, "mean": self.mean, "std": self.std}
