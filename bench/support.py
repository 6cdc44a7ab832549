"""Helpers both benchmark commands share: child processes, the machine.

Imports neither kserve nor tritonclient.grpc, so `bench.driver` (tritonclient) and
`bench.ceiling` (kserve's protobuf) can both use it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.servers import ROOT

SUBPROCESS_TIMEOUT_S = 300


def environment() -> dict[str, Any]:
    """Where this ran: CPUs, versions, git commit."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    status = git("status", "--porcelain")
    return {
        "cpu_count": os.cpu_count(),
        "available_cpus": affinity or os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "kserve": version("kserve"),
        "tritonclient": version("tritonclient"),
        "pillow": version("pillow"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def run_json_module(
    module: str, args: list[str], log: Path, timeout_s: float = SUBPROCESS_TIMEOUT_S
) -> dict[str, Any]:
    """Run `python -m module args` (in the repository root) and parse its stdout as JSON;
    stderr goes to `log`. Raises RuntimeError with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=sink,
            timeout=timeout_s,
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"python -m {module} failed ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
