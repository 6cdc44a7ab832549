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
# The servers' default --max_request_bytes (largest HTTP body and gRPC message), and the batch
# job's default --max_image_bytes: a file the servers would refuse is not read whole offline
# either. Here, free of kserve, so the batch job's --url engine can import it too.
# Why 16 MiB: the transformer's requests carry encoded images. A 12-megapixel phone JPEG is
# 2-5 MB, and the largest image it decodes (--max_image_pixels, 50 megapixels) is 10-15 MB as
# a good JPEG; so 16 MiB carries that one image as bytes (V2 binary, gRPC), or three phone
# photos as base64 (V1 JSON, +33%). The predictor's requests carry pixels: a full batch of
# 32 x 224 x 224 x 3 UINT8 is 4.6 MiB as binary or gRPC raw contents (JSON numbers take ~4
# bytes a pixel: 16 MiB carries ~27 images that way). Larger batches go as several requests
# (the transformer coalesces concurrent ones anyway). Each byte allowed here is memory a
# client may make the server hold, so the limit is no larger than real requests need.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


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
