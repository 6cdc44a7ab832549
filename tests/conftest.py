"""Shared fixtures: the real model repository and real servers on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.servers import ServerProcess as Server
from bench.servers import start
from common.cli import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODEL_NAME = DEFAULT_MODEL_NAME
# Small enough that the 413 test stays cheap, large enough for every good request here.
TEST_MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Generous: on a busy shared machine a 32-image batch has taken over 10 s.
TEST_REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository: the one `make model-repo` built, else exported now."""
    configured = Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
    if not configured.is_absolute():
        configured = ROOT / configured
    if (configured / MODEL_NAME / "1" / "model.pt").is_file():
        return configured
    from predictor.export import export

    target = tmp_path_factory.mktemp("model_repository")
    export(target, MODEL_NAME)
    return target


def start_server(module: str, args: list[str], log: Path, without_torch: bool = False) -> Server:
    """Start `python -m <module>` on free ports, as its own process; returns once it is ready.

    `without_torch` runs it with torch unimportable, as in the transformer's image.
    """
    launcher = [str(Path(__file__).with_name("without_torch.py"))] if without_torch else []
    server = start(log.stem, module, args, log.parent, launcher)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def predictor(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real predictor serving the default model."""
    log = tmp_path_factory.mktemp("logs") / "predictor.log"
    server = start_server(
        "predictor",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--max_request_bytes",
            str(TEST_MAX_REQUEST_BYTES),
            "--request_timeout_seconds",
            str(TEST_REQUEST_TIMEOUT_S),
        ],
        log,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def transformer(
    predictor: Server, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real transformer, forwarding to the real predictor over gRPC."""
    log = tmp_path_factory.mktemp("logs") / "transformer.log"
    server = start_transformer(predictor, model_repository, log)
    yield server
    server.stop()


def start_transformer(predictor: Server, model_repository: Path, log: Path, *extra: str) -> Server:
    """Start a real transformer in front of `predictor`, with `extra` flags; returns when ready."""
    return start_server(
        "transformer",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            predictor.grpc_target,
            "--max_request_bytes",
            str(TEST_MAX_REQUEST_BYTES),
            "--request_timeout_seconds",
            str(TEST_REQUEST_TIMEOUT_S),
            *extra,
        ],
        log,
        without_torch=True,  # so every transformer test also proves it needs no torch
    )
