"""The rollout CLI against a fake Kubernetes API server that the real `kubernetes` client talks to.

Each test runs `rollout.cli.main(argv)` in-process; the fake (tests/fakes/kube_api.py) stores the
objects and plays the KServe controller, so apply/canary/promote/rollback are checked end to end
down to the HTTP requests the client sends.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.kube_api import FakeKube, kubeconfig_text, rbac_request

from harness import needs
from rollout.cli import main
from rollout.errors import ExitCode, RolloutError
from rollout.plans import PREVIOUS_SPEC_ANNOTATION, Expectation, merge_diff
from rollout.state import Mode, deployment_mode, snapshot
from rollout.wait import judge

NAME = "image-classifier"
NS = "default"
V1 = "gs://models/image-classifier/1"
V2 = "gs://models/image-classifier/2"
BROKEN = "gs://models/image-classifier/broken"


def knative_isvc() -> dict[str, Any]:
    """A custom-container predictor and a transformer that both carry STORAGE_URI."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "annotations": {"serving.kserve.io/deploymentMode": "Knative"},
        },
        "spec": {
            "predictor": {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "registry.local/predictor:1.0",
                        "env": [{"name": "STORAGE_URI", "value": V1}],
                    }
                ]
            },
            "transformer": {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "registry.local/transformer:1.0",
                        "env": [{"name": "STORAGE_URI", "value": V1}],
                    }
                ]
            },
        },
    }


def standard_isvc() -> dict[str, Any]:
    """A model-format predictor in Standard (RawDeployment) mode, with a transformer."""
    isvc = knative_isvc()
    isvc["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Standard"}
    isvc["spec"]["predictor"] = {
        "model": {"modelFormat": {"name": "pytorch"}, "runtime": "triton", "storageUri": V1}
    }
    return isvc


# Every (verb, API group, resource) the CLI sent in this module's tests, for the RBAC test last.
SENT: set[tuple[str, str, str]] = set()
ROLE = Path(__file__).resolve().parents[1] / "manifests" / "rbac" / "rollout" / "role.yaml"


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.stop()
    SENT.update(r for r in map(rbac_request, server.every_request) if r is not None)


@pytest.fixture
def run(fake: FakeKube, tmp_path: Path) -> Any:
    """Run the CLI against the fake with fast polling; returns the exit code."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")

    def _run(*args: str, timeout: float = 5) -> int:
        argv = [*args, "--kubeconfig", str(kubeconfig), "--poll-interval", "0.01"]
        return main([*argv, "--timeout", str(timeout)])

    return _run


def predictor_env(isvc: dict[str, Any], component: str = "predictor") -> str:
    env = isvc["spec"][component]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "STORAGE_URI"))


def traffic(isvc: dict[str, Any], component: str = "predictor") -> list[tuple[str, int]]:
    rows = isvc["status"]["components"][component]["traffic"]
    return [(t["revisionName"].rsplit("-", 1)[1], t["percent"]) for t in rows]


# -- pure functions ------------------------------------------------------------------------------


def test_merge_diff_removes_replaces_and_recurses() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "gone": True}
    new = {"a": 1, "b": {"c": 5, "d": 3}, "l": [1], "added": {"x": 1}}
    assert merge_diff(old, new) == {"b": {"c": 5}, "l": [1], "gone": None, "added": {"x": 1}}
    assert merge_diff(new, new) == {}


@pytest.mark.parametrize(
    ("annotation", "mode"),
    [
        (None, Mode.KNATIVE),
        ("Knative", Mode.KNATIVE),
        ("Serverless", Mode.KNATIVE),
        ("Standard", Mode.STANDARD),
        ("RawDeployment", Mode.STANDARD),
    ],
)
def test_deployment_mode_reads_old_and_new_names(annotation: str | None, mode: Mode) -> None:
    isvc = knative_isvc()
    isvc["metadata"]["annotations"] = (
        {"serving.kserve.io/deploymentMode": annotation} if annotation else {}
    )
    assert deployment_mode(isvc) is mode


def test_deployment_mode_refuses_modelmesh() -> None:
    isvc = knative_isvc()
    isvc["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "ModelMesh"}
    with pytest.raises(RolloutError, match=r"'ModelMesh'.*expected one of"):
        deployment_mode(isvc)


def observed(generation: int, ready: str, percents: list[int], reason: str = "") -> dict[str, Any]:
    """A Knative InferenceService whose controller has observed `generation`."""
    isvc = knative_isvc()
    isvc["metadata"]["generation"] = generation
    rows = [
        {"revisionName": f"r{i}", "percent": p, "latestRevision": i == 0}
        for i, p in enumerate(percents)
    ]
    ready_cond = {"type": "Ready", "status": ready, "reason": reason}
    isvc["status"] = {
        "observedGeneration": generation,
        "conditions": [ready_cond],
        "components": {"predictor": {"traffic": rows}},
    }
    return isvc


def test_judge_waits_for_the_generation_readiness_and_split() -> None:
    want = Expectation(latest_percent={"predictor": 10})
    assert judge(snapshot(observed(3, "True", [10, 90])), 3, want).done
    assert not judge(snapshot(observed(2, "True", [10, 90])), 3, want).done  # stale
    assert not judge(snapshot(observed(3, "Unknown", [10, 90])), 3, want).done
    split_lags = judge(snapshot(observed(3, "True", [100])), 3, want)
    assert not split_lags.done and not split_lags.failure
    assert "predictor latest=100% (want 10%)" in split_lags.state


def test_judge_reports_a_failed_revision_only_for_the_current_generation() -> None:
    want = Expectation()
    failed = judge(snapshot(observed(3, "False", [100], "RevisionFailed")), 3, want)
    assert "RevisionFailed" in failed.failure and not failed.done
    stale = observed(3, "False", [100], "RevisionFailed")
    stale["status"]["observedGeneration"] = 2
    assert judge(snapshot(stale), 3, want).failure == ""


def test_judge_standard_canaries_must_match_exactly() -> None:
    isvc = standard_isvc()
    isvc["metadata"]["generation"] = 2
    isvc["status"] = {
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True"}],
        "canaryStatuses": [{"name": "v2", "ready": False, "trafficPercent": 10}],
    }
    assert not judge(snapshot(isvc), 2, Expectation(canaries={"v2": 10})).done
    isvc["status"]["canaryStatuses"][0]["ready"] = True
    assert judge(snapshot(isvc), 2, Expectation(canaries={"v2": 10})).done
    assert not judge(snapshot(isvc), 2, Expectation(canaries={})).done


# -- apply -------------------------------------------------------------------------------------


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    needs.kubectl()  # apply renders with `kubectl kustomize`
    d = tmp_path / "overlay"
    d.mkdir()
    (d / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [isvc.yaml, runtime.yaml]\n"
        "commonLabels: {app: image-classifier}\n"
    )
    isvc = knative_isvc()
    del isvc["metadata"]["namespace"]  # comes from --namespace
    (d / "isvc.yaml").write_text(json.dumps(isvc))
    (d / "runtime.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "serving.kserve.io/v1alpha1",
                "kind": "ServingRuntime",
                "metadata": {"name": "triton"},
                "spec": {"containers": [{"name": "kserve-container", "image": "triton:24.08"}]},
            }
        )
    )
    return d


def test_apply_creates_then_patches_and_waits_for_ready(
    fake: FakeKube, run: Any, overlay: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("apply", str(overlay)) == ExitCode.OK
    isvc = fake.isvc()
    assert isvc["metadata"]["labels"] == {"app": "image-classifier"}
    assert isvc["status"]["observedGeneration"] == 1
    assert ("servingruntimes", NS, "triton") in fake.objects
    posts = [r.path.rsplit("/", 1)[1] for r in fake.writes() if r.method == "POST"]
    assert posts == ["servingruntimes", "inferenceservices"]  # the runtime exists first
    err = capsys.readouterr().err
    assert "waiting: generation 1 observed None, Ready=Unknown (RevisionMissing)" in err

    (overlay / "isvc.yaml").write_text((overlay / "isvc.yaml").read_text().replace(V1, V2))
    fake.requests.clear()
    assert run("apply", str(overlay)) == ExitCode.OK
    patches = [r for r in fake.writes() if r.method == "PATCH"]
    assert {r.content_type for r in patches} == {"application/apply-patch+yaml"}
    assert all(r.query["fieldManager"] == ["image-classifier-rollout"] for r in patches)
    isvc = fake.isvc()
    assert isvc["metadata"]["generation"] == 2
    assert isvc["status"]["observedGeneration"] == 2
    assert predictor_env(isvc) == V2
    assert traffic(isvc) == [("00002", 100)]


def test_apply_dry_run_prints_a_diff_and_stores_nothing(
    fake: FakeKube, run: Any, overlay: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    (overlay / "isvc.yaml").write_text((overlay / "isvc.yaml").read_text().replace(V1, V2))
    assert run("apply", str(overlay), "--dry-run") == ExitCode.OK
    out = capsys.readouterr().out
    changed = [(line[0], line[1:].strip()) for line in out.splitlines() if line[:1] in "+-"]
    assert ("-", f"value: {V1}") in changed and ("+", f"value: {V2}") in changed
    assert all(r.query.get("dryRun") == ["All"] for r in fake.writes())
    assert predictor_env(fake.isvc()) == V1
    assert ("servingruntimes", NS, "triton") not in fake.objects


def test_apply_drops_the_spec_a_canary_recorded(fake: FakeKube, run: Any, overlay: Path) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2) == ExitCode.OK
    assert PREVIOUS_SPEC_ANNOTATION in fake.isvc()["metadata"]["annotations"]
    assert run("apply", str(overlay)) == ExitCode.OK
    assert PREVIOUS_SPEC_ANNOTATION not in fake.isvc()["metadata"]["annotations"]


def test_apply_refuses_kinds_it_cannot_apply(
    fake: FakeKube, run: Any, overlay: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (overlay / "cm.yaml").write_text(
        '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}'
    )
    kustomization = overlay / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text().replace("runtime.yaml]", "runtime.yaml, cm.yaml]")
    )
    assert run("apply", str(overlay)) == ExitCode.UNSUPPORTED
    assert "v1/ConfigMap x" in capsys.readouterr().err
    assert fake.writes() == []


# -- status ------------------------------------------------------------------------------------


def test_status_table_and_json_show_the_split(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "20", "--storage-uri", V2) == ExitCode.OK
    capsys.readouterr()

    assert run("status") == ExitCode.OK
    out = capsys.readouterr().out
    assert "Ready:      True" in out
    assert f"URL:        http://{NAME}.{NS}.example.com" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["predictor", f"{NAME}-predictor-00002", "20%", "latest", "yes", "-"] in lines
    assert ["predictor", f"{NAME}-predictor-00001", "80%", "prev", "-"] in lines

    assert run("status", "--output", "json") == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True and doc["mode"] == "Knative"
    assert [
        (t["revision"], t["percent"]) for t in doc["traffic"] if t["component"] == "predictor"
    ] == [
        (f"{NAME}-predictor-00002", 20),
        (f"{NAME}-predictor-00001", 80),
    ]
    assert doc["components"]["predictor"]["latestRolledoutRevision"] == f"{NAME}-predictor-00001"
    assert doc["conditionsNotTrue"] == []


def test_status_lists_conditions_that_are_not_true(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    run("canary", "--percent", "10", "--storage-uri", BROKEN)
    capsys.readouterr()
    assert run("status") == ExitCode.OK
    out = capsys.readouterr().out
    assert "Conditions not True:" in out
    assert any(
        line.split()[:3] == ["PredictorReady", "False", "RevisionFailed"]
        for line in out.splitlines()
    )


# -- canary, promote, rollback in Serverless mode ------------------------------------------------


def test_canary_sends_the_percent_to_a_new_revision(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    assert (
        run(
            "canary",
            "--percent",
            "10",
            "--storage-uri",
            V2,
            "--image",
            "registry.local/predictor:2.0",
        )
        == 0
    )
    isvc = fake.isvc()
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == "registry.local/predictor:2.0"
    assert predictor_env(isvc) == V2
    # The transformer keeps the stable model's labels until promote.
    assert predictor_env(isvc, "transformer") == V1
    assert "canaryTrafficPercent" not in isvc["spec"]["transformer"]
    assert traffic(isvc) == [("00002", 10), ("00001", 90)]
    assert traffic(isvc, "transformer") == [("00001", 100)]
    recorded = json.loads(isvc["metadata"]["annotations"][PREVIOUS_SPEC_ANNOTATION])
    assert predictor_env({"spec": recorded}) == V1

    (patch,) = [r for r in fake.writes() if r.method == "PATCH"]
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"]["resourceVersion"]  # optimistic concurrency
    err = capsys.readouterr().err
    assert "waiting: generation 2 observed 1, Ready=Unknown (RevisionMissing)" in err
    assert "predictor latest=10% (want 10%)" in err
    assert f"transformer keeps STORAGE_URI={V1}" in err


def test_canary_can_change_only_the_transformer_image(fake: FakeKube, run: Any) -> None:
    fake.seed(knative_isvc())
    assert (
        run("canary", "--percent", "30", "--transformer-image", "registry.local/transformer:2") == 0
    )
    isvc = fake.isvc()
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert traffic(isvc, "transformer") == [("00002", 30), ("00001", 70)]
    assert traffic(isvc) == [("00001", 100)]


def test_promote_moves_all_traffic_to_the_canary(fake: FakeKube, run: Any) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2) == ExitCode.OK
    assert run("promote") == ExitCode.OK
    isvc = fake.isvc()
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert traffic(isvc) == [("00002", 100)]
    assert isvc["status"]["components"]["predictor"]["previousRolledoutRevision"].endswith("00001")
    # Promoted, the transformer follows the predictor's model in a revision of its own.
    assert predictor_env(isvc, "transformer") == V2
    assert traffic(isvc, "transformer") == [("00002", 100)]


def test_rollback_sends_all_traffic_back_to_the_previous_revision(fake: FakeKube, run: Any) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2) == ExitCode.OK
    assert run("rollback") == ExitCode.OK
    isvc = fake.isvc()
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert traffic(isvc) == [("00002", 0), ("00001", 100)]


def test_rollback_after_promote_restores_the_recorded_spec(fake: FakeKube, run: Any) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2) == ExitCode.OK
    assert run("promote") == ExitCode.OK
    assert run("rollback") == ExitCode.OK
    isvc = fake.isvc()
    assert predictor_env(isvc) == V1 and predictor_env(isvc, "transformer") == V1
    assert traffic(isvc) == [("00003", 100)]
    assert traffic(isvc, "transformer") == [("00003", 100)]
    assert PREVIOUS_SPEC_ANNOTATION not in isvc["metadata"]["annotations"]


def test_promote_and_rollback_without_a_canary_are_usage_errors(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    assert run("promote") == ExitCode.USAGE
    assert "no canary in progress" in capsys.readouterr().err
    assert run("rollback") == ExitCode.USAGE
    assert "nothing to roll back" in capsys.readouterr().err
    assert run("canary", "--percent", "10") == ExitCode.USAGE
    assert fake.writes() == []


def test_failing_canary_exits_with_the_reason(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", BROKEN) == ExitCode.ROLLOUT_FAILED
    err = capsys.readouterr().err
    assert "RevisionFailed" in err and f"{NAME}-predictor-00002 failed" in err
    assert traffic(fake.isvc()) == [("00001", 100)]


def test_failing_canary_with_auto_rollback_restores_the_previous_spec(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    code = run("canary", "--percent", "10", "--storage-uri", BROKEN, "--auto-rollback")
    assert code == ExitCode.ROLLOUT_FAILED
    assert "canary rolled back after" in capsys.readouterr().err
    isvc = fake.isvc()
    assert predictor_env(isvc) == V1 and predictor_env(isvc, "transformer") == V1
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert traffic(isvc) == [("00003", 100)]
    assert traffic(isvc, "transformer") == [("00001", 100)]
    ready = next(c for c in isvc["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_auto_rollback_that_cannot_roll_back_keeps_the_canary_failure(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    applied_canary = knative_isvc()  # as `apply manifests/overlays/canary/knative` leaves it
    applied_canary["spec"]["predictor"]["canaryTrafficPercent"] = 10
    fake.seed(applied_canary)
    code = run("canary", "--percent", "10", "--storage-uri", BROKEN, "--auto-rollback")
    assert code == ExitCode.ROLLOUT_FAILED
    err = capsys.readouterr().err
    assert "RevisionFailed" in err and "auto-rollback failed too: nothing to roll back" in err


def test_timeout_when_the_controller_never_catches_up(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    fake.frozen = True
    started = time.monotonic()
    assert run("canary", "--percent", "10", "--storage-uri", V2, timeout=0.3) == ExitCode.TIMEOUT
    assert time.monotonic() - started < 3
    err = capsys.readouterr().err
    assert "timed out after 0.3s" in err and "generation 2 observed 1" in err


def test_dry_run_prints_the_patch_and_sends_nothing(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "25", "--storage-uri", V2, "--dry-run") == ExitCode.OK
    out = capsys.readouterr().out
    patch = json.loads(out[out.index("{") :])
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert V2 in json.dumps(patch["spec"]["predictor"]["containers"])
    assert fake.writes() == []
    assert predictor_env(fake.isvc()) == V1


def test_a_concurrent_change_is_rejected_not_overwritten(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(knative_isvc())

    def someone_else_writes(plural: str, namespace: str, name: str) -> None:
        fake.objects[(plural, namespace, name)]["metadata"]["resourceVersion"] = "9999"

    fake.before_patch = someone_else_writes
    assert run("canary", "--percent", "10", "--storage-uri", V2) == ExitCode.REJECTED
    assert "409" in capsys.readouterr().err
    assert predictor_env(fake.isvc()) == V1


# -- Standard (RawDeployment) mode -------------------------------------------------------------


def test_standard_canary_promote_uses_spec_canary(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(standard_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2, "--canary-name", "v2") == 0
    isvc = fake.isvc()
    (entry,) = isvc["spec"]["canary"]
    assert entry["trafficPercent"] == 10
    assert entry["predictor"]["name"] == "v2"
    assert entry["predictor"]["model"]["storageUri"] == V2
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1  # main predictor untouched
    assert f"transformer keeps STORAGE_URI={V1}" in capsys.readouterr().err

    assert run("status") == ExitCode.OK
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["predictor", f"{NAME}-predictor", "90%", "main", "-"] in lines
    assert ["predictor", f"{NAME}-v2-predictor", "10%", "canary", "yes", "True"] in lines

    assert run("promote") == ExitCode.OK
    isvc = fake.isvc()
    assert "canary" not in isvc["spec"]
    assert isvc["spec"]["predictor"]["name"] == "v2"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V2
    assert predictor_env(isvc, "transformer") == V2
    assert isvc["status"]["canaryStatuses"] == []


def test_standard_rollback_removes_the_canary(fake: FakeKube, run: Any) -> None:
    fake.seed(standard_isvc())
    assert run("canary", "--percent", "50", "--image", "registry.local/triton:25") == 0
    assert run("rollback") == ExitCode.OK
    isvc = fake.isvc()
    assert "canary" not in isvc["spec"]
    assert isvc["spec"]["predictor"] == standard_isvc()["spec"]["predictor"]


def test_standard_failing_canary_auto_rolls_back(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(standard_isvc())
    code = run("canary", "--percent", "10", "--storage-uri", BROKEN, "--auto-rollback")
    assert code == ExitCode.ROLLOUT_FAILED
    err = capsys.readouterr().err
    assert "BlockedByFailedLoad" in err and "canary rolled back" in err
    assert "canary" not in fake.isvc()["spec"]


def test_standard_mode_refuses_a_transformer_canary(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.seed(standard_isvc())
    code = run("canary", "--percent", "10", "--transformer-image", "registry.local/transformer:2")
    assert code == ExitCode.UNSUPPORTED
    assert "Standard mode canaries carry only a predictor" in capsys.readouterr().err
    assert fake.writes() == []


# -- cluster, CRD and object errors ------------------------------------------------------------


def test_crd_missing(fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake.crd_installed = False
    assert run("status") == ExitCode.CRD_MISSING
    assert "InferenceService CRD not installed" in capsys.readouterr().err


def test_service_missing(fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run("canary", "--percent", "10", "--storage-uri", V2, "--name", "nope")
        == ExitCode.NOT_FOUND
    )
    assert "inferenceservices/nope in namespace default: not found" in capsys.readouterr().err


def test_cluster_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(f"http://127.0.0.1:{port}"))
    assert main(["status", "--kubeconfig", str(path)]) == ExitCode.UNREACHABLE
    err = capsys.readouterr().err
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in err
    assert f"kubeconfig {path}" in err


def test_missing_kubeconfig_says_which(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent"
    assert main(["status", "--kubeconfig", str(missing)]) == ExitCode.UNREACHABLE
    assert f"no kubeconfig at {missing}" in capsys.readouterr().err


def test_analysis_flags_without_analysis_are_refused_not_ignored(
    fake: FakeKube, run: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`canary --percent` would step nothing and judge nothing: flags only --analysis reads
    are refused (usage), so nobody believes a canary is being judged when it is not."""
    fake.seed(knative_isvc())
    code = run("canary", "--storage-uri", V2, "--percent", "10", "--min-requests", "30")
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "--min-requests only applies with --analysis" in err, err
    code = run("canary", "--storage-uri", V2, "--percent", "10", "--steps", "5,10", "--waits", "1")
    assert code == ExitCode.USAGE
    assert "--steps, --waits only apply with --analysis" in capsys.readouterr().err
    assert fake.writes() == []
    # Their defaults, given explicitly, change nothing: the canary goes ahead.
    assert run("canary", "--storage-uri", V2, "--percent", "10", "--waits", "3") == ExitCode.OK


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in ExitCode:
        assert f"  {int(code)}  " in out
    assert main(["canary"]) == ExitCode.USAGE  # --percent (or --analysis) is required


# Keep this test last: it reads what every test above sent.
def test_the_rollout_role_grants_exactly_what_the_cli_uses() -> None:
    if not SENT:
        pytest.skip("run the whole of tests/test_rollout.py: this compares what its tests sent")
    role = yaml.safe_load(ROLE.read_text())
    assert role["kind"] == "Role"  # namespaced: the CLI works in one namespace
    granted = {
        (verb, group, resource)
        for rule in role["rules"]
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert "*" not in {part for grant in granted for part in grant}
    assert SENT == granted, f"used but not granted: {SENT - granted}; granted, unused: " + str(
        granted - SENT
    )
