"""The rollout CLI against a real cluster with KServe: skipped unless ROLLOUT_E2E_KUBECONFIG is set.

Uses KServe's public sklearn-iris models (no project images needed) so it checks the CLI against
the real controller's semantics: revisions, traffic split, canary statuses, failure reasons.
See docs/rollout.md ("Real-cluster tests") for a kind setup.

    ROLLOUT_E2E_KUBECONFIG  kubeconfig of the cluster (required; unset: every test is skipped)
    ROLLOUT_E2E_NAMESPACE   namespace to use, created if absent (default rollout-e2e)
    ROLLOUT_E2E_MODE        Knative or Standard (default Knative)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from rollout.cli import main
from rollout.errors import ExitCode

pytestmark = pytest.mark.cluster

KUBECONFIG = os.environ.get("ROLLOUT_E2E_KUBECONFIG", "")
NAMESPACE = os.environ.get("ROLLOUT_E2E_NAMESPACE", "rollout-e2e")
MODE = os.environ.get("ROLLOUT_E2E_MODE", "Knative")
NAME = "rollout-e2e-sklearn"
MODEL_V1 = "gs://kfserving-examples/models/sklearn/1.0/model"
MODEL_V2 = "gs://kfserving-examples/models/sklearn/1.0/model-2"
MODEL_BROKEN = "gs://kfserving-examples/models/sklearn/1.0/does-not-exist"
TIMEOUT_S = "600"


def cli(*args: str) -> int:
    common = ["--kubeconfig", KUBECONFIG, "-n", NAMESPACE, "--name", NAME]
    return main([*args, *common, "--timeout", TIMEOUT_S, "--poll-interval", "2"])


def status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert cli("status", "--output", "json") == ExitCode.OK
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


@pytest.fixture(scope="module")
def cluster() -> Iterator[client.ApiClient]:
    if not KUBECONFIG:
        pytest.skip("ROLLOUT_E2E_KUBECONFIG is not set: no cluster to test against")
    api = config.new_client_from_config(config_file=KUBECONFIG, persist_config=False)
    code = main(["status", "--kubeconfig", KUBECONFIG, "-n", "default", "--name", "absent"])
    if code in (ExitCode.UNREACHABLE, ExitCode.CRD_MISSING):
        pytest.skip(f"cluster from {KUBECONFIG} unreachable or without KServe (exit {code})")
    core = client.CoreV1Api(api)
    try:
        core.read_namespace(NAMESPACE)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    yield api
    try:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", NAME
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "annotations": {"serving.kserve.io/deploymentMode": MODE}},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": MODEL_V1}}
        },
    }
    (tmp_path / "isvc.yaml").write_text(json.dumps(isvc))
    (tmp_path / "kustomization.yaml").write_text("resources: [isvc.yaml]\n")
    return tmp_path


def test_missing_service_is_reported(cluster: client.ApiClient) -> None:
    assert main(["status", "--kubeconfig", KUBECONFIG, "-n", NAMESPACE, "--name", "absent"]) == 5


def test_canary_promote_rollback_and_failed_canary(
    cluster: client.ApiClient, overlay: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("apply", str(overlay)) == ExitCode.OK
    assert status(capsys)["ready"] is True

    assert cli("canary", "--percent", "10", "--storage-uri", MODEL_V2) == ExitCode.OK
    doc = status(capsys)
    if MODE == "Standard":
        canaries = [t for t in doc["traffic"] if t["tag"] == "canary"]
        assert [(t["percent"], t["ready"]) for t in canaries] == [(10, True)]
    else:
        split = sorted(t["percent"] for t in doc["traffic"] if t["component"] == "predictor")
        assert split == [10, 90]

    assert cli("promote") == ExitCode.OK
    doc = status(capsys)
    assert [t["percent"] for t in doc["traffic"] if t["component"] == "predictor"] == [100]

    assert cli("rollback") == ExitCode.OK  # restores the model-1 spec recorded by `canary`
    assert status(capsys)["ready"] is True

    code = cli("canary", "--percent", "10", "--storage-uri", MODEL_BROKEN, "--auto-rollback")
    assert code in (ExitCode.ROLLOUT_FAILED, ExitCode.TIMEOUT)
    assert status(capsys)["ready"] is True
