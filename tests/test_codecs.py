"""The codec module: REST JSON and binary parsing, tensor checks and REST response encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferResponse

from common import codecs


def binary_body(arrays: dict[str, np.ndarray], **extra: object) -> tuple[bytes, str]:
    inputs, blobs = [], []
    for name, array in arrays.items():
        datatype = codecs.datatype_of(array)
        blob = codecs.serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head = orjson.dumps({"inputs": inputs, **extra})
    return head + b"".join(blobs), str(len(head))


def test_binary_input_is_a_view_into_the_body() -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    body, length = binary_body({"pixels": pixels})
    request = codecs.parse_rest_request(body, length, "m")
    array = codecs.input_to_numpy(request.inputs[0])
    np.testing.assert_array_equal(array, pixels)
    assert not array.flags.owndata  # no copy, no Python list on the way


def test_bytes_tensor_round_trips_binary_and_json() -> None:
    images = np.array([b"\xff\xd8abc", b"", b"\x00\x01"], dtype=np.object_)
    body, length = binary_body({"image": images})
    parsed = codecs.input_to_numpy(codecs.parse_rest_request(body, length, "m").inputs[0])
    assert list(parsed) == list(images)
    as_json = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    parsed = codecs.input_to_numpy(
        codecs.parse_rest_request(orjson.dumps(as_json), None, "m").inputs[0]
    )
    assert list(parsed) == ["a", "b"]


def test_json_numbers_fill_the_declared_shape() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    )
    array = codecs.input_to_numpy(codecs.parse_rest_request(body, None, "m").inputs[0])
    assert array.dtype == np.float32 and array.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, 'non-empty "inputs"'),
        (b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}', None, '"name"'),
        (b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}', None, 'missing "datatype"'),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}',
            None,
            "unknown datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}',
            None,
            "binary_data_size",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [4],'
            b' "parameters": {"binary_data_size": 4}}]}',
            b"ab",
            "does not fit",
        ),
        (b'{"inputs": []}', "1000", "between 0 and"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            b"junk",
            "bytes after",
        ),
    ],
)
def test_malformed_requests_say_what_is_wrong(
    body: bytes, length: str | bytes | None, message: str
) -> None:
    if isinstance(length, bytes):  # a JSON part followed by binary bytes
        body, length = body + length, str(len(body))
    with pytest.raises(InvalidInput, match=message):
        codecs.parse_rest_request(body, length, "m")


def test_data_must_fill_shape_and_dtype() -> None:
    short = InferInput("x", [2, 3], "UINT8", data=[1, 2, 3])
    with pytest.raises(InvalidInput, match="3 elements of data, expected 6"):
        codecs.input_to_numpy(short)
    raw = InferInput("x", [2, 3], "FP32")
    raw._raw_data = b"\0" * 20
    with pytest.raises(InvalidInput, match="20 bytes of binary data, expected 24"):
        codecs.input_to_numpy(raw)
    with pytest.raises(InvalidInput, match="not valid UINT8"):
        codecs.input_to_numpy(InferInput("x", [1], "UINT8", data=[300]))
    bad_bytes = InferInput("x", [1], "BYTES")
    bad_bytes._raw_data = b"\x10\0\0\0abc"
    with pytest.raises(InvalidInput, match="declares 16 bytes"):
        codecs.input_to_numpy(bad_bytes)


def test_response_is_json_unless_binary_is_requested() -> None:
    labels = np.array([["espresso", "tea cup"]], dtype=np.object_)
    scores = np.array([[0.9, 0.1]], dtype=np.float32)
    response = InferResponse(
        "id-1", "m", [codecs.numpy_output("label", labels), codecs.numpy_output("score", scores)]
    )
    request = codecs.parse_rest_request(
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', None, "m"
    )
    body, headers = codecs.encode_rest_response(response, request)
    decoded = orjson.loads(body)
    assert codecs.JSON_LENGTH_HEADER not in headers
    assert decoded["outputs"][0]["data"] == ["espresso", "tea cup"]
    assert decoded["outputs"][1]["data"] == pytest.approx([0.9, 0.1])

    binary_request = codecs.parse_rest_request(
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
        b' "outputs": [{"name": "score", "parameters": {"binary_data": true}}]}',
        None,
        "m",
    )
    body, headers = codecs.encode_rest_response(response, binary_request)
    head_length = int(headers[codecs.JSON_LENGTH_HEADER])
    head = orjson.loads(body[:head_length])
    assert [o["name"] for o in head["outputs"]] == ["score"]  # only what was asked for
    np.testing.assert_array_equal(np.frombuffer(body[head_length:], np.float32), scores.ravel())


def test_unknown_requested_output_is_rejected() -> None:
    response = InferResponse(
        "id", "m", [codecs.numpy_output("score", np.zeros((1, 1), np.float32))]
    )
    request = codecs.parse_rest_request(
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],'
        b' "outputs": [{"name": "nope"}]}',
        None,
        "m",
    )
    with pytest.raises(InvalidInput, match="'nope' does not exist"):
        codecs.encode_rest_response(response, request)


def test_malformed_response_output_is_a_server_error() -> None:
    from kserve.errors import InferenceError
    from kserve.protocol.infer_type import InferOutput

    output = InferOutput("logits", [2, 3], "FP32")
    output._raw_data = b"\0" * 8
    with pytest.raises(InferenceError, match="malformed output 'logits'"):
        codecs.output_to_numpy(output)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # Found by tests/test_fuzz.py: each was a 500 (TypeError/AttributeError) before.
        ({"id": {"a": 1}}, '"id" must be a string'),
        ({"id": 5}, '"id" must be a string'),
        ({"outputs": [{"name": "label", "parameters": [1]}]}, '"outputs" must be a list'),
    ],
)
def test_request_fields_of_the_wrong_type_are_refused(
    extra: dict[str, object], message: str
) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}], **extra}
    )
    with pytest.raises(InvalidInput, match=message):
        codecs.parse_rest_request(body, None, "m")


def test_parameters_that_are_not_an_object_are_refused() -> None:
    assert codecs.parameter({"top_k": 3}, "top_k") == 3
    assert codecs.parameter(None, "top_k") is None
    with pytest.raises(InvalidInput, match='"parameters" must be an object, got bool'):
        codecs.parameter(True, "top_k")
