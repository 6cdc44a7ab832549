"""Fuzzing every input path with hypothesis: V2 REST (JSON and binary), V1 bodies, gRPC
requests built from fuzzed tensors, and image decoding from mutated real image files.

Property: every input gives a result, or a 4xx / INVALID_ARGUMENT whose message says what was
wrong; never a 500, an unexpected exception type or a dead server. Decoding one image is
bounded: in memory by the declared-pixel limit checked before any pixel is decoded
(DecodeLimits.max_pixels, below Pillow's own MAX_IMAGE_PIXELS bomb check), in time by
DECODE_BUDGET_S.

`make test` runs a short pass (the "ci" profile); `make fuzz` runs the long one
(HYPOTHESIS_PROFILE=fuzz, many more examples, failures kept in .hypothesis/ and replayed).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from conftest import DATA, MODEL_NAME, Server
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import InferRequest
from PIL import Image

from common import codecs
from common.lean_grpc import LeanInferenceServicer
from common.modelrepo import TensorSpec
from runtime.normalized import normalized_form
from runtime.tensors import Contract, ContractError
from transformer.model import ImageClassifierTransformer
from transformer.settings import parse as transformer_settings
from vision.imaging import DecodeLimits, ImageError, preprocess
from vision.preprocessing import Preprocessing

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PARAMS = Preprocessing(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3)
PIXELS = TensorSpec("pixels__0", "UINT8", (224, 224, 3))
MAX_BATCH = 32
# The predictor's check of the image classifier's tensors (with its normalised FP32 form).
CONTRACT = Contract(
    (PIXELS,),
    (TensorSpec("logits__0", "FP32", (1000,)),),
    MAX_BATCH,
    {PIXELS.name: normalized_form(PIXELS)},
)


def check_at_predictor(inputs: dict[str, np.ndarray]) -> None:
    """What the predictor does with request tensors before batching: a 400 or accepted."""
    try:
        CONTRACT.check(inputs)
    except ContractError as exc:
        assert str(exc), "an empty error message"


DECODE_BUDGET_S = 5.0  # generous: the machine running the tests may be busy
CLIENT_ERRORS = {400, 413}

# --- strategies --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
datatypes = st.sampled_from([*codecs.NUMPY_DTYPES, "uint8", "FP8", "", "BF16"])
dims = st.integers(min_value=-2, max_value=4) | st.sampled_from([2**31, 2**63 - 1, 2**64 + 3])
shapes = st.lists(dims, max_size=5) | json_values


@st.composite
def tensor_entries(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """One REST input entry and the binary blob (possibly empty) that follows the JSON."""
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["name"] = draw(st.sampled_from(["image", "pixels__0", "x"]) | st.text(max_size=5))
    else:
        entry["name"] = draw(json_values)
    if draw(st.integers(0, 9)):
        entry["datatype"] = draw(datatypes | json_scalars)
    if draw(st.integers(0, 9)):
        entry["shape"] = draw(shapes)
    blob = b""
    mode = draw(st.sampled_from(["data", "binary", "both", "neither"]))
    if mode in ("data", "both"):
        entry["data"] = draw(json_values | st.lists(st.integers(0, 255), max_size=12))
    if mode in ("binary", "both"):
        blob = draw(st.binary(max_size=64))
        size = draw(st.sampled_from([len(blob), len(blob) + 1, -1]) | json_scalars)
        entry["parameters"] = {"binary_data_size": size}
    elif draw(st.booleans()):
        entry["parameters"] = draw(json_values)
    return entry, blob


@st.composite
def rest_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A V2 REST body (JSON, or JSON plus binary tensors) and its JSON-length header."""
    if draw(st.integers(0, 9)) == 0:  # raw bytes, now and then
        body = draw(st.binary(max_size=200))
        return body, draw(st.none() | st.text(max_size=6))
    request: dict[str, Any] = {}
    entries = draw(st.lists(tensor_entries(), max_size=3))
    request["inputs"] = [entry for entry, _ in entries] if draw(st.integers(0, 9)) else 7
    for key in ("outputs", "parameters", "id"):
        if draw(st.booleans()):
            request[key] = draw(json_values | st.just([{"name": "label"}]))
    head = json.dumps(request).encode()  # json: orjson refuses integers beyond 64 bits
    tail = b"".join(blob for _, blob in entries)
    header = draw(
        st.sampled_from([str(len(head)), None])
        | st.integers(-3, len(head) + len(tail) + 3).map(str)
        | st.text(max_size=5)
    )
    return head + tail, header


def _small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((32, 24)).save(buffer, "JPEG")
    return buffer.getvalue()


SMALL_JPEG = _small_jpeg()


@st.composite
def tweaked_valid_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A request the transformer serves, with one top-level field set to something odd: these
    reach the code past the input checks (ids, parameters, requested outputs)."""
    blob = codecs.serialize_bytes(np.array([SMALL_JPEG], dtype=np.object_))
    entry = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": len(blob)},
    }
    request: dict[str, Any] = {"inputs": [entry]}
    key = draw(st.sampled_from(["id", "parameters", "outputs"]))
    request[key] = draw(
        json_values
        | st.fixed_dictionaries({"top_k": json_values, "binary_data_output": json_values})
        | st.lists(st.fixed_dictionaries({"name": json_values, "parameters": json_values}))
    )
    head = json.dumps(request).encode()
    return head + blob, str(len(head))


def v1_payloads() -> st.SearchStrategy[Any]:
    """V1 bodies: image instances for the transformer, pixel instances for the predictor."""
    b64_image = st.sampled_from(["", "=", "aGVsbG8=", "!!", "/9j/4AAQ"]) | st.text(max_size=12)
    image_instance = st.fixed_dictionaries({"image": st.fixed_dictionaries({"b64": b64_image})})
    instances = st.lists(image_instance | json_values, max_size=4) | json_values
    return (
        st.fixed_dictionaries({"instances": instances}, optional={"parameters": json_values})
        | json_values
    )


# --- in process: the codecs, the transformer's and the predictor's request handling -------


@pytest.fixture(scope="module")
def transformer_model(model_repository: Path) -> ImageClassifierTransformer:
    """The real transformer model, loaded, without a server (preprocess needs no predictor)."""
    model = ImageClassifierTransformer(
        transformer_settings(
            ["--model_dir", str(model_repository), "--predictor_host", "127.0.0.1:1"]
        )
    )
    model.load()
    return model


def assert_client_error(exc: InvalidInput) -> None:
    assert isinstance(exc.reason, str) and exc.reason.strip(), exc


def handle_in_process(model: ImageClassifierTransformer, payload: Any) -> None:
    """What the transformer does with a parsed request before forwarding; InvalidInput is fine."""
    try:
        prepared = asyncio.run(model.preprocess(payload))
    except InvalidInput as exc:
        assert_client_error(exc)
        return
    # What predict() sends must make a valid gRPC message.
    pixels = codecs.numpy_input(model.pixel_input.name, prepared.pixels)
    InferRequest(MODEL_NAME, [pixels], request_id=prepared.response_id).to_grpc()


@given(rest_bodies() | tweaked_valid_bodies())
def test_v2_rest_parser(
    transformer_model: ImageClassifierTransformer, case: tuple[bytes, str | None]
) -> None:
    body, header = case
    try:
        request = codecs.parse_rest_request(body, header, MODEL_NAME)
        arrays = [codecs.input_to_numpy(tensor) for tensor in request.inputs]
    except InvalidInput as exc:
        assert_client_error(exc)
        return
    check_at_predictor({t.name: a for t, a in zip(request.inputs, arrays, strict=True)})
    handle_in_process(transformer_model, request)


@example({"instances": [], "parameters": True})  # found by this test: was a TypeError
@given(v1_payloads())
def test_v1_bodies(transformer_model: ImageClassifierTransformer, payload: Any) -> None:
    handle_in_process(transformer_model, payload)
    try:
        inputs = codecs.v1_tensors(payload, CONTRACT.inputs, CONTRACT.alternates)
    except InvalidInput as exc:
        assert_client_error(exc)
        return
    check_at_predictor(inputs)


# --- gRPC: requests built from fuzzed tensors ------------------------------------------------

CONTENT_FIELDS = {
    "BOOL": ("bool_contents", st.booleans()),
    "UINT8": ("uint_contents", st.integers(0, 2**32 - 1)),
    "INT32": ("int_contents", st.integers(-(2**31), 2**31 - 1)),
    "INT64": ("int64_contents", st.integers(-(2**63), 2**63 - 1)),
    "UINT64": ("uint64_contents", st.integers(0, 2**64 - 1)),
    "FP32": ("fp32_contents", st.floats(width=32)),
    "FP64": ("fp64_contents", st.floats()),
    "BYTES": ("bytes_contents", st.binary(max_size=16)),
}


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A ModelInferRequest from fuzzed tensors: raw contents, typed contents, or a mix."""
    request = pb.ModelInferRequest(model_name=MODEL_NAME, id=draw(st.text(max_size=4)))
    style = draw(st.sampled_from(["raw", "contents", "mixed"]))
    raw: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from([*codecs.NUMPY_DTYPES, "FP8", ""]))
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["image", "pixels__0", "x"])),
            datatype=datatype,
            shape=draw(st.lists(st.integers(-2, 2**40) | st.integers(0, 4), max_size=4)),
        )
        how = style if style != "mixed" else draw(st.sampled_from(["raw", "contents", "none"]))
        if how == "raw":
            raw.append(draw(st.binary(max_size=64)))
        elif how == "contents":
            field, values = CONTENT_FIELDS.get(datatype, CONTENT_FIELDS["INT32"])
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=8)))
        if draw(st.integers(0, 4)) == 0:
            tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 100))
    if style == "mixed" and draw(st.booleans()):
        raw.append(draw(st.binary(max_size=16)))  # more raw contents than inputs
    request.raw_input_contents.extend(raw)
    if draw(st.booleans()):
        request.parameters["top_k"].int64_param = draw(st.integers(-3, 2000))
    return request


@given(grpc_requests())
def test_grpc_requests_in_process(
    transformer_model: ImageClassifierTransformer, message: pb.ModelInferRequest
) -> None:
    try:
        LeanInferenceServicer.validate_grpc_request(message)  # what the servicer does first
        request = InferRequest.from_grpc(message)
    except InvalidInput as exc:
        assert_client_error(exc)
        return
    handle_in_process(transformer_model, request)


@pytest.fixture(scope="module")
def grpc_stubs(transformer: Server, predictor: Server) -> dict[str, GRPCInferenceServiceStub]:
    channels = {s.name: grpc.insecure_channel(s.grpc_target) for s in (transformer, predictor)}
    return {name: GRPCInferenceServiceStub(channel) for name, channel in channels.items()}


@settings(max_examples=max(10, settings().max_examples // 2))
@given(grpc_requests())
def test_grpc_requests_to_real_servers(
    grpc_stubs: dict[str, GRPCInferenceServiceStub], message: pb.ModelInferRequest
) -> None:
    for name, stub in grpc_stubs.items():
        try:
            stub.ModelInfer(message, timeout=30)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
            assert details, (name, code)


# --- over HTTP, against the real servers -----------------------------------------------------


@settings(max_examples=max(10, settings().max_examples // 2))
@given(rest_bodies() | tweaked_valid_bodies(), v1_payloads())
def test_http_bodies_to_real_servers(
    transformer: Server,
    predictor: Server,
    v2: tuple[bytes, str | None],
    v1: Any,
) -> None:
    body, header = v2
    headers = {"content-type": "application/json"}
    if header is not None and header.isascii() and header.isprintable():
        headers[codecs.JSON_LENGTH_HEADER] = header
    with httpx.Client(timeout=60) as client:
        for server in (transformer, predictor):
            for path, content in (
                (f"/v2/models/{MODEL_NAME}/infer", body),
                (f"/v1/models/{MODEL_NAME}:predict", json.dumps(v1).encode()),
            ):
                response = client.post(f"{server.url}{path}", content=content, headers=headers)
                if response.status_code != 200:
                    assert response.status_code in CLIENT_ERRORS, (path, response.text)
                    assert response.json()["error"], (path, response.text)
    assert transformer.alive() and predictor.alive()


# --- image decoding from mutated real files ---------------------------------------------------


def _seed_images() -> dict[str, bytes]:
    """Small real images in every accepted format and the modes that take other code paths."""
    photo = Image.open(DATA / "chelsea.jpg").convert("RGB")
    photo.thumbnail((96, 96))
    variants: dict[str, tuple[Image.Image, str, dict[str, Any]]] = {
        "jpeg": (photo, "JPEG", {"quality": 80}),
        "jpeg-progressive": (photo, "JPEG", {"progressive": True}),
        "png-rgb": (photo, "PNG", {}),
        "png-palette-transparent": (
            photo.convert("P", palette=Image.Palette.ADAPTIVE),
            "PNG",
            {"transparency": 0},
        ),
        "png-16bit": (photo.convert("I;16"), "PNG", {}),
        "webp": (photo, "WEBP", {"quality": 70}),
        "webp-lossless-alpha": (photo.convert("RGBA"), "WEBP", {"lossless": True}),
        "gif": (photo.convert("P"), "GIF", {}),
        "tiff": (photo, "TIFF", {}),
        "tiff-lzw": (photo, "TIFF", {"compression": "tiff_lzw"}),
        "tiff-jpeg": (photo, "TIFF", {"compression": "jpeg"}),
        "bmp": (photo, "BMP", {}),
    }
    seeds = {}
    for name, (image, fmt, options) in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds[name] = buffer.getvalue()
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real image file with a few byte-level mutations: flips, overwrites, cuts, splices."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 6))):
        # Headers are where parsers branch: aim half the mutations at the first 64 bytes.
        span = 64 if draw(st.booleans()) else len(data)
        at = draw(st.integers(0, max(0, min(span, len(data)) - 1)))
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat"]))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]) | st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
    return name, bytes(data)


def test_seeds_decode_before_mutation() -> None:
    for name, data in SEEDS.items():
        assert preprocess(data, PARAMS, DecodeLimits()).shape == (224, 224, 3), name


@given(mutated_images())
def test_mutated_images_decode_or_are_refused_within_budget(case: tuple[str, bytes]) -> None:
    name, data = case
    limits = DecodeLimits(max_pixels=4_000_000)
    started = time.perf_counter()
    try:
        pixels = preprocess(data, PARAMS, limits)
    except ImageError as exc:
        assert str(exc).strip(), name  # the domain's plain error, with its reason
    else:
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8, name
    assert time.perf_counter() - started < DECODE_BUDGET_S, name
