"""What the servers say about themselves, as the Open Inference Protocol defines it: each
model's platform and versions, and only the extensions really served; the same over REST and
gRPC. And V1 predict bodies with "inputs" as well as "instances"."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest
from conftest import DATA, MODEL_NAME, Server
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as generated

from transformer.model import TRANSFORMER_PLATFORM

# What each component says it is: the predictor the config.pbtxt platform of the repository it
# serves (the default fixtures serve TorchScript), the transformer what it is itself.
PLATFORMS = {"predictor": "pytorch_libtorch", "transformer": TRANSFORMER_PLATFORM}


def stub(server: Server) -> generated.GRPCInferenceServiceStub:
    return generated.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_model_metadata_states_platform_and_versions_on_both_transports(
    component: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(component)
    rest = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}", timeout=10).json()
    assert rest["platform"] == PLATFORMS[component]
    assert rest["versions"] == ["1"]  # a list, never null
    over_grpc = stub(server).ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME), timeout=10)
    assert over_grpc.platform == rest["platform"]
    assert list(over_grpc.versions) == rest["versions"]
    assert [t.name for t in over_grpc.inputs] == [t["name"] for t in rest["inputs"]]
    assert [t.name for t in over_grpc.outputs] == [t["name"] for t in rest["outputs"]]


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_server_metadata_lists_only_extensions_served(
    component: str, request: pytest.FixtureRequest
) -> None:
    """Neither serves the model repository extension by default, so neither lists it."""
    server: Server = request.getfixturevalue(component)
    rest = httpx.get(f"{server.url}/v2", timeout=10).json()
    assert rest["extensions"] == []
    over_grpc = stub(server).ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert (over_grpc.name, over_grpc.version) == (rest["name"], rest["version"])
    assert list(over_grpc.extensions) == []


def test_v1_takes_inputs_as_well_as_instances(transformer: Server, predictor: Server) -> None:
    image = {"image": {"b64": base64.b64encode((DATA / "coffee.jpg").read_bytes()).decode()}}
    url = f"{transformer.url}/v1/models/{MODEL_NAME}:predict"
    by_instances = httpx.post(url, json={"instances": [image]}, timeout=60)
    by_inputs = httpx.post(url, json={"inputs": [image]}, timeout=60)
    assert by_instances.status_code == by_inputs.status_code == 200, by_inputs.text
    assert by_inputs.json()["predictions"] == by_instances.json()["predictions"]
    both = httpx.post(url, json={"instances": [image], "inputs": [image]}, timeout=60)
    assert both.status_code == 400
    assert '"inputs" instead of "instances"' in both.json()["error"]

    pixels = [[[0, 0, 0]] * 224] * 224
    answer = httpx.post(
        f"{predictor.url}/v1/models/{MODEL_NAME}:predict", json={"inputs": [pixels]}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"][0]) == 1000
