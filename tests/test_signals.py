"""SIGINT (Ctrl-C) skips the drain that SIGTERM runs (README: Faults, shutdown and overload)."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import MODEL_NAME, engine_repository, start_server

DRAIN_S = 30.0  # far longer than any exit: only a skipped drain exits within EXIT_WITHIN_S
EXIT_WITHIN_S = 10.0


def test_sigint_skips_the_drain(tmp_path_factory: pytest.TempPathFactory) -> None:
    repository = engine_repository("onnx", tmp_path_factory)
    log = tmp_path_factory.mktemp("signals") / "predictor.log"
    server = start_server(
        "predictor",
        [
            "--model_dir",
            str(repository),
            "--model_name",
            MODEL_NAME,
            "--drain_seconds",
            str(DRAIN_S),
        ],
        log,
    )
    try:
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        code = server.process.wait(timeout=EXIT_WITHIN_S + 20)
        took = time.monotonic() - started
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    assert code == 0, text[-2000:]
    assert took < EXIT_WITHIN_S, took
    assert "SIGINT: no longer accepting" in text
    assert "serving on for" not in text  # the drain's line, which SIGTERM logs
