"""Shared fixtures: the real model repository and real servers on free loopback ports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.cli import DEFAULT_MODEL_NAME
from harness import needs
from harness.repositories import engine_repository
from harness.servers import ServerProcess as Server
from harness.servers import start

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODEL_NAME = DEFAULT_MODEL_NAME
# Small enough that the 413 test stays cheap, large enough for every good request here.
TEST_MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Generous: on a busy shared machine a 32-image batch has taken over 10 s.
TEST_REQUEST_TIMEOUT_S = 60
# The shared servers shed no load by time: the tests that use them send bursts (a window of
# drift images, a 64-image request) whose expected wait depends on how fast this CPU is, and
# they test other things. Shedding by time is tests/test_overload.py's and test_pacing.py's,
# with the default settings.
NO_TIME_BOUND = ("--max_expected_wait_seconds", "0")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository: the one `make model-repo` built, else exported now."""
    return engine_repository("torchscript", tmp_path_factory)


def start_server(
    module: str,
    args: list[str],
    log: Path,
    without_torch: bool = False,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `python -m <module>` on free ports, as its own process; returns once it is ready.

    `without_torch` runs it with torch unimportable, as in the transformer's image; `env`
    replaces the environment (`held_forward.env`, say).
    """
    launcher = [str(Path(__file__).with_name("without_torch.py"))] if without_torch else []
    server = start(log.stem, module, args, log.parent, launcher, env=env)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


Stack = Callable[[str], tuple[Server, Server]]


@pytest.fixture(scope="session")
def stacks(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Predictor + transformer per engine, each pair started once, when first asked for."""
    started: dict[str, tuple[Server, Server]] = {}

    def stack(engine: str) -> tuple[Server, Server]:
        if engine not in started:
            repository = (
                model_repository
                if engine == "torchscript"
                else engine_repository(engine, tmp_path_factory)
            )
            logs = tmp_path_factory.mktemp(f"logs-{engine}")
            predictor = start_server(
                "predictor",
                [
                    "--model_dir",
                    str(repository),
                    "--model_name",
                    MODEL_NAME,
                    "--max_request_bytes",
                    str(TEST_MAX_REQUEST_BYTES),
                    "--request_timeout_seconds",
                    str(TEST_REQUEST_TIMEOUT_S),
                    *NO_TIME_BOUND,
                ],
                logs / "predictor.log",
            )
            try:
                transformer = start_transformer(predictor, repository, logs / "transformer.log")
            except Exception:
                predictor.stop()
                raise
            started[engine] = (predictor, transformer)
        return started[engine]

    yield stack
    for predictor, transformer in started.values():
        transformer.stop()
        predictor.stop()


@pytest.fixture(scope="session")
def predictor(stacks: Stack) -> Server:
    """The real predictor serving the default model (TorchScript)."""
    return stacks("torchscript")[0]


@pytest.fixture(scope="session")
def transformer(stacks: Stack) -> Server:
    """The real transformer, forwarding to the real predictor over gRPC."""
    return stacks("torchscript")[1]


def start_transformer(
    predictor: Server,
    model_repository: Path,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Server:
    """Start a real transformer in front of `predictor`, with `extra` flags (and `env` as its
    whole environment); returns when ready."""
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
            *NO_TIME_BOUND,
            *extra,
        ],
        log,
        without_torch=True,  # so every transformer test also proves it needs no torch
        env=env,
    )


# Drift: a reference written by `python -m modelbuild drift-reference` from real photos, and a
# transformer whose window is exactly one test phase (tests/test_drift.py).
DRIFT_WINDOW = 80
DRIFT_REFERENCE_IMAGES = 120


@pytest.fixture(scope="session")
def drift_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model repository plus a drift_reference.json from 120 variants of real
    photos (harness/drift_images.py), written by the reference command."""
    import subprocess
    import sys

    from harness.drift_images import image_set, load_photos

    root = tmp_path_factory.mktemp("drift_repository")
    target = root / MODEL_NAME
    target.mkdir()
    for entry in (model_repository / MODEL_NAME).iterdir():
        (target / entry.name).symlink_to(entry.resolve())
    images = tmp_path_factory.mktemp("reference_images")
    for index, data in enumerate(image_set(load_photos(), DRIFT_REFERENCE_IMAGES, seed=1)):
        (images / f"{index:04d}.jpg").write_bytes(data)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modelbuild",
            "drift-reference",
            "--repository",
            str(root),
            "--model_name",
            MODEL_NAME,
            "--images",
            str(images),
        ],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    return root


@pytest.fixture(scope="session")
def drift_transformer(
    predictor: Server, drift_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A transformer with that drift reference, a window of DRIFT_WINDOW images."""
    log = tmp_path_factory.mktemp("logs") / "transformer-drift.log"
    window = str(DRIFT_WINDOW)
    server = start_transformer(
        predictor, drift_repository, log, "--drift_window", window, "--drift_min_count", window
    )
    yield server
    server.stop()


def grpc_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run tritonclient.grpc calls in a separate process (see tests/grpc_client.py)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("grpc_client.py"))],
        input=json.dumps(calls).encode(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def kubectl() -> str:
    """The kubectl the manifest tests render with; skips without one, fails under CI."""
    return needs.kubectl()
