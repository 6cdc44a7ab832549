"""Client authentication in the transformer (`--api_key_file`): unit and end to end.

A transformer with keys runs against the session's real predictor; V1, V2 REST (tritonclient)
and V2 gRPC (tritonclient, in its own process) are called with and without a key.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import DATA, MODEL_NAME, ROOT, Server, grpc_calls, start_server
from test_serving import b64
from tritonclient.utils import InferenceServerException

from transformer.auth import ApiKeyFileError, ApiKeys, read_keys, without_credentials

KEY_A = "k-a-" + "0123456789abcdef" * 2
KEY_B = "k-b-" + "fedcba9876543210" * 2
KEY_NEW = "k-n-" + "00112233445566778899" * 2
KEY_FILE_TEXT = f"# clients of team A, then team B\n{KEY_A}\n\n  {KEY_B}  \n"


# --- the key file ----------------------------------------------------------------------------


def test_key_file_lines_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(KEY_FILE_TEXT)
    keys = ApiKeys(path)
    assert len(keys) == 2
    assert keys.valid(KEY_A) and keys.valid(KEY_B)
    assert not keys.valid(KEY_A[:-1]) and not keys.valid("") and not keys.valid(KEY_A + "x")
    assert KEY_A not in repr(keys) and "2 keys" in repr(keys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("short\n", "line 1: a key of 5 characters"),
        (f"{KEY_A}\nhas a space in it, sadly\n", "line 2"),
    ],
)
def test_bad_key_files_are_refused_without_showing_keys(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ApiKeyFileError, match=message) as info:
        read_keys(path)
    assert KEY_A not in str(info.value)
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        read_keys(tmp_path / "missing")


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("transformer.auth.RECHECK_INTERVAL_S", 0.0)
    path = tmp_path / "keys"
    path.write_text(KEY_A + "\n")
    keys = ApiKeys(path)
    replacement = tmp_path / "keys.new"  # replaced by rename, as a Secret volume does
    replacement.write_text(KEY_NEW + "\n")
    replacement.replace(path)
    assert keys.valid(KEY_NEW) and not keys.valid(KEY_A)
    path.write_text("")  # half-written or emptied: keep serving with the previous keys
    assert keys.valid(KEY_NEW)
    path.unlink()
    assert keys.valid(KEY_NEW)


def test_the_clients_key_is_not_forwarded_to_the_predictor() -> None:
    from kserve.model import append_forwardable_headers

    headers = {"authorization": f"Bearer {KEY_A}", "x-request-id": "r1"}
    forwarded = append_forwardable_headers(without_credentials(headers))
    assert forwarded == {"x-request-id": "r1"}
    # Without the filter kserve would forward it: the reason the filter exists.
    assert "authorization" in append_forwardable_headers(headers)


def test_a_bad_key_file_stops_the_transformer_at_start(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("tooshort\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "transformer", "--predictor_host", "127.0.0.1:1"),
            *("--api_key_file", str(path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "--api_key_file" in done.stderr and "8 characters" in done.stderr


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "api-keys"
    path.write_text(KEY_FILE_TEXT)
    return path


@pytest.fixture(scope="module")
def keyed(
    predictor: Server,
    model_repository: Path,
    key_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A transformer requiring API keys, in front of the session's predictor."""
    log = tmp_path_factory.mktemp("logs") / "transformer-keyed.log"
    server = start_server(
        "transformer",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            predictor.grpc_target,
            "--api_key_file",
            str(key_file),
            # Every per-request log line on: none of them may carry a key.
            "--enable_latency_logging",
            "true",
        ],
        log,
        without_torch=True,
    )
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def v1_status(server: Server, headers: dict[str, str]) -> int:
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": b64("coffee.jpg")}}]},
        headers=headers,
        timeout=60,
    )
    if response.status_code == 200:
        assert response.json()["predictions"][0][0]["label"] == "espresso"
    elif response.status_code == 401:
        assert "API key" in response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    return response.status_code


def v2_rest_infer(server: Server, headers: dict[str, str]) -> str:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(
        np.array([(DATA / "coffee.jpg").read_bytes()], dtype=np.object_), binary_data=True
    )
    result = client.infer(MODEL_NAME, [tensor], headers=dict(headers))  # it adds to them
    return str(result.as_numpy("label")[0][0].decode())


def test_rest_needs_a_key_and_accepts_each_valid_one(keyed: Server) -> None:
    for headers in (
        {},
        bearer("not-a-key-not-a-key"),
        bearer(KEY_A[:-1]),
        {"Authorization": KEY_A},  # no scheme
        {"Authorization": f"Basic {KEY_A}"},
    ):
        assert v1_status(keyed, headers) == 401, headers
        with pytest.raises(InferenceServerException, match="API key"):
            v2_rest_infer(keyed, headers)
        metadata = httpx.get(f"{keyed.url}/v2/models/{MODEL_NAME}", headers=headers)
        assert metadata.status_code == 401
    for key in (KEY_A, KEY_B):
        assert v1_status(keyed, bearer(key)) == 200
        assert v1_status(keyed, {"authorization": f"bearer  {key}"}) == 200
        assert v2_rest_infer(keyed, bearer(key)) == "espresso"
    # Without a key nobody learns which routes exist: 401 before 404.
    assert httpx.get(f"{keyed.url}/openapi.json").status_code == 401
    assert httpx.get(f"{keyed.url}/openapi.json", headers=bearer(KEY_A)).status_code == 404


def test_health_and_readiness_need_no_key(keyed: Server) -> None:
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{MODEL_NAME}/ready",
        f"/v1/models/{MODEL_NAME}",
        "/",
        "/metrics",
    ):
        assert httpx.get(f"{keyed.url}{path}").status_code == 200, path
    (health,) = grpc_calls([{"op": "health", "url": keyed.grpc_target, "model": MODEL_NAME}])
    health.pop("seconds")
    assert health == {"ok": True, "live": True, "ready": True, "model_ready": True}


def test_grpc_needs_a_key(keyed: Server) -> None:
    files = [str(DATA / "coffee.jpg")]
    calls: list[dict[str, Any]] = [
        {"op": "infer_images", "url": keyed.grpc_target, "model": MODEL_NAME, "files": files},
        {"op": "metadata", "url": keyed.grpc_target, "model": MODEL_NAME},
        {
            "op": "infer_images",
            "url": keyed.grpc_target,
            "model": MODEL_NAME,
            "files": files,
            "headers": {"authorization": "Bearer wrong-wrong-wrong-wrong"},
        },
        {
            "op": "infer_images",
            "url": keyed.grpc_target,
            "model": MODEL_NAME,
            "files": files,
            "headers": {"authorization": f"Bearer {KEY_B}"},
        },
        {
            "op": "metadata",
            "url": keyed.grpc_target,
            "model": MODEL_NAME,
            "headers": {"authorization": f"Bearer {KEY_A}"},
        },
    ]
    no_key, no_key_meta, wrong, good, meta = grpc_calls(calls)
    for refused in (no_key, no_key_meta, wrong):
        assert refused["code"] == "StatusCode.UNAUTHENTICATED", refused
        assert "API key" in refused["message"]
    assert good["ok"] and good["label"] == [["espresso", *good["label"][0][1:]]]
    assert [i["name"] for i in meta["inputs"]] == ["image"]


def test_rotation_by_rewriting_the_key_file(keyed: Server, key_file: Path) -> None:
    replacement = key_file.with_name("api-keys.new")
    replacement.write_text(f"{KEY_B}\n{KEY_NEW}\n")  # add the new key, retire KEY_A
    replacement.replace(key_file)
    deadline = time.monotonic() + 10
    while v1_status(keyed, bearer(KEY_A)) != 401:
        assert time.monotonic() < deadline, "the old key still works 10 s after the change"
        time.sleep(0.2)
    assert v1_status(keyed, bearer(KEY_NEW)) == 200
    assert v1_status(keyed, bearer(KEY_B)) == 200
    key_file.write_text(KEY_FILE_TEXT)  # back as the module's other tests expect
    while v1_status(keyed, bearer(KEY_A)) != 200:
        assert time.monotonic() < deadline + 10, "the restored key file was not reloaded"
        time.sleep(0.2)


def test_keys_never_reach_the_log(keyed: Server) -> None:
    assert v1_status(keyed, bearer(KEY_A)) == 200
    assert v1_status(keyed, bearer("wrong-wrong-wrong-wrong")) == 401
    log = keyed.tail(10**7)
    assert f"{MODEL_NAME}:predict" in log  # per-request lines are being logged
    for secret in (KEY_A, KEY_B, KEY_NEW, "wrong-wrong-wrong-wrong", KEY_A[4:20]):
        assert secret not in log


def test_the_demo_page_loads_without_a_key_and_its_calls_need_one(keyed: Server) -> None:
    page = httpx.get(f"{keyed.url}/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{keyed.url}/demo/demo.js").status_code == 200
    assert v1_status(keyed, {}) == 401
