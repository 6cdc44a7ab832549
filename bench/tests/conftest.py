"""Fixtures for the benchmark's own tests (the suite in tests/ has its own conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.cli import DEFAULT_MODEL_NAME
from harness.repositories import engine_repository
from harness.servers import ServerProcess, start


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository: the one `make model-repo` built, else exported now."""
    return engine_repository("torchscript", tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real predictor (the ONNX repository: the quickest to load) on free loopback ports."""
    repository = engine_repository("onnx", tmp_path_factory)
    args = ["--model_dir", str(repository), "--model_name", DEFAULT_MODEL_NAME]
    server = start("predictor", "predictor", args, tmp_path_factory.mktemp("bench-logs"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
