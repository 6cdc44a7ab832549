"""The model registry against a real MLflow tracking server on loopback (`make mlflow` installs
it in .venv-mlflow): registering the model repository, resolving models:/ URIs by version and by
alias, the errors, and `canary|apply --model` recording the version on the InferenceService
(the cluster side through the fake Kubernetes API, as tests/test_rollout.py does)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.kube_api import FakeKube
from test_rollout import fake, knative_isvc, overlay, predictor_env, run  # noqa: F401
from test_serve_script import wait_until

from harness import needs
from harness.prometheus import start_prometheus
from harness.repositories import version_repository
from harness.servers import ROOT, free_port
from rollout.errors import UsageError
from rollout.registry import MlflowRegistry, ModelUri, RegistryError
from rollout.state import MODEL_ANNOTATION, PREVIOUS_MODEL_ANNOTATION

MODEL = "image-classifier"


@dataclass(frozen=True)
class Mlflow:
    url: str
    artifacts: Path  # the server's --artifacts-destination


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    """`mlflow server`: SQLite backend store and a local artifact destination in a temp
    directory, bound to 127.0.0.1."""
    binary = ROOT / ".venv-mlflow" / "bin" / "mlflow"
    if not binary.exists():
        needs.missing("no MLflow: `make mlflow` installs it in .venv-mlflow (make test does)")
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (home / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
        ],
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError((home / "server.log").read_text()[-3000:])
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 120, "mlflow server did not answer /health")
        yield Mlflow(url, home / "artifacts")
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def registered(mlflow: Mlflow, model_repository: Path) -> tuple[str, str]:
    """Two versions of the model repository; the second carries the alias challenger."""
    registry = MlflowRegistry(mlflow.url, artifact_root=str(mlflow.artifacts))
    try:
        first = registry.register(model_repository, MODEL, MODEL)
        second = registry.register(model_repository, MODEL, MODEL, alias="challenger")
    finally:
        registry.close()
    return first.version, second.version


def test_a_registered_repository_resolves_by_version_and_by_alias(
    mlflow: Mlflow, model_repository: Path, registered: tuple[str, str]
) -> None:
    first, second = registered
    assert int(second) == int(first) + 1
    registry = MlflowRegistry(mlflow.url, artifact_root=str(mlflow.artifacts))
    try:
        by_version = registry.resolve(ModelUri.parse(f"models:/{MODEL}/{first}"))
        by_alias = registry.resolve(ModelUri.parse(f"models:/{MODEL}@challenger"))
    finally:
        registry.close()
    assert (by_version.version, by_alias.version, by_alias.alias) == (first, second, "challenger")
    # The version directory the predictor serves (its metrics' model_version), as a tag.
    assert by_version.served_version == "1" and by_version.record()["servedVersion"] == "1"
    # Uploaded as a run's artifacts (MLflow registers versions from runs), behind the proxy.
    assert by_version.source.startswith("mlflow-artifacts:/0/")
    assert by_version.source.endswith("/artifacts/model_repository")
    assert by_version.storage_uri != by_alias.storage_uri
    # The storage URI is where the artifacts really are: the repository, file for file.
    stored = Path(by_alias.storage_uri)
    expected = sorted(
        p.relative_to(model_repository).as_posix()
        for p in model_repository.rglob("*")
        if p.is_file()
    )
    assert (
        sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file())
        == expected
    )
    config = f"{MODEL}/config.pbtxt"
    assert (stored / config).read_bytes() == (model_repository / config).read_bytes()


def test_registry_errors_say_what_is_unknown(
    mlflow: Mlflow, registered: tuple[str, str], tmp_path: Path
) -> None:
    registry = MlflowRegistry(mlflow.url, artifact_root=str(mlflow.artifacts))
    try:
        with pytest.raises(RegistryError, match="no registered model named 'nope'"):
            registry.resolve(ModelUri.parse("models:/nope/1"))
        with pytest.raises(RegistryError, match=r"has no version 99 \(versions: 1, 2"):
            registry.resolve(ModelUri.parse(f"models:/{MODEL}/99"))
        with pytest.raises(RegistryError, match=r"has no alias 'champion' \(aliases: challenger\)"):
            registry.resolve(ModelUri.parse(f"models:/{MODEL}@champion"))
        with pytest.raises(RegistryError, match="no registered model named 'nope'"):
            registry.resolve(ModelUri.parse("models:/nope@champion"))
        # Not a model repository: refused before anything is uploaded or registered.
        (tmp_path / MODEL).mkdir()
        (tmp_path / MODEL / "config.pbtxt").write_text("this is not a model config")
        with pytest.raises(UsageError, match="not a model repository"):
            registry.register(tmp_path, MODEL, MODEL)
        with pytest.raises(RegistryError, match=r"has no version 3 \(versions: 1, 2\)"):
            registry.resolve(ModelUri.parse(f"models:/{MODEL}/3"))
    finally:
        registry.close()
    # Without --artifact-root a proxied source cannot become a storageUri: said so.
    plain = MlflowRegistry(mlflow.url)
    try:
        with pytest.raises(UsageError, match="give --artifact-root"):
            plain.resolve(ModelUri.parse(f"models:/{MODEL}/1"))
    finally:
        plain.close()
    down = MlflowRegistry(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(RegistryError, match="unreachable"):
            down.resolve(ModelUri.parse(f"models:/{MODEL}/1"))
    finally:
        down.close()
    for text in ("models:/x", "models:/x/0", "models:/x@", "runs:/abc/model", "s3://b/m"):
        with pytest.raises(UsageError, match="expected models:/NAME/VERSION"):
            ModelUri.parse(text)


def registry_args(mlflow: Mlflow) -> list[str]:
    return ["--registry", mlflow.url, "--artifact-root", str(mlflow.artifacts)]


def serving(fake: FakeKube, run: Any, mlflow: Mlflow, version: str) -> None:  # noqa: F811
    """An InferenceService serving registry version `version` (a canary of it, promoted)."""
    fake.seed(knative_isvc())
    model = f"models:/{MODEL}/{version}"
    assert run("canary", "--percent", "10", "--model", model, *registry_args(mlflow)) == 0
    assert run("promote") == 0


def test_canary_with_a_registry_model_records_it_and_promote_and_rollback_keep_track(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    mlflow: Mlflow,
    registered: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registered
    serving(fake, run, mlflow, first)
    capsys.readouterr()
    assert (
        run(
            "canary",
            "--percent",
            "20",
            "--model",
            f"models:/{MODEL}@challenger",
            *registry_args(mlflow),
        )
        == 0
    )
    # Moving the canary's traffic, or giving the same version again, keeps what it replaces.
    assert (
        run(
            "canary",
            "--percent",
            "30",
            "--model",
            f"models:/{MODEL}@challenger",
            *registry_args(mlflow),
        )
        == 0
    )
    isvc = fake.isvc()
    annotations = isvc["metadata"]["annotations"]
    model, previous = (
        json.loads(annotations[MODEL_ANNOTATION]),
        json.loads(annotations[PREVIOUS_MODEL_ANNOTATION]),
    )
    assert (model["version"], model["alias"], previous["version"]) == (second, "challenger", first)
    assert predictor_env(isvc) == model["storageUri"]
    assert f"models:/{MODEL}@challenger: version {second} at " in capsys.readouterr().err

    assert run("status", "-o", "json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"]["version"] == second and status["previousModel"]["version"] == first
    assert run("status") == 0
    text = capsys.readouterr().out
    assert f"Model:      models:/{MODEL}/{second} (@challenger) -> " in text
    assert f"Previous:   models:/{MODEL}/{first} -> " in text

    assert run("rollback") == 0
    annotations = fake.isvc()["metadata"]["annotations"]
    assert json.loads(annotations[MODEL_ANNOTATION])["version"] == first
    assert PREVIOUS_MODEL_ANNOTATION not in annotations


def test_an_unknown_registry_version_fails_before_any_cluster_call(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    mlflow: Mlflow,
    registered: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.seed(knative_isvc())
    before = len(fake.requests)
    code = run(
        "canary", "--percent", "10", "--model", f"models:/{MODEL}/99", *registry_args(mlflow)
    )
    assert code == 5  # not found
    assert "has no version 99" in capsys.readouterr().err
    assert len(fake.requests) == before
    assert run("canary", "--percent", "10", "--model", f"models:/{MODEL}/1") == 2  # no registry


def test_apply_with_a_registry_model_points_both_components_at_it(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    overlay: Path,  # noqa: F811
    mlflow: Mlflow,
    registered: tuple[str, str],
) -> None:
    first, _ = registered
    # An InferenceService already there: apply patches it (creating one is not in the rollout
    # Role, which tests/test_rollout.py compares with what the CLI sends).
    fake.seed(knative_isvc())
    assert (
        run("apply", str(overlay), "--model", f"models:/{MODEL}/{first}", *registry_args(mlflow))
        == 0
    )
    isvc = fake.isvc()
    model = json.loads(isvc["metadata"]["annotations"][MODEL_ANNOTATION])
    assert model["version"] == first
    assert predictor_env(isvc) == model["storageUri"]
    assert predictor_env(isvc, "transformer") == model["storageUri"]


def test_register_from_the_command_line(
    mlflow: Mlflow, model_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rollout.cli import main

    assert (
        main(
            [
                "register",
                str(model_repository),
                "--registered-name",
                "cli-model",
                "--alias",
                "champion",
                *registry_args(mlflow),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["name"], out["version"], out["alias"]) == ("cli-model", "1", "champion")


def test_canary_analysis_compares_the_served_versions_the_registry_recorded(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    mlflow: Mlflow,
    registered: tuple[str, str],
    model_repository: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = registered
    serving(fake, run, mlflow, first)
    model_file = model_repository / MODEL / "1" / "model.pt"
    newer = version_repository(model_repository, tmp_path / "repo", "2", model_file)
    registry = MlflowRegistry(mlflow.url, artifact_root=str(mlflow.artifacts))
    try:
        third = registry.register(newer, MODEL, MODEL).version
    finally:
        registry.close()
    capsys.readouterr()
    writes = len(fake.writes())
    with start_prometheus({}, tmp_path / "prometheus") as prometheus:
        analysis = ["--analysis", "--prometheus", prometheus.url, *registry_args(mlflow)]
        # Both registered from the same repository: version directory 1 twice, which the
        # metrics cannot tell apart.
        assert run("canary", "--model", f"models:/{MODEL}/{second}", *analysis) == 2
        assert "both serve model_version '1'" in capsys.readouterr().err
        assert len(fake.writes()) == writes
        assert run("canary", "--model", f"models:/{MODEL}/{third}", *analysis, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "then step through 10%, 25%, 50%, judging every 300 s" in out
    assert "(canary model_version 2 against 1 at " in out
