"""`--instances`: several model copies in one predictor, each batch on a free one, answers the
same as one copy gives (the batching across copies is tests/test_batcher.py's)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MODEL_NAME, start_server
from test_reliability import pixels_body

from common.modelrepo import resolve
from harness.repositories import engine_repository
from runtime.onnx_engine import OnnxEngine
from runtime.tensors import Contract, run_one


def test_two_instances_answer_every_request_as_one_copy_does(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repository = engine_repository("onnx", tmp_path_factory)
    logs = tmp_path_factory.mktemp("instances")
    server = start_server(
        "predictor",
        ["--model_dir", str(repository), "--model_name", MODEL_NAME, "--instances", "2"],
        logs / "predictor.log",
    )
    try:
        body, headers = pixels_body(4)
        url = f"{server.url}/v2/models/{MODEL_NAME}/infer"
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda _: client.post(url, content=body, headers=headers), range(6))
            )
        assert [a.status_code for a in answers] == [200] * 6, answers[0].text
        log = server.tail(200_000)
        assert "engine onnxruntime" in log and "2 instance(s)" in log
    finally:
        server.stop()
    version = resolve(Path(repository), MODEL_NAME)
    pixels = np.frombuffer(body[-4 * 224 * 224 * 3 :], np.uint8).reshape(4, 224, 224, 3)
    contract = replace(Contract.of(version.config), max_batch_size=4)
    expected = run_one(OnnxEngine(version.artifact, contract, 1), pixels)
    for answer in answers:
        output = answer.json()["outputs"][0]
        np.testing.assert_allclose(
            np.asarray(output["data"], np.float32).reshape(output["shape"]), expected, atol=1e-4
        )
