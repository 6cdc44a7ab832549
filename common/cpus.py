"""How many CPUs this process may really use (affinity and the container's CPU quota), and which
of its threads get them first."""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2/v1 CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


# Nice values of the threads that do throughput work, above the event loop's 0. The event loop
# answers requests (refusals under overload, probes, gathering the next batch) and is latency
# work: given the CPU first, it answers in milliseconds even while decoding and forward passes
# keep every core busy, and what it takes is small. Forward passes yield to decoding too, so a
# transformer and a predictor that share cores (one pod, `make serve`) keep images flowing.
# Threads that a lowered thread starts (onnxruntime's intra-op pool, OpenMP's team) inherit its
# value. Under a container's CPU quota this orders only the container's own threads.
DECODE_NICENESS = 5
FORWARD_NICENESS = 10


# The engine (the model repository `make` builds for it) that serves fastest with answers that
# pass the fidelity gate, by kind of x86 CPU; from measurements with the same files, 2 threads:
# - avx2 (AMD EPYC, AVX2 only; `make bench` here, README "Engines"): OpenVINO INT8 ahead of
#   ONNX Runtime FP32 by 1.2x at batch 8 in process and served, gate 96% where FP32 is sure;
# - amx (Intel Xeon Sapphire Rapids, AMX + AVX-512 VNNI + BF16; issue 21's table): OpenVINO
#   INT8 3.0x ONNX Runtime FP32 at batch 8, ahead of OpenVINO BF16 (2.5x);
# - avx512_vnni without AMX (AMD EPYC Zen 4: AVX-512 VNNI + BF16; `make bench` there): OpenVINO
#   INT8 2.5x ONNX Runtime FP32 at batch 8 (17.4 vs 43.9 ms), ahead of OpenVINO BF16 (26-40 ms,
#   `python -m bench.limit`; its gate passed at 100% where FP32 is sure);
# - anything else (no AVX2; another architecture): not measured; ONNX Runtime FP32, the
#   portable one.
DEFAULT_ENGINES = {
    "amx": "openvino-int8",
    "avx512_vnni": "openvino-int8",
    "avx2": "openvino-int8",
    "other": "onnx",
}


def cpu_kind(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The kind of CPU for DEFAULT_ENGINES: amx, avx512_vnni, avx2 or other (also when
    `cpuinfo` cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "other"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    for kind, flag in (("amx", "amx_int8"), ("avx512_vnni", "avx512_vnni"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"


def default_engine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The engine `make serve` runs by default on this CPU (see DEFAULT_ENGINES)."""
    return DEFAULT_ENGINES[cpu_kind(cpuinfo)]


def lower_thread_priority(niceness: int) -> None:
    """Give the calling thread nice value `niceness` (Linux: nice applies per thread); keeps the
    priority it has where that is not possible (not Linux, or not permitted)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except (AttributeError, OSError):
        pass


def _cgroup_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


if __name__ == "__main__":  # `python3 -m common.cpus`: the default engine here, for make serve
    print(default_engine())
