"""The model contract is decided once, in config.pbtxt: a broken config stops both servers at
load, and the batch limits agree at the transformer, the predictor and the forward pass."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DATA, MODEL_NAME, Server

from common.modelrepo import CONFIG_FILE, ModelConfig, ModelRepositoryError, resolve
from harness.servers import ROOT, free_ports
from predictor.batcher import AdaptiveBatcher
from predictor.model import forward_in_passes
from runtime.tensors import Tensors
from transformer.model import within_batch_limit


@pytest.mark.parametrize("server", ["predictor", "transformer"])
def test_a_config_typo_stops_the_server_at_load(
    server: str, model_repository: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / MODEL_NAME
    shutil.copytree(model_repository / MODEL_NAME, model_dir, ignore=shutil.ignore_patterns("1"))
    (model_dir / "1").mkdir()
    (model_dir / "1" / "model.pt").write_bytes(b"never read: the config fails first")
    config = model_dir / CONFIG_FILE
    text = config.read_text()
    config.write_text(text.replace("max_batch_size:", "max_batch_sise:"))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("max_batch_size"))
    command = [sys.executable, "-m", server, "--model_dir", str(tmp_path)]
    http_port, grpc_port = free_ports(2)
    command += ["--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    if server == "transformer":
        command += ["--predictor_host", "127.0.0.1:1"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    assert f"{config} line {line}: " in done.stderr, done.stderr[-2000:]
    assert 'no field named "max_batch_sise"' in done.stderr


def test_transformer_never_accepts_more_images_than_the_config() -> None:
    config = ModelConfig("m", "", 8, (), (), 0, None)
    assert within_batch_limit("--max_images", None, config) == 8
    assert within_batch_limit("--max_images", 3, config) == 3
    with pytest.raises(ModelRepositoryError, match="--max_images 9 exceeds max_batch_size 8"):
        within_batch_limit("--max_images", 9, config)
    with pytest.raises(ModelRepositoryError, match="--coalesce_max_images 9 exceeds"):
        within_batch_limit("--coalesce_max_images", 9, config)


def test_a_request_larger_than_a_forward_pass_is_split() -> None:
    passes: list[int] = []

    async def run(batch: Tensors) -> Tensors:
        passes.append(len(batch["x"]))
        return {"y": batch["x"] * 10, "z": -batch["x"]}

    async def main() -> Tensors:
        batcher = AdaptiveBatcher(run, max_batch_size=2, max_delay_s=0.0)
        try:
            return await forward_in_passes(batcher, {"x": np.arange(5)})
        finally:
            batcher.close()

    answer = asyncio.run(main())
    assert answer["y"].tolist() == [0, 10, 20, 30, 40] and answer["z"].tolist() == [
        0,
        -1,
        -2,
        -3,
        -4,
    ]
    assert sum(passes) == 5 and max(passes) <= 2


def test_both_servers_take_the_same_number_of_images(
    transformer: Server, predictor: Server, model_repository: Path
) -> None:
    limit = resolve(model_repository, MODEL_NAME).config.max_batch_size
    image = {"image": {"b64": base64.b64encode((DATA / "chelsea.jpg").read_bytes()).decode()}}
    too_many = httpx.post(
        f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [image] * (limit + 1)},
        timeout=60,
    )
    assert too_many.status_code == 400
    assert f"expected 1 to {limit}" in too_many.json()["error"]
    pixels = np.zeros((limit + 1, 224, 224, 3), dtype=np.uint8)
    body = {
        "inputs": [
            {
                "name": "pixels__0",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "parameters": {"binary_data_size": pixels.nbytes},
            }
        ]
    }
    head = httpx.Request("POST", "http://x", json=body).content
    refused = httpx.post(
        f"{predictor.url}/v2/models/{MODEL_NAME}/infer",
        content=head + pixels.tobytes(),
        headers={"inference-header-content-length": str(len(head))},
        timeout=60,
    )
    assert refused.status_code == 400
    assert f"expected 1 to {limit}" in refused.json()["error"]
