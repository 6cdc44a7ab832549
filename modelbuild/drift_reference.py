"""`python -m modelbuild drift-reference`: write a model's drift reference profile.

Runs a directory of reference images through the transformer's own decoding and preprocessing
(`vision.imaging`) and the served model (the predictor's runner, on CPU), and writes
`drift_reference.json` beside the model's `config.pbtxt`; the transformer reads it at start.
Use images like the ones the service should see: the profile is what "no drift" means.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.cli import DEFAULT_MODEL_NAME
from common.cpus import available_cpus
from common.modelrepo import resolve
from runtime.plan import NO_CUDA, plan_execution
from runtime.tensors import Contract, run_one
from runtime.torchscript import TorchScriptEngine
from vision.drift import PROFILE_FILENAME, ReferenceProfile, input_statistics
from vision.imaging import DEFAULT_MAX_PIXELS, DecodeLimits, decode
from vision.postprocess import top_k
from vision.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
BATCH = 8


def reference_rows(
    files: list[Path], model_dir: Path, model_name: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the drift signals (CONTINUOUS_SIGNALS columns) and the top-1 class; raises
    vision.imaging.ImageError for an image the transformer would refuse."""
    version = resolve(model_dir, model_name)
    params = Preprocessing.read(version.model_dir)
    limits = DecodeLimits(max_pixels=max_pixels)
    plan = plan_execution("cpu", "fp32", "off", available_cpus(), NO_CUDA)
    contract = replace(Contract.of(version.config), max_batch_size=BATCH)
    engine = TorchScriptEngine(version.artifact, plan, contract)  # one thread: this one
    rows: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    for start in range(0, len(files), BATCH):
        pixels, statistics = [], []
        for path in files[start : start + BATCH]:
            data = path.read_bytes()
            image = decode(data, params, limits)
            pixels.append(image.pixels)
            statistics.append(input_statistics(image.pixels, image.width, image.height, len(data)))
        class_ids, scores = top_k(run_one(engine, np.stack(pixels)), 1)
        rows.append(np.hstack([np.array(statistics), scores.astype(np.float64)]))
        classes.append(class_ids[:, 0])
    return np.concatenate(rows), np.concatenate(classes)


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory`, sorted by name; raises FileNotFoundError."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory of reference images")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Write <repository>/<model_name>/drift_reference.json from --images."""
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repository", required=True, type=Path, help="Model repository root.")
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--images", required=True, type=Path, help="Directory of reference images.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = image_files(args.images)
    if len(files) < 10:
        parser.error(f"{args.images}: {len(files)} images; a reference needs at least 10")
    values, class_ids = reference_rows(files, args.repository, args.model_name)
    profile = ReferenceProfile.build(
        values, class_ids, f"{len(files)} reference images from {args.images.name}/"
    )
    target = args.repository / args.model_name / PROFILE_FILENAME
    profile.save(target)
    logger.info(
        "wrote %s (%d images, %d frequent classes)",
        target,
        len(files),
        len(profile.classes.classes),
    )
    return 0
