"""One test per kserve workaround in common/kserve_compat.py.

Each test checks the kserve behaviour a workaround relies on or works around, against the
installed kserve, so a kserve upgrade that changes it fails here, next to the workaround, rather
than somewhere in a served request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import kserve
import kserve.model_server
import numpy as np
import pytest
from conftest import DATA, MODEL_NAME, Server, grpc_calls
from fastapi import FastAPI
from kserve import context as kserve_context
from kserve.logging import KSERVE_TRACE_LOGGER_NAME
from kserve.model_repository import ModelRepository
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from timing_asgi import TimingMiddleware

from common import kserve_compat
from common.server import base_parser
from harness.servers import free_port, start

ROOT = Path(__file__).resolve().parent.parent
INFER_PATH = "/v2/models/{model_name}/infer"


def test_written_for_the_installed_kserve() -> None:
    from importlib.metadata import version

    assert version("kserve") == kserve_compat.KSERVE_VERSION, (
        "kserve changed: re-check every workaround in common/kserve_compat.py, then update "
        "KSERVE_VERSION"
    )


# --- flags -------------------------------------------------------------------------------


def test_server_parser_holds_every_flag_we_hand_model_server() -> None:
    args = base_parser("test").parse_args([])
    explicit = set(inspect.signature(kserve.ModelServer.__init__).parameters) - {
        "self",
        "registered_models",
        "grace_period",
        "predictor_config",
    }
    assert explicit <= set(vars(args)), explicit - set(vars(args))
    for key in kserve_compat.GLOBAL_ONLY_FLAGS:
        assert hasattr(args, key), key


def test_global_only_flags_are_still_not_model_server_arguments() -> None:
    """If kserve starts taking one of these, pass it explicitly and drop it from the list."""
    parameters = set(inspect.signature(kserve.ModelServer.__init__).parameters)
    assert not parameters & set(kserve_compat.GLOBAL_ONLY_FLAGS)
    assert "kwargs=vars(args)" in inspect.getsource(kserve.ModelServer.start)
    defaults = base_parser("test").parse_args([])
    for key in ("grpc_max_send_message_length", "grpc_max_receive_message_length"):
        assert getattr(defaults, key) == kserve_compat.DEFAULT_GRPC_MESSAGE_LENGTH


def test_apply_global_flags_reaches_kserve_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in kserve_compat.GLOBAL_ONLY_FLAGS:
        monkeypatch.setattr(kserve.model_server.args, key, getattr(kserve.model_server.args, key))
    args = base_parser("test").parse_args(["--grpc_max_receive_message_length", "1234"])
    kserve_compat.apply_global_flags(args)
    assert kserve.model_server.args.grpc_max_receive_message_length == 1234


@pytest.fixture(scope="module")
def hidden_argv_transformer(
    predictor: Server, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real transformer whose flags never reach sys.argv (kserve parses that at import)."""
    server = start(
        "hidden-argv-transformer",
        "transformer",
        [
            "--model_dir",
            str(model_repository),
            "--model_name",
            MODEL_NAME,
            "--predictor_host",
            predictor.grpc_target,
            "--max_request_bytes",
            "65536",
        ],
        tmp_path_factory.mktemp("logs"),
        [str(Path(__file__).with_name("argv_hidden.py"))],
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_grpc_limit_given_outside_sys_argv_is_enforced(hidden_argv_transformer: Server) -> None:
    big, small = DATA / "camera.png", DATA / "chelsea.jpg"
    assert big.stat().st_size > 65536 > small.stat().st_size
    too_big, fits = grpc_calls(
        [
            {
                "op": "infer_images",
                "url": hidden_argv_transformer.grpc_target,
                "model": MODEL_NAME,
                "files": [str(big)],
            },
            {
                "op": "infer_images",
                "url": hidden_argv_transformer.grpc_target,
                "model": MODEL_NAME,
                "files": [str(small)],
            },
        ]
    )
    assert too_big["code"] == "StatusCode.RESOURCE_EXHAUSTED", too_big
    assert fits["ok"] and "cat" in fits["label"][0][0], fits


def test_docs_flag_outside_sys_argv_is_refused_not_ignored(model_repository: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("argv_hidden.py")),
            "-m",
            "transformer",
            "--model_dir",
            str(model_repository),
            "--predictor_host",
            "127.0.0.1:1",
            "--enable_docs_url",
            "true",
            "--http_port",
            str(free_port()),
            "--grpc_port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--enable_docs_url" in done.stderr and "command line" in done.stderr


# --- the REST app ------------------------------------------------------------------------


@pytest.fixture
def fresh_app(monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """A new app in kserve's module-level slot, so these tests leave kserve's own untouched."""
    app = FastAPI()
    monkeypatch.setattr(kserve.model_server, "app", app)
    return app


def kserve_rest_server(dataplane: DataPlane) -> RESTServer:
    return RESTServer(
        kserve.model_server.FASTAPI_APP_IMPORT_STRING,
        dataplane,
        ModelRepositoryExtension(model_registry=dataplane._model_registry),
        http_port=free_port(),
    )


def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    """One request to `app` in process, through its middleware."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.request(method, path, json={"inputs": []})

    return asyncio.run(send())


def kserve_infer_answer(app: FastAPI) -> tuple[int, str]:
    """What POST /v2/models/m/infer answers on `app` (no model "m" is registered)."""
    response = call(app, "POST", "/v2/models/m/infer")
    return response.status_code, response.text


def test_kserve_serves_the_module_level_app(fresh_app: FastAPI) -> None:
    assert kserve_compat.rest_app() is fresh_app
    kserve_rest_server(DataPlane(ModelRepository())).create_application()
    status, text = kserve_infer_answer(fresh_app)
    assert (status, "does not exist" in text) == (404, True), (
        "kserve no longer registers its routes on kserve.model_server.app"
    )


def test_route_added_first_shadows_kserve_infer_route(fresh_app: FastAPI) -> None:
    async def earlier() -> dict[str, str]:
        return {"from": "earlier"}

    async def ours(model_name: str) -> dict[str, str]:
        return {"from": "ours", "model": model_name}

    fresh_app.router.add_api_route(INFER_PATH, earlier, methods=["POST"])
    kserve_compat.add_route_first(fresh_app, INFER_PATH, ours, ["POST"])
    kserve_rest_server(DataPlane(ModelRepository())).create_application()
    assert kserve_infer_answer(fresh_app) == (200, '{"from":"ours","model":"m"}')


def test_timing_middleware_is_installed_whatever_the_flag_and_left_out_when_not_logging(
    fresh_app: FastAPI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RESTServer, "_add_middlewares", RESTServer._add_middlewares)
    kserve_rest_server(DataPlane(ModelRepository())).create_application()
    assert [m for m in fresh_app.user_middleware if m.cls is TimingMiddleware], (
        "kserve no longer installs its timing middleware: timing_only_when_logged may go"
    )

    kserve_compat.timing_only_when_logged(enable_latency_logging=False)
    other = FastAPI()
    monkeypatch.setattr(kserve.model_server, "app", other)
    kserve_rest_server(DataPlane(ModelRepository())).create_application()
    assert not [m for m in other.user_middleware if m.cls is TimingMiddleware]
    trace = logging.getLogger(KSERVE_TRACE_LOGGER_NAME)
    monkeypatch.setattr(trace, "level", logging.NOTSET)
    with caplog.at_level(logging.INFO):
        assert call(other, "GET", "/").status_code == 200
    assert not any(r.name == KSERVE_TRACE_LOGGER_NAME for r in caplog.records)


# --- the data plane ----------------------------------------------------------------------


class _Ready(kserve.Model):
    def __init__(self) -> None:
        super().__init__("m")
        self.ready = True


def test_ready_to_infer_skips_the_predictor_probe() -> None:
    repository = ModelRepository()
    repository.update(_Ready())
    previous = kserve_context.get_predictor_config()
    # A transformer whose predictor is down (nothing listens on port 1).
    kserve_context.set_predictor_config(
        PredictorConfig("127.0.0.1:1", "grpc-v2", predictor_health_check=True)
    )
    try:
        dataplane = DataPlane(repository)

        async def both() -> tuple[bool, bool]:
            probed = await dataplane.model_ready("m")
            return probed, await kserve_compat.ready_to_infer(dataplane, "m")

        probed, skipped = asyncio.run(both())
    finally:
        kserve_context.set_predictor_config(previous)
    assert probed is False, "kserve no longer probes the predictor in model_ready"
    assert skipped is True


def test_metadata_is_told_truthfully_over_what_kserve_says() -> None:
    """kserve 0.21 says `platform: ""`, no versions and the repository extension whatever is
    served; describe_truthfully makes both answers state the model's and the server's own."""

    class Described(_Ready):
        platform = "onnxruntime_onnx"
        versions = ["3"]

    repository = ModelRepository()
    repository.update(Described())
    dataplane = DataPlane(repository)
    theirs = asyncio.run(dataplane.model_metadata("m"))
    assert theirs["platform"] == "" and "versions" not in theirs
    assert dataplane.metadata()["extensions"] == ["model_repository_extension"]
    kserve_compat.describe_truthfully(dataplane, [])
    ours = asyncio.run(dataplane.model_metadata("m"))
    assert (ours["platform"], ours["versions"]) == ("onnxruntime_onnx", ["3"])
    assert dataplane.metadata()["extensions"] == []


# --- tensors -----------------------------------------------------------------------------


def test_raw_data_reads_grpc_raw_contents_without_copy() -> None:
    payload = np.arange(6, dtype=np.uint8).tobytes()
    message = ModelInferRequest(
        model_name="m",
        inputs=[ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[2, 3])],
        raw_input_contents=[payload],
    )
    request = InferRequest.from_grpc(message)
    assert bytes(kserve_compat.raw_data(request.inputs[0]) or b"") == payload


def test_raw_data_reads_what_set_data_from_numpy_wrote() -> None:
    output = InferOutput("y", [2], "FP32")
    output.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32), binary_data=True)
    assert bytes(kserve_compat.raw_data(output) or b"") == np.array([1.0, 2.0], "<f4").tobytes()
    typed = InferInput("z", [1], "INT32", data=[1])
    assert kserve_compat.raw_data(typed) is None


def test_set_raw_data_is_sent_as_grpc_raw_contents() -> None:
    tensor = InferInput("x", [4], "UINT8")
    kserve_compat.set_raw_data(tensor, b"abcd")
    message = InferRequest("m", [tensor]).to_grpc()
    assert list(message.raw_input_contents) == [b"abcd"]
    assert kserve_compat.raw_data(tensor) == b"abcd"


def test_infer_request_from_grpc_with_views_matches_kserves_own() -> None:
    """kserve 0.21's from_grpc attaches raw contents by position and marks the request for raw
    outputs (`use_binary_outputs`); infer_request_from_grpc does the same with views."""
    payload = np.arange(6, dtype=np.uint8).tobytes()
    tensor = ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[2, 3])
    whole = ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[payload])
    theirs = InferRequest.from_grpc(whole)
    without_raw = ModelInferRequest(model_name="m", inputs=[tensor])
    view = memoryview(payload)
    ours = kserve_compat.infer_request_from_grpc(without_raw, [view])
    assert kserve_compat.raw_data(ours.inputs[0]) is view
    assert ours.use_binary_outputs is theirs.use_binary_outputs is True
    assert ours.inputs[0].as_numpy().tolist() == theirs.inputs[0].as_numpy().tolist()
    plain = kserve_compat.infer_request_from_grpc(without_raw, [])
    assert plain.use_binary_outputs is False


# --- the gRPC servicer (common.exposure guards it) ---------------------------------------


def test_grpc_server_builds_its_servicer_by_module_global_name() -> None:
    from kserve.protocol.grpc import server as grpc_server

    source = inspect.getsource(grpc_server.GRPCServer.start)
    assert "InferenceServicer(" in source and "interceptors=" in source
    assert "interceptors" not in inspect.signature(grpc_server.GRPCServer).parameters


def test_repository_extension_returns_nothing_for_the_servicer_to_read() -> None:
    """kserve's RepositoryModelUnload reads response["name"] from this None: INTERNAL."""
    from kserve.protocol.grpc.servicer import InferenceServicer

    registry = ModelRepository()
    model = kserve.Model("m")
    model.ready = True
    registry.update(model)
    assert asyncio.run(ModelRepositoryExtension(registry).unload("m")) is None
    assert 'response["name"]' in inspect.getsource(InferenceServicer.RepositoryModelUnload)
    assert "_mode_repository_extension" in inspect.getsource(InferenceServicer.__init__)


# --- the server's life -------------------------------------------------------------------


def test_gated_readiness_fails_probes_but_not_inference() -> None:
    repository = ModelRepository()
    repository.update(_Ready())
    dataplane = DataPlane(repository)
    draining = False

    async def check() -> bool:
        return not draining

    kserve_compat.gate_readiness(dataplane, check)

    async def answers() -> tuple[bool, bool, bool]:
        return (
            await dataplane.ready(),
            await dataplane.model_ready("m"),
            await kserve_compat.ready_to_infer(dataplane, "m"),
        )

    assert asyncio.run(answers()) == (True, True, True)
    draining = True
    assert asyncio.run(answers()) == (False, False, True)


def test_kserve_grpc_servicer_still_takes_infer_and_readiness_from_these_methods() -> None:
    from kserve.protocol.grpc.servicer import InferenceServicer

    # The wrapper replaces ModelInfer on the class; readiness goes through the data plane.
    for name in ("ModelInfer", "ServerReady", "ModelReady"):
        assert inspect.iscoroutinefunction(getattr(InferenceServicer, name)), name
    assert "_data_plane.ready()" in inspect.getsource(InferenceServicer.ServerReady)
    assert "_data_plane.model_ready(" in inspect.getsource(InferenceServicer.ModelReady)


def test_kserve_error_interceptor_cannot_map_server_not_ready_by_itself() -> None:
    # Why bound_grpc_infer answers UNAVAILABLE itself: kserve 0.21's interceptor reads
    # `ex.reason`, which ServerNotReady lacks (admission.Unavailable defines it).
    from kserve.errors import ServerNotReady

    from common import admission

    assert not hasattr(ServerNotReady("x"), "reason")
    assert admission.Unavailable("x").reason == "x"


def test_model_server_exposes_the_servers_lifecycle_relies_on() -> None:
    previous = kserve_context.get_predictor_config()
    try:  # the constructor sets kserve's global predictor config
        server = kserve.ModelServer(http_port=free_port(), grpc_port=free_port(), workers=1)
    finally:
        kserve_context.set_predictor_config(previous)
    assert isinstance(server.servers, list)
    assert server._rest_server is None and server._grpc_server is None  # made by start()
    start_source = inspect.getsource(kserve.ModelServer.start)
    assert "self.servers.append" in start_source and "self._rest_server = RESTServer(" in (
        start_source
    )
    assert "asyncio.gather(*self.servers)" in inspect.getsource(kserve.ModelServer._serve)
    # kserve's own stop() leaves the single-worker REST server running.
    assert "_rest_server.stop" not in inspect.getsource(kserve.ModelServer.stop)
    assert not kserve_compat.rest_server_started(server)


# --- the gRPC server ---------------------------------------------------------------------


def test_grpc_server_takes_its_interceptors_from_the_module_aio_name() -> None:
    """kserve 0.21's GRPCServer.start calls its module's `aio.server(..., interceptors=...)`;
    add_grpc_interceptor replaces that name (tests/test_observability.py checks the result:
    gRPC requests counted and their ids logged)."""
    import kserve.protocol.grpc.server as kserve_grpc_server

    source = inspect.getsource(kserve_grpc_server.GRPCServer.start)
    assert "aio.server(" in source and "interceptors=" in source
    assert "options=" in source
    original = kserve_grpc_server.aio
    interceptors, options = (
        list(kserve_compat._GRPC_INTERCEPTORS),
        list(kserve_compat._GRPC_OPTIONS),
    )
    first, second = object(), object()
    try:
        kserve_compat.add_grpc_interceptor(first)
        kserve_compat.add_grpc_interceptor(second)
        kserve_compat.add_grpc_server_options([("grpc.ours", 1), ("grpc.theirs", 2)])
        seen: dict[str, object] = {}

        def fake_server(*args: object, interceptors: tuple = (), **kwargs: object) -> str:
            seen["interceptors"] = interceptors
            seen["options"] = kwargs["options"]
            return "server"

        real = kserve_compat.grpc.aio.server
        kserve_compat.grpc.aio.server = fake_server
        try:
            server = kserve_grpc_server.aio.server(
                interceptors=("kserve",), options=[("grpc.theirs", 3)]
            )
            assert server == "server"
        finally:
            kserve_compat.grpc.aio.server = real
        assert seen["interceptors"] == (first, second, "kserve")
        assert seen["options"] == [("grpc.theirs", 3), ("grpc.ours", 1)]  # kserve's value wins
    finally:
        kserve_grpc_server.aio = original
        kserve_compat._GRPC_INTERCEPTORS[:] = interceptors
        kserve_compat._GRPC_OPTIONS[:] = options


def test_rest_server_takes_its_uvicorn_config_from_the_module_uvicorn_name() -> None:
    """kserve 0.21's RESTServer builds `uvicorn.Config(...)` from its module's `uvicorn` name,
    with no `http` argument; use_http_protocol replaces that name so the Config gets ours."""
    import kserve.protocol.rest.server as kserve_rest_server
    import uvicorn

    source = inspect.getsource(kserve_rest_server.RESTServer.__init__)
    assert "uvicorn.Config(" in source and "http=" not in source
    original = kserve_rest_server.uvicorn

    class Marker(asyncio.Protocol):
        pass

    try:
        kserve_compat.use_http_protocol(Marker)
        config = kserve_rest_server.uvicorn.Config("kserve.model_server:app", port=0)
        assert isinstance(config, uvicorn.Config) and config.http is Marker
    finally:
        kserve_rest_server.uvicorn = original
