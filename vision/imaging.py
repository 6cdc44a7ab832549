"""Image bytes to model-ready pixels: pure functions, safe on untrusted input.

One decode (at reduced scale for large JPEGs, via Pillow's draft mode), one resize that also
crops (Pillow's resize `box`), one copy into numpy. Pillow releases the GIL while it decodes
and resizes, so a thread pool spreads this over the CPUs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .preprocessing import Preprocessing

# What we decode. Everything else (PSD, EPS, ...) is refused before any parser runs.
# (Phones' multi-picture JPEGs open through the JPEG parser and report format "MPO".)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = (255, 255, 255, 255)
DRAFT_OVERSAMPLING = 2


class ImageError(ValueError):
    """The bytes are not an image this service decodes (empty, not an image, a format it does
    not accept, too large, corrupt). The message says what was wrong; servers answer 400."""


# The transformer's default --max_image_pixels: a 12-megapixel phone photo or a panorama is
# decoded, a decompression bomb is not (Pillow itself only warns from 89 megapixels).
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one image may cost to decode."""

    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class DecodedImage:
    """Model-ready pixels and what the source image was (for metrics and drift signals)."""

    pixels: np.ndarray  # UINT8 [crop, crop, 3]
    format: str  # Pillow's format name: JPEG, PNG, ...
    width: int  # of the upright source image, before any resizing
    height: int


def load_image(data: bytes, limits: DecodeLimits, shorter_side: int) -> Image.Image:
    """Decode image bytes to an upright RGB image, large JPEGs at a reduced DCT scale that
    keeps the shorter side >= 2 x `shorter_side`.

    Raises ImageError for empty bytes, non-images, formats outside ACCEPTED_FORMATS,
    decompression bombs (more than `limits.max_pixels` declared) and truncated or corrupt data.
    """
    return _load(data, limits, shorter_side)[0]


def _load(
    data: bytes, limits: DecodeLimits, shorter_side: int
) -> tuple[Image.Image, str, int, int]:
    """load_image, also returning the format and the upright source width and height."""
    if not data:
        raise ImageError("empty image (0 bytes)")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"not a supported image ({len(data)} bytes starting {bytes(data[:8])!r}); "
            f"expected one of {', '.join(ACCEPTED_FORMATS)}"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from exc
    width, height = image.size
    source_format = str(image.format)
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise ImageError(
            f"image declares {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_pixels} (a decompression bomb or an image too large to serve)"
        )
    if image.format in ("JPEG", "MPO"):
        # DCT scaling (1/2, 1/4, 1/8) is a coarse filter: keep at least twice the final size so
        # the bilinear resize still does the last 2x, and scores stay with the full decode's.
        scale = DRAFT_OVERSAMPLING * shorter_side / min(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt {image.format} image: {exc}") from exc
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        if orientation in _QUARTER_TURNS:
            width, height = height, width
    return to_rgb(image), source_format, width, height


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha is composited on white, 16-bit is scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values.astype(np.float32) / 257.0  # 16-bit range to 8-bit
        grey = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        background = Image.new("RGBA", image.size, _WHITE)
        background.alpha_composite(image.convert("RGBA"))
        return background.convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, params: Preprocessing) -> np.ndarray:
    """Scale the shorter side to `params.resize` and centre-crop `params.crop`, in one resize.

    Same geometry as torchvision's Resize(resize) + CenterCrop(crop), but the crop is mapped
    back to source coordinates (Pillow's resize `box`), so only the pixels that survive the
    crop are resampled. Returns UINT8 [crop, crop, 3].
    """
    width, height = image.size
    if width <= height:
        scaled_w, scaled_h = params.resize, int(params.resize * height / width)
    else:
        scaled_w, scaled_h = int(params.resize * width / height), params.resize
    left = round((scaled_w - params.crop) / 2)
    top = round((scaled_h - params.crop) / 2)
    sx, sy = width / scaled_w, height / scaled_h
    box = (left * sx, top * sy, (left + params.crop) * sx, (top + params.crop) * sy)
    resized = image.resize((params.crop, params.crop), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def preprocess(data: bytes, params: Preprocessing, limits: DecodeLimits) -> np.ndarray:
    """Image file bytes to UINT8 [crop, crop, 3] RGB pixels; raises ImageError."""
    return decode(data, params, limits).pixels


def decode(data: bytes, params: Preprocessing, limits: DecodeLimits) -> DecodedImage:
    """Image file bytes to pixels as `preprocess`, with the source's format and size; raises
    ImageError."""
    image, source_format, width, height = _load(data, limits, params.resize)
    return DecodedImage(resize_and_crop(image, params), source_format, width, height)
