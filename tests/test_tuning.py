"""Process-level CPU settings: thread counts, OpenMP spinning, the allocator."""

from __future__ import annotations

import os
import subprocess
import sys

from common.cpus import available_cpus
from runtime.tuning import SPIN_COUNT, keep_freed_memory

PRINT_ENV = (
    "import os; from runtime.tuning import prepare_environment; prepare_environment(); "
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
)


def run_with(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", PRINT_ENV],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_bounded_spin_is_the_default() -> None:
    assert run_with({}) == f"{SPIN_COUNT} None"


def test_an_explicit_policy_wins() -> None:
    assert run_with({"OMP_WAIT_POLICY": "PASSIVE"}) == "None PASSIVE"
    assert run_with({"GOMP_SPINCOUNT": "7"}) == "7 None"


def test_cpu_count_respects_affinity() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_allocator_keeps_freed_memory_on_glibc() -> None:
    assert keep_freed_memory() is True
