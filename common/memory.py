"""A process's memory as the operating system sees it: its resident size (/proc), its
container's limit (the cgroup), and glibc's policy for freed blocks.

Free of kserve and torch, so the predictor's start-up tuning, the batch job and the soak
benchmark use it as the servers do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

# cgroup v1 reports "no limit" as a huge number (a page-aligned 2**63 - 1).
_NO_LIMIT = 1 << 60
# mallopt() parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size up get pages of their own, handed back to the kernel when freed. Not
# lower: decoding a 12 MP phone JPEG (at draft scale) allocates scratch blocks of 1-4 MiB, and
# from 1 MiB up they were mapped and page-faulted anew on every decode: 10-15% more CPU per
# decode than with them kept (`python -m bench.decode_rate --compare_return_from_mib 1,4`).
RETURN_BLOCKS_FROM_BYTES = 4 << 20


def status_bytes(field: str = "VmRSS", pid: int | str = "self") -> int | None:
    """A memory field of /proc/<pid>/status in bytes (VmRSS: resident now; VmHWM: its peak),
    None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def container_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2 `memory.max`, else v1), or None."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < _NO_LIMIT else None
    return None


def _glibc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Fix glibc's mmap and trim thresholds (mallopt); False where the C library is not glibc.

    Fixing them also stops glibc's default of raising the mmap threshold to the size of the
    largest block freed so far (up to 32 MiB), after which request-sized blocks come from the
    heap, whose freed memory stays with the process.
    """
    if _LIBC is None:
        return False
    return bool(
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
        and _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


def return_freed_memory(from_bytes: int = RETURN_BLOCKS_FROM_BYTES) -> bool:
    """Make memory that large blocks (a large body or message, a decoded image: from
    `from_bytes`, default RETURN_BLOCKS_FROM_BYTES) held go back to the kernel when they are
    freed, so a burst of large requests leaves little resident memory behind (what is smaller
    is reused from the heap, and its top is trimmed past twice the size); False where not
    glibc."""
    return set_malloc_thresholds(mmap_bytes=from_bytes, trim_bytes=2 * from_bytes)


def trim_heap() -> None:
    """Hand the free pages inside the C heap back to the kernel (glibc's malloc_trim; nothing
    elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
