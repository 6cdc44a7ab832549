"""Process-level CPU settings for inference, applied once before torch does any work.

Why each one:
- Threads match the CPUs this container may use (cgroup quota and affinity), not the host's
  core count, or torch oversubscribes a CPU-limited pod.
- OpenMP workers spin after each parallel region before they sleep. libgomp's default spin
  (300,000 rounds) keeps idle workers busy for milliseconds after every forward pass, stealing
  the CPU the transformer and the event loop need; PASSIVE (no spin) makes every barrier inside
  a forward pass a futex sleep and wake, about 60% slower at batch 1 here. A short bounded spin
  (GOMP_SPINCOUNT=3000; KMP_BLOCKTIME=1 ms for Intel's runtime) keeps both costs small. Set
  before torch loads; an OMP_WAIT_POLICY or GOMP_SPINCOUNT already in the environment wins.
- glibc hands large blocks (a batch's activations) back to the kernel after every forward pass
  and page-faults them in again on the next; fixing the mmap and trim thresholds keeps them.
"""

from __future__ import annotations

import os

from common.memory import set_malloc_thresholds

_KEEP_BYTES = 1 << 30


SPIN_COUNT = "3000"


def prepare_environment() -> None:
    """Set what must be in place before torch is imported (OpenMP's idle-thread spinning)."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
        os.environ.setdefault("KMP_BLOCKTIME", "1")


def keep_freed_memory() -> bool:
    """Stop glibc from returning large freed blocks to the kernel; False where not glibc."""
    return set_malloc_thresholds(mmap_bytes=_KEEP_BYTES, trim_bytes=_KEEP_BYTES)
