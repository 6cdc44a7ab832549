"""manifests/batch: the Indexed Job and the nightly CronJob, rendered and checked.

Rendered with `kubectl kustomize`, validated strictly against the real Kubernetes schemas (the
`kubernetes-validate` package ships them, offline), then checked for what the job relies on:
one shard per completion index, the failure policy that matches the command's exit statuses,
the database URL from a Secret, the servers' hardening, and identical pod specs in both.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batch.job import EXIT_FAILED_IMAGES, EXIT_STOPPED, EXIT_USAGE
from batch.settings import DB_ENV, Shard, parser

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = shutil.which("kubectl")
# The oldest Kubernetes with backoffLimitPerIndex and FailIndex in GA, and the newest schema.
KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())

pytestmark = pytest.mark.usefixtures("kubectl")  # skips without kubectl, fails under CI


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    """The kustomize output, by kind."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / "manifests" / "batch")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return {doc["kind"]: doc for doc in docs}


def server_hardening() -> dict[str, Any]:
    """The securityContext every server container has (manifests/base)."""
    isvc = yaml.safe_load((ROOT / "manifests" / "base" / "inferenceservice.yaml").read_text())
    context: dict[str, Any] = isvc["spec"]["predictor"]["containers"][0]["securityContext"]
    return context


def test_renders_a_job_and_a_cronjob(rendered: dict[str, dict[str, Any]]) -> None:
    assert sorted(rendered) == ["CronJob", "Job"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_valid_against_kubernetes_schemas(
    rendered: dict[str, dict[str, Any]], version: str
) -> None:
    for doc in rendered.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_mistakes(rendered: dict[str, dict[str, Any]]) -> None:
    """The validator is not a rubber stamp: a misspelt field and a wrong type are refused."""
    job = yaml.safe_load(yaml.safe_dump(rendered["Job"]))
    job["spec"]["paralellism"] = 4
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)
    job = yaml.safe_load(yaml.safe_dump(rendered["Job"]))
    job["spec"]["completions"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


def test_one_shard_per_index(rendered: dict[str, dict[str, Any]]) -> None:
    spec = rendered["Job"]["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = spec["template"]["spec"]["containers"]
    args = parser().parse_args(container["args"])  # real flags of the real command
    assert spec["completions"] == spec["parallelism"] == args.shard_count
    assert args.shard is None and args.url is None  # the shard comes from the index
    assert Shard(spec["completions"] - 1, args.shard_count)  # every index is a valid shard
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert Path(mounts["model"]["mountPath"]) == args.model_dir
    assert Path(mounts["images"]["mountPath"]) == args.source
    assert mounts["images"]["readOnly"] is True


def test_failure_policy_follows_exit_statuses(rendered: dict[str, dict[str, Any]]) -> None:
    spec = rendered["Job"]["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    actions = {
        code: rule["action"]
        for rule in spec["podFailurePolicy"]["rules"]
        if "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    }
    # Failed images: the shard is done (no retry); bad flags: stop; unreachable: retried.
    assert actions == {EXIT_FAILED_IMAGES: "FailIndex", EXIT_USAGE: "FailJob"}
    assert EXIT_STOPPED not in actions
    assert spec["backoffLimitPerIndex"] >= 1


def test_database_url_from_a_secret(rendered: dict[str, dict[str, Any]]) -> None:
    (container,) = rendered["Job"]["spec"]["template"]["spec"]["containers"]
    assert "--db" not in container["args"]
    (env,) = [e for e in container["env"] if e["name"] == DB_ENV]
    assert set(env["valueFrom"]) == {"secretKeyRef"}


def test_cronjob_runs_the_same_job_nightly_never_twice(
    rendered: dict[str, dict[str, Any]],
) -> None:
    cron = rendered["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert len(cron["schedule"].split()) == 5
    assert cron["jobTemplate"]["spec"] == rendered["Job"]["spec"]


def test_hardened_as_the_servers(rendered: dict[str, dict[str, Any]]) -> None:
    pod = rendered["Job"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["securityContext"] == server_hardening(), container["name"]
        resources = container["resources"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"]
        image = container["image"]
        assert ":" in image and not image.endswith(":latest"), image
    writable = {
        m["mountPath"]
        for c in pod["containers"]
        for m in c["volumeMounts"]
        if not m.get("readOnly")
    }
    assert writable == {"/tmp"}
