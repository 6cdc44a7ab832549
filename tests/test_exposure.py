"""What the servers expose: the reviewed inventory, the closed control plane, the opt-in flag.

The real predictor and transformer (session fixtures) are asked over REST and gRPC, as a user
would; their start-up log states the routes they registered, which must all be reviewed in
common/exposure.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import MODEL_NAME, Server, start_server
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as generated
from test_serving import assert_good_request_still_works

from common import kserve_compat
from common.exposure import (
    CONTROL,
    GRPC_METHODS,
    KEYED,
    OPEN,
    REFUSED,
    REST_ROUTES,
    ExposurePolicy,
    rest_entry,
)

# Routes kserve registers only with --enable_docs_url (refused all the same).
DOCS_ONLY = {("GET", "/docs"), ("GET", "/docs/oauth2-redirect")}
# Routes only the transformer registers (its demo page, transformer/demo; its drift report;
# labels and accuracy, transformer/ground_truth.py, answering 501 without the prediction log).
TRANSFORMER_ONLY = {
    ("GET", "/demo/demo.css"),
    ("GET", "/demo/demo.js"),
    ("GET", "/v2/models/{model_name}/drift"),  # drift report, vision/drift.py
    ("POST", "/v2/models/{model_name}/labels"),
    ("GET", "/v2/models/{model_name}/accuracy"),
}


def expected_routes(component: str) -> set[tuple[str, str]]:
    """The reviewed routes a component registers."""
    return set(REST_ROUTES) - DOCS_ONLY - (TRANSFORMER_ONLY if component == "predictor" else set())


CONTROL_REST = [
    ("POST", f"/v2/repository/models/{MODEL_NAME}/unload"),
    ("POST", f"/v2/repository/models/{MODEL_NAME}/load"),
]


def example_path(template: str) -> str:
    """A concrete request path for a route template."""
    return template.replace("{model_name}", MODEL_NAME).replace("{model_version}", "1")


def logged_inventory(server: Server, kind: str) -> dict[str, set[tuple[str, str]]]:
    """What the server's start-up log says it served, refused and found unreviewed."""
    found: dict[str, set[tuple[str, str]]] = {k: set() for k in ("served", "refused", "unreviewed")}
    pattern = re.compile(rf"exposure: {kind} (served|refused|unreviewed)[^:]*: (.*)$")
    for line in server.tail(10**7).splitlines():
        match = pattern.search(line)
        if match and match.group(2).strip() != "-":
            for item in match.group(2).split(" (decide")[0].split(", "):
                method, _, path = item.strip().partition(" ")
                found[match.group(1)].add((method, path) if path else ("", method))
    return found


def grpc_stub(server: Server) -> generated.GRPCInferenceServiceStub:
    return generated.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))


def grpc_code(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=10)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


# --- the inventory ---------------------------------------------------------------------------


def test_every_grpc_method_kserve_registers_is_reviewed() -> None:
    assert set(kserve_compat.grpc_rpc_names()) == set(GRPC_METHODS)


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_every_rest_route_the_server_registers_is_reviewed(
    component: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(component)
    rest = logged_inventory(server, "REST")
    assert not rest["unreviewed"], f"review these in common/exposure.py: {rest['unreviewed']}"
    registered = rest["served"] | rest["refused"]
    assert registered == expected_routes(component), "stale or missing entries in REST_ROUTES"
    policy = ExposurePolicy(control_plane=False)
    assert rest["served"] == {key for key in registered if policy.serves(REST_ROUTES[key])}
    grpc_log = logged_inventory(server, "gRPC")
    assert {name for _, name in grpc_log["served"]} == {
        name for name, entry in GRPC_METHODS.items() if policy.serves(entry)
    }
    assert not grpc_log["unreviewed"]


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_each_reviewed_route_answers_as_decided(
    component: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(component)
    for (method, template), entry in REST_ROUTES.items():
        if (method, template) not in expected_routes(component):
            continue
        path = example_path(template)
        assert rest_entry(method, path) == entry, (method, template)  # the matcher agrees
        # Inference routes get an empty body: a 4xx other than 404 proves the route is there.
        response = httpx.request(method, f"{server.url}{path}", json={}, timeout=30)
        label = f"{component}: {method} {template} ({entry.access.value})"
        if entry.access in (OPEN, KEYED):
            assert response.status_code not in (404, 405), (label, response.text)
        else:
            assert entry.access in (REFUSED, CONTROL)
            assert response.status_code == 404, (label, response.text)
    assert server.alive()


def test_unknown_paths_and_methods_are_404(transformer: Server) -> None:
    for method, path in [("GET", "/nothing"), ("DELETE", f"/v2/models/{MODEL_NAME}")]:
        assert httpx.request(method, f"{transformer.url}{path}").status_code == 404


# --- the model repository API is off ----------------------------------------------------------


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_unload_is_refused_and_the_model_keeps_serving(
    component: str, request: pytest.FixtureRequest, transformer: Server
) -> None:
    server: Server = request.getfixturevalue(component)
    for method, path in CONTROL_REST:
        response = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert response.status_code == 404, response.text
        assert "not served" in response.json()["error"]
    stub = grpc_stub(server)
    unload = pb.RepositoryModelUnloadRequest(model_name=MODEL_NAME)
    load = pb.RepositoryModelLoadRequest(model_name=MODEL_NAME)
    assert grpc_code(stub.RepositoryModelUnload, unload) == grpc.StatusCode.UNIMPLEMENTED
    assert grpc_code(stub.RepositoryModelLoad, load) == grpc.StatusCode.UNIMPLEMENTED
    # RepositoryIndex is not in kserve's service at all.
    index = grpc.insecure_channel(server.grpc_target).unary_unary(
        "/inference.GRPCInferenceService/RepositoryIndex"
    )
    assert grpc_code(index, b"") == grpc.StatusCode.UNIMPLEMENTED
    ready = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready", timeout=10)
    assert ready.status_code == 200
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME), timeout=10).ready
    assert_good_request_still_works(transformer)


@pytest.fixture(scope="module")
def predictor_with_repository_api(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A predictor started with --enable_model_repository_api."""
    log = tmp_path_factory.mktemp("logs") / "predictor-repository-api.log"
    server = start_server(
        "predictor",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--enable_model_repository_api",
        ],
        log,
    )
    yield server
    server.stop()


def test_the_flag_opens_the_model_repository_api_on_the_predictor(
    predictor_with_repository_api: Server,
) -> None:
    server = predictor_with_repository_api
    rest = logged_inventory(server, "REST")
    assert {key for key in REST_ROUTES if REST_ROUTES[key].access is CONTROL} <= rest["served"]
    stub = grpc_stub(server)
    # Served, so listed (tests/test_metadata.py: not listed where not served).
    assert httpx.get(f"{server.url}/v2").json()["extensions"] == ["model_repository_extension"]
    served = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions
    assert list(served) == ["model_repository_extension"]
    # Served now: unload over gRPC answers, and the model is gone (until a restart).
    reply = stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name=MODEL_NAME), timeout=30
    )
    assert reply.isUnloaded
    assert httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready").status_code != 200
    # And over REST: the model is no longer there to unload.
    response = httpx.post(f"{server.url}/v2/repository/models/{MODEL_NAME}/unload", timeout=30)
    assert response.status_code == 404 and "does not exist" in response.text
    assert server.alive()


def test_the_transformer_has_no_such_flag() -> None:
    from transformer.settings import parser

    assert "--enable_model_repository_api" not in parser().format_help()
