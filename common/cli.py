"""What every command line here shares: the default model name and places, argparse types.

Free of kserve, torch and protobuf, so the benchmark driver and the rollout CLI import it too.
"""

from __future__ import annotations

import argparse

# The model's name in the repository, in the V2 paths, and the InferenceService's name (KServe
# gives the transformer --model_name <isvc name>, and it forwards under that name).
DEFAULT_MODEL_NAME = "image-classifier"
# Where KServe's storage initializer mounts a storageUri inside a pod.
DEFAULT_MODEL_DIR = "/mnt/models"
# Where `make model-repo` exports the model for local runs (make serve, make bench).
LOCAL_MODEL_REPOSITORY = "model_repository"


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: '1,4,16' -> (1, 4, 16), sorted and unique; positive integers only."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return tuple(values)


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from exc
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from exc
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value
