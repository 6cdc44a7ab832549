"""Process-level CPU settings for inference, applied once before torch does any work.

Why each one:
- Threads match the CPUs this container may use (cgroup quota and affinity), not the host's
  core count, or torch oversubscribes a CPU-limited pod.
- OMP_WAIT_POLICY=PASSIVE stops idle OpenMP workers from spinning between forward passes and
  stealing the transformer's (or the batcher's) CPU time. It must be set before torch loads.
- glibc hands large blocks (a batch's activations) back to the kernel after every forward pass
  and page-faults them in again on the next; fixing the mmap and trim thresholds keeps them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt() parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def prepare_environment() -> None:
    """Set what must be in place before torch is imported (OpenMP's wait policy)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory() -> bool:
    """Stop glibc from returning large freed blocks to the kernel; False where not glibc."""
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    try:
        libc = ctypes.CDLL(path)
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
            and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
        )
    except (OSError, AttributeError):
        return False
