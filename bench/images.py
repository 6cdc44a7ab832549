"""The benchmark's image set, built at run time from the repository's test photos.

Half the set is the originals (300-640 px) re-encoded as JPEG, half is the same photos as a
phone would save them: centre-cropped to 4:3 (or 3:4), upscaled to 4032x3024 (or 3024x4032)
and saved as JPEG. The phone half is what makes decoding expensive: 12 megapixels each.
Pure Pillow; nothing here imports kserve or torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png")
PHONE_LONG_SIDE, PHONE_SHORT_SIDE = 4032, 3024  # a 12 MP phone camera
JPEG_QUALITY = 85
ORIGINAL, PHONE = "original", "phone"


@dataclass(frozen=True)
class BenchImage:
    """One encoded image of the set."""

    name: str
    kind: str  # ORIGINAL or PHONE
    width: int
    height: int
    data: bytes

    @property
    def size_bytes(self) -> int:
        """Encoded size in bytes."""
        return len(self.data)


def phone_size(width: int, height: int) -> tuple[int, int]:
    """The phone resolution with the source's orientation (landscape when width >= height)."""
    if width >= height:
        return PHONE_LONG_SIDE, PHONE_SHORT_SIDE
    return PHONE_SHORT_SIDE, PHONE_LONG_SIDE


def crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop `image` to the aspect ratio width:height (so the upscale does not stretch)."""
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # too wide
        new_w = round(src_h * width / height)
        left = (src_w - new_w) // 2
        return image.crop((left, 0, left + new_w, src_h))
    new_h = round(src_w * height / width)
    top = (src_h - new_h) // 2
    return image.crop((0, top, src_w, top + new_h))


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an RGB image as baseline JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def build_image_set(source: Path) -> list[BenchImage]:
    """Every source photo as an original re-encoded JPEG and as a phone-sized JPEG.

    Raises FileNotFoundError when `source` holds no .jpg/.jpeg/.png file.
    """
    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(SOURCE_SUFFIXES)} images in {source}")
    images: list[BenchImage] = []
    for path in paths:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB")
        images.append(BenchImage(f"{path.stem}.jpg", ORIGINAL, *rgb.size, encode_jpeg(rgb)))
        width, height = phone_size(*rgb.size)
        phone = crop_to_aspect(rgb, width, height).resize((width, height), Image.Resampling.BICUBIC)
        images.append(
            BenchImage(f"{path.stem}-phone.jpg", PHONE, width, height, encode_jpeg(phone))
        )
    return images


def mean_size_bytes(images: list[BenchImage]) -> float:
    """Mean encoded size; raises ValueError for an empty set."""
    if not images:
        raise ValueError("empty image set")
    return sum(i.size_bytes for i in images) / len(images)


def write_image_set(images: list[BenchImage], directory: Path) -> list[Path]:
    """Write the set as files (what the limit subprocess reads); returns the paths in order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = directory / image.name
        path.write_bytes(image.data)
        paths.append(path)
    return paths


def describe(images: list[BenchImage]) -> dict[str, object]:
    """The set's summary for the report: counts, sizes and resolutions."""
    return {
        "count": len(images),
        "originals": sum(i.kind == ORIGINAL for i in images),
        "phone_sized": sum(i.kind == PHONE for i in images),
        "mean_bytes": round(mean_size_bytes(images)),
        "jpeg_quality": JPEG_QUALITY,
        "images": [
            {
                "name": i.name,
                "kind": i.kind,
                "width": i.width,
                "height": i.height,
                "bytes": i.size_bytes,
            }
            for i in images
        ],
    }
