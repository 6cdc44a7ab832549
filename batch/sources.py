"""What to classify: the image keys under SOURCE, this shard's share of them, their bytes.

A key is the image's path relative to SOURCE (POSIX separators), which is what the database
stores, so the same tree mounted elsewhere maps to the same rows. Sharding hashes the key, never
the listing order, so every pod of an Indexed Job agrees on the split without talking.

Listing never opens a file. Each entry of a SOURCE directory is stat'ed; one that is not a
regular file is *left out*, kept by key with its kind and reason so that the job records and
counts it instead of dropping it: a FIFO, socket or device, a symbolic link to nothing or in a
loop, a path that cannot be stat'ed or a directory that cannot be listed. Dot files and dot
directories (.DS_Store, .git: other tools' state) and symbolic links to directories (following
them could list a tree twice, or forever) are skipped without a word.

Reading is bounded: a file is stat'ed before it is opened and again once open, refused unless
it is a regular file of at most the byte limit, and never read past the limit and one byte.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .settings import Shard

T = TypeVar("T")

# Why an entry under SOURCE is left out: the keys of the summary's per-kind counts.
NOT_REGULAR = "not_regular"  # a FIFO, socket or device
DANGLING_LINK = "dangling_link"
LINK_LOOP = "link_loop"  # ELOOP: links in a loop, or more than the kernel follows
UNREADABLE = "unreadable"  # cannot be stat'ed, or a directory that cannot be listed
LEFT_OUT_KINDS = (NOT_REGULAR, DANGLING_LINK, LINK_LOOP, UNREADABLE)


class SourceError(ValueError):
    """SOURCE cannot be listed: an unreadable SOURCE directory or list file, or a list file
    entry that is not a regular file."""


class FileRefused(ValueError):
    """A file that is not read: not a regular file, or larger than the byte limit."""


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


@dataclass(frozen=True)
class LeftOut:
    """An entry under SOURCE that is not an image file: its kind (one of LEFT_OUT_KINDS) and
    what it is instead."""

    key: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """What SOURCE holds: the image files and the entries left out, each by key, sorted."""

    images: dict[str, Path]
    left_out: dict[str, LeftOut]

    def shard(self, shard: Shard) -> Listing:
        """This shard's share of both (a left-out entry belongs to one shard, as an image)."""
        return Listing(select(self.images, shard), select(self.left_out, shard))


def file_type(mode: int) -> str:
    """'a FIFO', 'a socket', ... for a stat mode, as a reason says it."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), f"a file of mode {mode:o}")


def _link_target(path: Path) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:  # replaced since: say so rather than fail the listing
        return "(no longer a link)"


def examine(path: Path, key: str) -> os.stat_result | LeftOut:
    """The entry's stat, symbolic links followed, or why it is left out; never opens it."""
    try:
        return os.stat(path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ELOOP:
            return LeftOut(key, LINK_LOOP, f"a symbolic link to {_link_target(path)}: {why}")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and path.is_symlink():
            return LeftOut(
                key, DANGLING_LINK, f"a symbolic link to {_link_target(path)}, which does not exist"
            )
        return LeftOut(key, UNREADABLE, f"cannot stat it: {why}")


def _is_real_directory(entry: os.DirEntry[str]) -> bool:
    """A directory itself, not a link to one (an error: let `examine` say what it is)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _list_directory(source: Path) -> Listing:
    """Walk SOURCE (depth first, no recursion limit); raises SourceError if it cannot be listed."""
    images: dict[str, Path] = {}
    left_out: dict[str, LeftOut] = {}
    pending = [source]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if directory == source:
                raise SourceError(f"cannot list SOURCE {source}: {why}") from exc
            key = directory.relative_to(source).as_posix()
            left_out[key] = LeftOut(key, UNREADABLE, f"a directory that cannot be listed: {why}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            key = path.relative_to(source).as_posix()
            if _is_real_directory(entry):
                pending.append(path)
                continue
            found = examine(path, key)
            if isinstance(found, LeftOut):
                left_out[key] = found
            elif stat.S_ISREG(found.st_mode):
                images[key] = path
            elif not stat.S_ISDIR(found.st_mode):  # a directory here is a link to one
                left_out[key] = LeftOut(
                    key, NOT_REGULAR, f"not a regular file: {file_type(found.st_mode)}"
                )
    return Listing(dict(sorted(images.items())), dict(sorted(left_out.items())))


def list_source(source: Path) -> Listing:
    """The image files under SOURCE by key, and the entries left out; raises SourceError.

    A directory is searched recursively (see the module docstring for what is skipped and what
    is left out); a file lists paths one per line (blank lines and # comments are ignored,
    relative paths are relative to the list file's directory), and an entry that is not a
    regular file stops the job: it was named on purpose.
    """
    if source.is_dir():
        return _list_directory(source)
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
        found = examine(path, entry)
        if isinstance(found, LeftOut) or not stat.S_ISREG(found.st_mode):
            what = found.reason if isinstance(found, LeftOut) else file_type(found.st_mode)
            raise SourceError(f"{source}:{number}: {entry!r} is not a regular file: {what}")
        listed[Path(entry).as_posix()] = path
    return Listing(dict(sorted(listed.items())), {})


def shard_of(key: str, count: int) -> int:
    """The shard (0 to count-1) a key belongs to: a stable hash, the same in every process."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select(keys: dict[str, T], shard: Shard) -> dict[str, T]:
    """The keys of this shard, in key order."""
    if shard.count == 1:
        return keys
    return {k: p for k, p in keys.items() if shard_of(k, shard.count) == shard.index}


def _checked_size(status: os.stat_result, max_bytes: int) -> int:
    """The size of a regular file within the limit; raises FileRefused otherwise."""
    if not stat.S_ISREG(status.st_mode):
        raise FileRefused(f"not a regular file: {file_type(status.st_mode)}")
    if status.st_size > max_bytes:
        raise FileRefused(f"{status.st_size} bytes exceeds --max_image_bytes {max_bytes}")
    return status.st_size


def read_image(path: Path, max_bytes: int) -> Image:
    """Read a regular file of at most `max_bytes` and hash it; raises FileRefused (not a
    regular file, or larger: never read whole), OSError when it cannot be read."""
    # Refused before it is opened: opening a FIFO waits for a writer, opening a device can act.
    _checked_size(os.stat(path), max_bytes)
    # O_NONBLOCK: a path replaced by a FIFO since the stat must not block the open either (it
    # changes nothing for a regular file); fstat then judges what was actually opened.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        size = _checked_size(os.fstat(fd), max_bytes)
        # One byte past the size: a file that grew since is read on, up to the limit and one.
        data = file.read(size + 1)
        if len(data) > size:
            data += file.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise FileRefused(
            f"grew past --max_image_bytes {max_bytes} while read ({size} bytes when opened)"
        )
    return Image(data, hashlib.sha256(data).hexdigest())
