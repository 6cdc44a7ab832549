"""The images, built and run as the manifests run them (`make image-test`; not in `make test`).

The transformer, CPU predictor and batch images are built on a plain Debian base made with
debootstrap (harness/containers.py), then run with the container args, env, user, probes and
volumes of the rendered `cpu` overlay (and the batch Job), plus what the KServe controller
injects into a custom transformer: read-only root with /tmp a tmpfs, no capabilities, the
model repository (OpenVINO INT8, as the overlay serves) read-only at /mnt/models. Then real
clients: V1, V2 REST and V2 gRPC with the API key, a bad input, both servers' probes, SIGTERM
draining as the manifests' grace period allows, and `python -m batch` from its image into the
CI PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from batch_db import POSTGRES_ENV
from conftest import DATA, MODEL_NAME, grpc_calls
from test_manifests import one, render
from test_observability import b64

from harness import containers, needs
from harness.databases import fresh_postgresql_database
from harness.repositories import engine_repository
from harness.servers import free_ports

pytestmark = pytest.mark.containers

OVERLAY = "cpu"
USER_ID = 1000
TOP1 = "espresso"


@dataclass(frozen=True)
class Images:
    engine: containers.Engine
    tags: dict[str, str]


@dataclass(frozen=True)
class Deployed:
    images: Images
    predictor: containers.Container
    transformer: containers.Container
    transformer_url: str
    transformer_grpc: str
    predictor_grpc_port: int
    readiness: str
    liveness: str
    key: str
    grace_s: float


def rendered(path: str) -> list[dict[str, Any]]:
    """The rendered documents of manifests/<path> (test_manifests' renderer), or missing()
    without kubectl."""
    needs.kubectl()
    return render(path)


def container_of(spec: dict[str, Any]) -> dict[str, Any]:
    [container] = spec["containers"]
    return container


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag`'s value replaced (or the flag appended)."""
    if flag in args:
        index = args.index(flag)
        return [*args[: index + 1], value, *args[index + 2 :]]
    return [*args, flag, value]


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal env (valueFrom entries name optional Secrets not made here)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    engine = containers.find_engine(tmp_path_factory.mktemp("containers"))
    if engine is None:
        needs.missing("no container engine: docker with a daemon, or podman and runc")
    base = containers.ensure_base(engine)
    tags = {name: containers.build(engine, name, base) for name in containers.IMAGES}
    sizes = {name: containers.size_mb(engine, tag) for name, tag in tags.items()}
    print(f"\nimage sizes on {base}: " + ", ".join(f"{n} {mb} MB" for n, mb in sizes.items()))
    return Images(engine, tags)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository the cpu overlay serves: OpenVINO INT8."""
    return engine_repository("openvino-int8", tmp_path_factory)


@pytest.fixture(scope="module")
def deployed(
    images: Images, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    service = one(rendered(f"overlays/{OVERLAY}"), "InferenceService")
    predictor_spec, transformer_spec = service["spec"]["predictor"], service["spec"]["transformer"]
    predictor_c, transformer_c = container_of(predictor_spec), container_of(transformer_spec)
    for container in (predictor_c, transformer_c):
        context = container["securityContext"]
        assert context["runAsUser"] == USER_ID and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
    engine = images.engine
    # Each pod has its own ports; on the host's network each server gets free ones instead.
    p_http, p_grpc, t_http, t_grpc = free_ports(4)
    predictor_args = with_flag(
        with_flag(list(predictor_c["args"]), "--http_port", str(p_http)),
        "--grpc_port",
        str(p_grpc),
    )
    predictor = containers.run(
        engine,
        "ic-test-predictor",
        images.tags["predictor-cpu"],
        predictor_args,
        plain_env(predictor_c),
        USER_ID,
        repository,
    )
    # The API key Secret the transformer's volume mounts, made here.
    key = secrets.token_urlsafe(32)
    [key_mount] = [m for m in transformer_c["volumeMounts"] if m["name"] == "api-keys"]
    keys = tmp_path_factory.mktemp("api-keys")
    (keys / "api-keys").write_text(key + "\n")
    keys.chmod(0o755)
    (keys / "api-keys").chmod(0o444)
    # What the KServe controller injects into a custom transformer, then its own flags.
    injected = [
        "--model_name", MODEL_NAME,
        "--predictor_host", f"127.0.0.1:{p_grpc}",
        "--http_port", str(t_http),
    ]  # fmt: skip
    transformer_args = with_flag([*injected, *transformer_c["args"]], "--grpc_port", str(t_grpc))
    transformer = containers.run(
        engine,
        "ic-test-transformer",
        images.tags["transformer"],
        transformer_args,
        plain_env(transformer_c),
        USER_ID,
        repository,
        volumes={str(keys): f"{key_mount['mountPath']}:ro"},
    )
    readiness = transformer_c["readinessProbe"]["httpGet"]
    liveness = transformer_c["livenessProbe"]["httpGet"]
    assert readiness["port"] == liveness["port"] == 8080  # the injected --http_port
    grace = float(service["spec"]["transformer"].get("terminationGracePeriodSeconds", 30))
    url = f"http://127.0.0.1:{t_http}"
    try:
        wait_ready(f"{url}{readiness['path']}", transformer, predictor)
        yield Deployed(
            images,
            predictor,
            transformer,
            url,
            f"127.0.0.1:{t_grpc}",
            p_grpc,
            f"{url}{readiness['path']}",
            f"{url}{liveness['path']}",
            key,
            grace,
        )
    finally:
        for running in (transformer, predictor):
            print(f"\n--- {running.name} ---\n{running.logs()[-3000:]}")
            running.remove()


def wait_ready(url: str, *watched: containers.Container, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}\n{c.logs()[-2000:]}" for c in watched)
            raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s\n{logs}")
        time.sleep(0.5)


def bearer(deployed: Deployed) -> dict[str, str]:
    return {"Authorization": f"Bearer {deployed.key}"}


def test_the_transformer_image_has_no_torch(images: Images) -> None:
    done = images.engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python", images.tags["transformer"],
        "-c", "import importlib.util as u; print(u.find_spec('torch') is None)",
    )  # fmt: skip
    assert done.stdout.decode().strip() == "True"


def test_v1_through_both_containers(deployed: Deployed) -> None:
    body = {"instances": [{"image": {"b64": b64(DATA / "coffee.jpg")}}]}
    url = f"{deployed.transformer_url}/v1/models/{MODEL_NAME}:predict"
    assert httpx.post(url, json=body, timeout=60).status_code == 401  # the key is required
    response = httpx.post(url, json=body, headers=bearer(deployed), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0][0]["label"] == TOP1


def test_v2_rest_through_both_containers(deployed: Deployed) -> None:
    client = httpclient.InferenceServerClient(deployed.transformer_url.removeprefix("http://"))
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(
        np.array([(DATA / "coffee.jpg").read_bytes()], dtype=np.object_), binary_data=True
    )
    result = client.infer(MODEL_NAME, [tensor], headers=bearer(deployed))
    assert result.as_numpy("label")[0][0].decode() == TOP1


def test_v2_grpc_through_both_containers(deployed: Deployed) -> None:
    [result] = grpc_calls(
        [
            {
                "op": "infer_images",
                "url": deployed.transformer_grpc,
                "model": MODEL_NAME,
                "files": [str(DATA / "coffee.jpg")],
                "headers": {"authorization": f"Bearer {deployed.key}"},
            }
        ]
    )
    assert result["ok"] and result["label"][0][0] == TOP1, result


def test_a_bad_input_is_a_400_and_both_keep_serving(deployed: Deployed) -> None:
    url = f"{deployed.transformer_url}/v1/models/{MODEL_NAME}:predict"
    bad = httpx.post(
        url, json={"instances": [{"image": {"b64": "bm90IGFuIGltYWdl"}}]}, headers=bearer(deployed)
    )
    assert bad.status_code == 400 and "image 0" in bad.json()["error"], bad.text
    test_v1_through_both_containers(deployed)


def test_the_probes_of_the_manifests_answer(deployed: Deployed) -> None:
    assert httpx.get(deployed.readiness, timeout=5).status_code == 200
    assert httpx.get(deployed.liveness, timeout=5).status_code == 200
    # The predictor's probes are TCP connections to its gRPC port.
    with socket.create_connection(("127.0.0.1", deployed.predictor_grpc_port), timeout=5):
        pass


def test_sigterm_drains_within_the_grace_period_and_exits_zero(deployed: Deployed) -> None:
    """Run last in this module: it stops the transformer."""
    started = time.monotonic()
    deployed.transformer.signal("TERM")
    # Not ready at once (the endpoints drop it), still answering while it drains.
    deadline = time.monotonic() + 5
    while httpx.get(deployed.readiness, timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "readiness did not turn 503 after SIGTERM"
        time.sleep(0.1)
    test_v1_through_both_containers(deployed)  # in flight during the drain: served
    code = deployed.transformer.wait(deployed.grace_s)
    took = time.monotonic() - started
    print(f"\ntransformer: SIGTERM to exit {code} in {took:.1f} s (grace {deployed.grace_s:.0f} s)")
    assert code == 0 and took < deployed.grace_s


def test_the_batch_job_writes_its_predictions_to_postgresql(
    images: Images, repository: Path
) -> None:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        needs.missing(f"no PostgreSQL for the batch image (${POSTGRES_ENV}; .ci/postgres)")
    job = one(rendered("batch"), "Job")
    container = container_of(job["spec"]["template"]["spec"])
    shards = int(job["spec"]["completions"])
    with fresh_postgresql_database(admin_url, "image_test") as url:
        for index in range(shards):  # the Indexed Job's pods, one after another
            batch = containers.run(
                images.engine,
                f"ic-test-batch-{index}",
                images.tags["batch"],
                list(container["args"]),
                {"BATCH_DB_URL": url, "JOB_COMPLETION_INDEX": str(index)},
                USER_ID,
                repository,
                volumes={str(DATA): "/data/images:ro"},
            )
            try:
                assert batch.wait(600) == 0, batch.logs()[-3000:]
            finally:
                batch.remove()
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT count(*) FROM predictions")).scalar()
        engine.dispose()
    photos = [p for p in DATA.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert rows == len(photos), (rows, len(photos))
