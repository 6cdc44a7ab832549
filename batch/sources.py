"""What to classify: the image keys under SOURCE, this shard's share of them, their bytes.

A key is the image's path relative to SOURCE (POSIX separators), which is what the database
stores, so the same tree mounted elsewhere maps to the same rows. Sharding hashes the key, never
the listing order, so every pod of an Indexed Job agrees on the split without talking.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .settings import Shard


class SourceError(ValueError):
    """SOURCE cannot be listed: a missing list file entry, or an unreadable directory."""


@dataclass(frozen=True)
class Work:
    """One image to classify, with the sha256 its stored prediction has (None: not stored)."""

    key: str
    path: Path
    stored_sha256: str | None


@dataclass(frozen=True)
class Image:
    """An image file's bytes and their sha256."""

    data: bytes
    sha256: str


def list_images(source: Path) -> dict[str, Path]:
    """Map every key under SOURCE to its file, sorted by key; raises SourceError.

    A directory is searched recursively (dot files and dot directories are skipped, as are
    symlinks to directories); a file lists paths one per line (blank lines and # comments are
    ignored, relative paths are relative to the list file's directory).
    """
    if source.is_dir():
        found: dict[str, Path] = {}
        for path in source.rglob("*"):
            relative = path.relative_to(source)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            found[relative.as_posix()] = path
        return dict(sorted(found.items()))
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read the list of images {source}: {exc}") from exc
    listed: dict[str, Path] = {}
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry)
        if not path.is_absolute():
            path = source.parent / path
        if not path.is_file():
            raise SourceError(f"{source}:{number}: {entry!r} is not a file")
        listed[Path(entry).as_posix()] = path
    return dict(sorted(listed.items()))


def shard_of(key: str, count: int) -> int:
    """The shard (0 to count-1) a key belongs to: a stable hash, the same in every process."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(keys: dict[str, Path], shard: Shard) -> dict[str, Path]:
    """The keys of this shard, in key order."""
    if shard.count == 1:
        return keys
    return {k: p for k, p in keys.items() if shard_of(k, shard.count) == shard.index}


def read_image(path: Path) -> Image:
    """Read a file and hash it; raises OSError when it cannot be read."""
    data = path.read_bytes()
    return Image(data, hashlib.sha256(data).hexdigest())
