"""What a test needs from the machine, and what happens without it: a skip on a developer's
machine, a failure under CI (`CI` set to true, 1 or yes), where `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def under_ci() -> bool:
    """Whether this run is CI's (the CI variable says true, 1 or yes, in any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip for `reason`, or fail with it under CI, where nothing may be missing."""
    if under_ci():
        pytest.fail(f"{reason} (under CI nothing the tests need may be missing: see .ci/run)")
    pytest.skip(reason)


def kubectl() -> str:
    """The kubectl that renders the manifests (`kubectl kustomize`), or missing()."""
    found = shutil.which("kubectl")
    if found is None:
        missing("kubectl is not installed: the manifest tests render with `kubectl kustomize`")
    return found
