"""Real photos for the drift test and plot: a reference set, an in-distribution set, and shifts.

The photos are the colour photographs scikit-image ships in its wheel (`skimage/data`: an
astronaut, a cat, coffee, motorcycles, a rocket, the Hubble deep field, a retina, tissue),
matplotlib's Grace Hopper portrait and the repository's tests/data. The files are read from the
installed packages' directories (scikit-image is not imported). Variants are random crops,
flips and re-encodings of those photos; shifts are what production drift looks like: night
shots (much darker), out-of-focus or noisy frames, greyscale scans and tiny thumbnails.
Pure Pillow and numpy.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
REPOSITORY_PHOTOS = ("coffee.jpg", "chelsea.jpg", "rocket.jpg", "astronaut.jpg")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations)))


def photo_files() -> list[Path]:
    """Every source photo; raises FileNotFoundError when a package or file is missing."""
    files = [_package_dir("skimage") / "data" / name for name in SKIMAGE_PHOTOS]
    files.append(_package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    files += [ROOT / "tests" / "data" / name for name in REPOSITORY_PHOTOS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"drift test photos missing: {missing}")
    return files


def load_photos() -> list[Image.Image]:
    """The source photos as RGB images."""
    return [Image.open(path).convert("RGB") for path in photo_files()]


def variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (60-100% of each side), maybe mirrored, scaled to a long side of 320-640."""
    width, height = photo.size
    crop_w = int(width * rng.uniform(0.6, 1.0))
    crop_h = int(height * rng.uniform(0.6, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(320, 640) / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )


def encode(image: Image.Image, rng: np.random.Generator) -> bytes:
    """JPEG at a random quality from 80 to 95."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue()


def darker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A night shot: a quarter of the light."""
    return Image.fromarray((np.asarray(image, dtype=np.float32) * 0.25).astype(np.uint8))


def blurred(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Badly out of focus."""
    return image.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 60))


def noisy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A high-ISO sensor: Gaussian noise of sigma 40."""
    values = np.asarray(image, dtype=np.float32) + rng.normal(0, 40, (image.height, image.width, 3))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def greyscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A black-and-white scan."""
    return image.convert("L")


def thumbnail(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A tiny thumbnail: long side of 40-64 pixels."""
    scale = rng.uniform(40, 64) / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )


SHIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "darker": darker,
    "blurred": blurred,
    "noisy": noisy,
    "greyscale": greyscale,
    "thumbnail": thumbnail,
}


def image_set(
    photos: list[Image.Image],
    count: int,
    seed: int,
    shift: Callable[[Image.Image, np.random.Generator], Image.Image] | None = None,
) -> list[bytes]:
    """`count` encoded variants, cycling through the photos; `shift` applied to each if given."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = variant(photos[index % len(photos)], rng)
        if shift is not None:
            image = shift(image, rng)
        images.append(encode(image, rng))
    return images
