"""Every REST response body of both servers against the Open Inference Protocol's schemas
(tests/oip_schemas.py): health, readiness, server and model metadata, JSON inference answers,
and the errors of bad requests, unknown models and refused bodies."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import jsonschema
import pytest
from conftest import DATA, MODEL_NAME, TEST_MAX_REQUEST_BYTES, Server
from oip_schemas import SCHEMAS

MODEL = f"/v2/models/{MODEL_NAME}"


def image_request() -> dict:
    encoded = base64.b64encode((DATA / "coffee.jpg").read_bytes()).decode()
    return {
        "id": "conformance-1",
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded]}],
    }


def pixels_request() -> dict:
    return {
        "inputs": [
            {
                "name": "pixels__0",
                "shape": [1, 224, 224, 3],
                "datatype": "UINT8",
                "data": [0] * (224 * 224 * 3),
            }
        ]
    }


# (what is asked, the expected status, the schema of the answer), per component.
Call = tuple[str, str, Callable[[], object] | None, int, str]
CALLS: dict[str, list[Call]] = {
    "transformer": [
        ("POST", f"{MODEL}/infer", image_request, 200, "inference_response"),
        ("POST", f"{MODEL}/infer", lambda: {"inputs": [{"name": "image"}]}, 400, "error"),
        ("POST", f"{MODEL}/infer", lambda: {"inputs": []}, 400, "error"),
    ],
    "predictor": [
        ("POST", f"{MODEL}/infer", pixels_request, 200, "inference_response"),
        ("POST", f"{MODEL}/infer", lambda: {"inputs": [{"name": "nope"}]}, 400, "error"),
    ],
}
COMMON: list[Call] = [
    ("GET", "/v2/health/live", None, 200, "server_live"),
    ("GET", "/v2/health/ready", None, 200, "server_ready"),
    ("GET", f"{MODEL}/ready", None, 200, "model_ready"),
    ("GET", "/v2", None, 200, "server_metadata"),
    ("GET", MODEL, None, 200, "model_metadata"),
    ("GET", "/v2/models/no-such-model", None, 404, "error"),
    ("POST", "/v2/models/no-such-model/infer", lambda: {"inputs": []}, 404, "error"),
]


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_every_rest_answer_follows_the_protocol(
    component: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(component)
    for method, path, body, status, schema in COMMON + CALLS[component]:
        payload = body() if body is not None else None
        response = httpx.request(method, server.url + path, json=payload, timeout=60)
        label = f"{component}: {method} {path} -> {response.status_code} {response.text[:200]}"
        assert response.status_code == status, label
        errors = [
            error.message
            for error in jsonschema.Draft202012Validator(SCHEMAS[schema]).iter_errors(
                response.json()
            )
        ]
        assert not errors, (label, errors)


@pytest.mark.parametrize("component", ["predictor", "transformer"])
def test_refused_bodies_answer_the_protocols_error_object(
    component: str, request: pytest.FixtureRequest
) -> None:
    """Bodies refused before any route (too large, not JSON) still answer {"error": ...}."""
    server: Server = request.getfixturevalue(component)
    cases = [
        (b"x" * (TEST_MAX_REQUEST_BYTES + 1), 413),
        (b"{not json", 400),
    ]
    for content, status in cases:
        response = httpx.post(
            server.url + f"{MODEL}/infer",
            content=content,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == status, response.text[:200]
        jsonschema.Draft202012Validator(SCHEMAS["error"]).validate(response.json())
