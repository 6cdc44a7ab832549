"""What can be checked of the container images without a container engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WITHOUT_TORCH = str(Path(__file__).with_name("without_torch.py"))


def dockerfile(component: str) -> str:
    return (ROOT / "docker" / f"{component}.Dockerfile").read_text()


@pytest.mark.parametrize("component", ["predictor", "transformer", "batch"])
def test_entrypoint_is_the_package_and_user_is_not_root(component: str) -> None:
    text = dockerfile(component)
    assert f'ENTRYPOINT ["python", "-m", "{component}"]' in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root"))
    assert "model_repository" not in text  # the model comes from storageUri, never baked in


def test_exposed_ports_match_the_manifests() -> None:
    base = yaml.safe_load((ROOT / "manifests/base/inferenceservice.yaml").read_text())
    predictor_ports = {
        p["containerPort"] for p in base["spec"]["predictor"]["containers"][0]["ports"]
    }
    transformer_ports = {
        p["containerPort"] for p in base["spec"]["transformer"]["containers"][0]["ports"]
    }
    exposed = {
        c: {
            int(p)
            for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile(c), re.MULTILINE)
            for p in line.split()
        }
        for c in ("predictor", "transformer")
    }
    assert predictor_ports <= exposed["predictor"]
    assert transformer_ports <= exposed["transformer"]


@pytest.mark.parametrize(
    ("launcher", "module"),
    [([], "predictor"), ([WITHOUT_TORCH], "transformer")],
)
def test_entrypoints_start(launcher: list[str], module: str) -> None:
    done = subprocess.run(
        [sys.executable, *launcher, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--model_dir" in done.stdout and "--http_port" in done.stdout


def test_transformer_imports_without_torch() -> None:
    code = (
        "import sys, transformer.__main__, transformer.model, common.server\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run(
        [sys.executable, WITHOUT_TORCH, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "import runtime.torchscript"], "blocked: no torch here"),
        (["--also", "kserve", "-c", "import common.server"], "blocked: no kserve here"),
    ],
)
def test_the_blocker_really_blocks(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, WITHOUT_TORCH, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and message in done.stderr
