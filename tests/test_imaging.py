"""Decoding and preprocessing as pure functions: formats, modes, orientation and hostile input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision.imaging import DecodeLimits, ImageError, load_image, preprocess, resize_and_crop
from vision.preprocessing import Preprocessing

DATA = Path(__file__).resolve().parent / "data"
PARAMS = Preprocessing(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3)
LIMITS = DecodeLimits()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reference_pixels(image: Image.Image) -> np.ndarray:
    """The textbook pipeline (torchvision's Resize(256) then CenterCrop(224)), in two steps."""
    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    return np.asarray(resized.crop((left, top, left + 224, top + 224)))


def test_photo_becomes_uint8_crop() -> None:
    pixels = preprocess((DATA / "coffee.jpg").read_bytes(), PARAMS, LIMITS)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_single_resize_matches_resize_then_crop() -> None:
    image = Image.open(DATA / "chelsea.jpg").convert("RGB")
    ours = resize_and_crop(image, PARAMS).astype(np.int16)
    reference = reference_pixels(image).astype(np.int16)
    difference = np.abs(ours - reference)
    assert difference.mean() < 0.5 and difference.max() <= 8


def test_large_jpeg_decodes_at_reduced_scale_with_same_content() -> None:
    photo = Image.open(DATA / "coffee.jpg").convert("RGB").resize((3000, 2000))
    data = encode(photo, "JPEG", quality=90)
    decoded = load_image(data, LIMITS, shorter_side=256)
    assert min(decoded.size) >= 256 and decoded.size[0] < 3000  # draft mode reduced it
    difference = np.abs(
        preprocess(data, PARAMS, LIMITS).astype(np.int16)
        - reference_pixels(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    )
    assert difference.mean() < 4.0


def test_exif_orientation_is_applied() -> None:
    # A wide image stored sideways: orientation 6 means "rotate 90 degrees clockwise to view".
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 200, 200))  # left half red in stored orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = load_image(encode(image, "JPEG", exif=exif), LIMITS, 256)
    assert upright.size == (200, 400)  # now tall
    top = np.asarray(upright)[:50].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[1] < 60  # the red half is on top after the rotation


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("P", "GIF"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("LA", "PNG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    """The pixels are the image's own, as Pillow converts that mode to RGB: a decoder giving
    zeros, inverted CMYK or swapped channels is off by 50 or more on average."""
    image = Image.open(DATA / "chelsea.jpg").convert(mode)
    pixels = preprocess(encode(image, fmt), PARAMS, LIMITS)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    want = preprocess(encode(image.convert("RGB"), "PNG"), PARAMS, LIMITS)  # lossless
    off = np.abs(pixels.astype(int) - want.astype(int)).mean()
    assert off <= (4.0 if fmt in ("JPEG", "WEBP") else 0.5), off  # lossy formats: 1.6, 2.2


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    pixels = preprocess(encode(image, "PNG"), PARAMS, LIMITS)
    assert pixels.min() == 255


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 300, dtype=np.uint16), (300, 1))
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I")
    pixels = preprocess(encode(image, "PNG"), PARAMS, LIMITS)
    row = pixels[112, :, 0].astype(int)
    assert row[0] < 40 and row[-1] > 215 and np.all(np.diff(row) >= 0)  # a ramp, not all 255


def test_empty_bytes() -> None:
    with pytest.raises(ImageError, match="empty image"):
        preprocess(b"", PARAMS, LIMITS)


def test_not_an_image() -> None:
    with pytest.raises(ImageError, match="not a supported image"):
        preprocess(b"definitely not a picture", PARAMS, LIMITS)


def test_truncated_image() -> None:
    data = (DATA / "coffee.jpg").read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        preprocess(data[: len(data) // 3], PARAMS, LIMITS)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="too large"):
        preprocess(bomb, PARAMS, LIMITS)


def test_pixel_limit_is_configurable() -> None:
    data = (DATA / "coffee.jpg").read_bytes()  # 600 x 400
    with pytest.raises(ImageError, match="600x400"):
        preprocess(data, PARAMS, DecodeLimits(max_pixels=100_000))
