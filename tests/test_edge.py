"""The edge classifier: in-process, torch-free, and the same answers as the served service."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import DATA, MODEL_NAME, Stack, engine_repository

WITHOUT_TORCH = str(Path(__file__).with_name("without_torch.py"))
IMAGES = sorted(p.name for p in DATA.iterdir())

# Runs in a process where torch cannot be imported: top-1 per image as JSON.
# (without_torch.py -c leaves its own arguments in sys.argv: ours start at 3.)
CLASSIFY = """
import json, sys
from pathlib import Path
from edge import Classifier
classifier = Classifier(sys.argv[3])
images = [Path(p).read_bytes() for p in sys.argv[4:]]
tops = [ranked[0] for ranked in classifier.classify_many(images)]
print(json.dumps([[p.class_id, p.label, p.score] for p in tops]))
one = classifier.classify(images[0], top_k=2)
assert len(one) == 2 and one[0].score >= one[1].score
try:
    classifier.classify(b"not an image")
except ValueError as exc:
    assert "not a supported image" in str(exc), exc
else:
    raise AssertionError("a bad image was classified")
"""


def without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    """Run with neither torch nor kserve importable, as after `pip install .[edge]`."""
    return subprocess.run(
        [sys.executable, WITHOUT_TORCH, "--also", "kserve", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("engine", ["onnx", "int8"])
def test_edge_top1_equals_the_served_top1(
    engine: str, stacks: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    repository = engine_repository(engine, tmp_path_factory)
    files = [str(DATA / n) for n in IMAGES]
    done = without_torch("-c", CLASSIFY, str(repository / MODEL_NAME), *files)
    assert done.returncode == 0, done.stderr[-3000:]
    edge = json.loads(done.stdout)
    transformer = stacks(engine)[1]
    response = httpx.post(
        f"{transformer.url}/v1/models/{MODEL_NAME}:predict",
        json={
            "instances": [
                {"image": {"b64": base64.b64encode(Path(f).read_bytes()).decode()}} for f in files
            ],
            "parameters": {"top_k": 1},
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    served = [p[0] for p in response.json()["predictions"]]
    for name, (class_id, label, score), answer in zip(IMAGES, edge, served, strict=True):
        assert (class_id, label) == (answer["class_id"], answer["label"]), name
        assert abs(score - answer["score"]) < 1e-3, name


def test_edge_command_prints_top_k_and_reports_bad_files(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    repository = engine_repository("onnx", tmp_path_factory)
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"plain text")
    done = without_torch(
        "-m",
        "edge",
        str(DATA / "coffee.jpg"),
        str(bad),
        "--model_dir",
        str(repository),
        "--top_k",
        "2",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{DATA / 'coffee.jpg'}:"
    assert "967  espresso" in lines[1] and len([ln for ln in lines if ln.startswith("  ")]) == 2
    assert f"{bad}: error: not a supported image" in done.stdout


def test_edge_refuses_a_torchscript_repository(model_repository: Path) -> None:
    done = without_torch(
        "-m", "edge", str(DATA / "coffee.jpg"), "--model_dir", str(model_repository)
    )
    assert done.returncode == 2
    assert "platform 'pytorch_libtorch'" in done.stderr and "modelbuild onnx" in done.stderr
