"""CloudEvents on the transformer's REST inference routes (common.events): the envelope
functions alone, then events built with the `cloudevents` SDK sent to the real transformer in
front of the real predictor, binary and structured, V1 and V2, and malformed events."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from conftest import DATA, MODEL_NAME, Server

from common import codecs, events
from common.events import EventError, Mode, Route

V1_PATH = f"/v1/models/{MODEL_NAME}:predict"
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"
SOURCE = f"{events.SOURCE_PREFIX}{MODEL_NAME}"
COFFEE = (DATA / "coffee.jpg").read_bytes()
TOP1 = "espresso"  # what tests/test_serving.py expects of coffee.jpg
V1, V2 = Route("v1", MODEL_NAME), Route("v2", MODEL_NAME)


def request_event(data: Any, event_id: str = "event-1", **attributes: str) -> CloudEvent:
    return CloudEvent(
        {"type": "com.example.image", "source": "/tests/cloudevents", "id": event_id, **attributes},
        data,
    )


def v1_body() -> dict[str, Any]:
    return {"instances": [{"image": {"b64": base64.b64encode(COFFEE).decode()}}]}


def v2_json_body() -> dict[str, Any]:
    encoded = base64.b64encode(COFFEE).decode()
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [encoded]}]}


def v2_binary_body(binary_output: bool = False) -> tuple[bytes, int]:
    """A V2 body with the image as a binary tensor, and its JSON length."""
    blob = struct.pack("<I", len(COFFEE)) + COFFEE
    head: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    if binary_output:
        head["outputs"] = [{"name": "label", "parameters": {"binary_data": True}}]
    encoded = json.dumps(head).encode()
    return encoded + blob, len(encoded)


def headers_of(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in pairs}


# --- the envelope functions, without a server ----------------------------------------------


def test_only_ce_headers_or_the_cloudevents_content_type_make_an_event() -> None:
    assert events.content_mode([(b"content-type", b"application/json")]) is None
    assert events.content_mode([(b"x-request-id", b"a"), (b"cex", b"1")]) is None
    assert events.content_mode([(b"ce-specversion", b"1.0")]) is Mode.BINARY
    structured = [(b"ce-id", b"1"), (b"content-type", b"Application/CloudEvents+JSON")]
    assert events.content_mode(structured) is Mode.STRUCTURED


def test_inference_routes_name_their_protocol_and_model() -> None:
    assert events.inference_route("POST", V1_PATH) == V1
    assert events.inference_route("POST", V2_PATH) == V2
    assert events.inference_route("POST", "/v2/models/m/versions/2/infer") == Route("v2", "m")
    assert events.inference_route("GET", V2_PATH) is None
    assert events.inference_route("POST", f"/v2/models/{MODEL_NAME}/labels") is None
    assert events.inference_route("POST", f"/v1/models/{MODEL_NAME}:explain") is None


def test_binary_mode_drops_the_ce_headers_and_keeps_the_body() -> None:
    headers, _ = to_binary(request_event({"instances": []}))
    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    pairs.append((b"content-type", b"application/json; charset=utf-8"))
    unwrapped = events.unwrap(Mode.BINARY, pairs, None, V1)
    assert unwrapped.body is None
    assert headers_of(unwrapped.headers) == {"content-type": "application/json; charset=utf-8"}
    assert unwrapped.event["id"] == "event-1"
    assert unwrapped.event["source"] == "/tests/cloudevents"


def test_structured_mode_hands_the_data_on_as_the_body() -> None:
    headers, body = to_structured(request_event(v1_body()))
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
    pairs.append((codecs.JSON_LENGTH_HEADER.encode(), b"12"))  # meaningless for JSON data
    unwrapped = events.unwrap(Mode.STRUCTURED, pairs, body, V1)
    assert unwrapped.body is not None
    assert orjson.loads(unwrapped.body) == v1_body()
    assert headers_of(unwrapped.headers) == {
        "content-type": "application/json",
        "content-length": str(len(unwrapped.body)),
    }


def test_structured_mode_decodes_data_base64_with_its_content_type() -> None:
    body, json_length = v2_binary_body()
    event = request_event(body, datacontenttype="application/octet-stream")
    headers, encoded = to_structured(event)
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()]
    pairs.append((codecs.JSON_LENGTH_HEADER.encode(), str(json_length).encode()))
    unwrapped = events.unwrap(Mode.STRUCTURED, pairs, encoded, V2)
    assert unwrapped.body == body
    assert headers_of(unwrapped.headers)[codecs.JSON_LENGTH_HEADER] == str(json_length)
    assert headers_of(unwrapped.headers)["content-type"] == "application/octet-stream"


def structured(document: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return [(b"content-type", events.STRUCTURED_CONTENT_TYPE.encode())], body


GOOD = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
# (mode, headers, body, route, words the 400 must say)
MALFORMED: dict[str, tuple[Mode, list[tuple[bytes, bytes]], bytes | None, Route, list[str]]] = {
    "binary, only ce-specversion": (
        Mode.BINARY,
        [(b"ce-specversion", b"1.0")],
        None,
        V1,
        ["without ce-id, ce-source, ce-type", "received ce-specversion"],
    ),
    "binary, specversion 0.3": (
        Mode.BINARY,
        [(f"ce-{k}".encode(), (b"0.3" if k == "specversion" else b"x")) for k in GOOD],
        None,
        V1,
        ["specversion '0.3' is not supported", "expected '1.0'"],
    ),
    "binary, text/plain data": (
        Mode.BINARY,
        [
            *((f"ce-{k}".encode(), v.encode()) for k, v in GOOD.items()),
            (b"content-type", b"text/plain"),
        ],
        None,
        V2,
        ["Content-Type text/plain", "expected application/json", "application/octet-stream"],
    ),
    "binary, octet-stream to V1": (
        Mode.BINARY,
        [
            *((f"ce-{k}".encode(), v.encode()) for k, v in GOOD.items()),
            (b"content-type", b"application/octet-stream"),
        ],
        None,
        V1,
        ["application/octet-stream", "expected application/json (the V1 request)"],
    ),
    "structured, invalid JSON": (
        Mode.STRUCTURED,
        *structured(b'{"specversion": "1.0", '),
        V1,
        ["not valid JSON", "expected a JSON object with specversion, id, source, type"],
    ),
    "structured, a JSON array": (
        Mode.STRUCTURED,
        *structured([GOOD]),
        V1,
        ["body is a JSON array", "expected a JSON object"],
    ),
    "structured, no data": (
        Mode.STRUCTURED,
        *structured(GOOD),
        V2,
        ["without data or data_base64", "expected the V2 request as data"],
    ),
    "structured, no id": (
        Mode.STRUCTURED,
        *structured({**{k: v for k, v in GOOD.items() if k != "id"}, "data": {}}),
        V1,
        ["without id", "received attributes source, specversion, type"],
    ),
    "structured, data a string": (
        Mode.STRUCTURED,
        *structured({**GOOD, "data": "{}"}),
        V1,
        ["data is a JSON string", "expected a JSON object (the V1 request body)"],
    ),
    "structured, bad base64": (
        Mode.STRUCTURED,
        *structured({**GOOD, "data_base64": "not base64!"}),
        V2,
        ["data_base64 is not valid base64"],
    ),
    "structured, batched": (
        Mode.STRUCTURED,
        [(b"content-type", b"application/cloudevents-batch+json")],
        b"[]",
        V1,
        ["application/cloudevents-batch+json", "expected application/cloudevents+json"],
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_events_say_what_was_received_and_expected(case: str) -> None:
    mode, headers, body, route, words = MALFORMED[case]
    with pytest.raises(EventError) as raised:
        events.unwrap(mode, headers, body, route)
    for word in words:
        assert word in str(raised.value)


def test_answers_are_events_the_sdk_reads() -> None:
    binary = headers_of(events.binary_answer_headers(V1, "req-1"))
    event = from_http({**binary, "content-type": "application/json"}, b'{"predictions": []}')
    assert (event["type"], event["source"], event["id"]) == (events.RESPONSE_TYPE, SOURCE, "req-1")
    assert event.data == {"predictions": []}

    content_type, body = events.structured_answer(V1, "req-2", "application/json", b'{"a": 1}')
    event = from_http({"content-type": content_type}, body)
    assert event["id"] == "req-2" and event["datacontenttype"] == "application/json"
    assert event.data == {"a": 1}

    content_type, body = events.structured_answer(V2, "req-3", "application/octet-stream", b"\0")
    assert orjson.loads(body)["data_base64"] == "AA=="
    assert from_http({"content-type": content_type}, body, lambda data: data).data == b"\0"


# --- the real transformer in front of the real predictor -----------------------------------


def post(
    server: Server, path: str, headers: dict[str, str], body: bytes, **extra: str
) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers={**headers, **extra}, content=body, timeout=60)


def answer_event(response: httpx.Response, structured: bool) -> CloudEvent:
    """The answer as a CloudEvent, checked against what every answer says."""
    assert response.status_code == 200, response.text
    if structured:
        assert response.headers["content-type"] == events.STRUCTURED_CONTENT_TYPE
    else:
        assert response.headers["ce-specversion"] == "1.0"
    event = from_http(dict(response.headers), response.content, lambda data: data)
    assert event["type"] == events.RESPONSE_TYPE
    assert event["source"] == SOURCE
    assert event["id"] == response.headers["x-request-id"]
    return event


def v1_top1(data: Any) -> str:
    answer = data if isinstance(data, dict) else orjson.loads(data)
    return str(answer["predictions"][0][0]["label"])


def v2_top1(data: Any) -> str:
    answer = data if isinstance(data, dict) else orjson.loads(data)
    label = next(o for o in answer["outputs"] if o["name"] == "label")
    return str(label["data"][0])


@pytest.mark.parametrize("convert", [to_binary, to_structured], ids=["binary", "structured"])
def test_v1_event_gets_the_top1_back_as_an_event(transformer: Server, convert: Any) -> None:
    headers, body = convert(request_event(v1_body(), "v1-event-7"))
    response = post(transformer, V1_PATH, headers, body)
    event = answer_event(response, convert is to_structured)
    # No x-request-id sent: the event's id became the request's.
    assert event["id"] == "v1-event-7"
    assert v1_top1(event.data) == TOP1


@pytest.mark.parametrize("convert", [to_binary, to_structured], ids=["binary", "structured"])
def test_v2_json_event_gets_the_top1_back_as_an_event(transformer: Server, convert: Any) -> None:
    headers, body = convert(request_event(v2_json_body(), "v2-event-8"))
    response = post(transformer, V2_PATH, headers, body, **{"x-request-id": "client-id-3"})
    event = answer_event(response, convert is to_structured)
    assert event["id"] == "client-id-3"  # the client's x-request-id comes first
    assert event[events.IN_RESPONSE_TO] == "v2-event-8"  # the event answered, named all the same
    assert event.get(events.PARTITION_KEY) is None  # the request had no key
    assert v2_top1(event.data) == TOP1


@pytest.mark.parametrize("convert", [to_binary, to_structured], ids=["binary", "structured"])
def test_the_answer_keeps_the_record_key_of_a_kafka_event(
    transformer: Server, convert: Any
) -> None:
    # A KafkaSource names a keyed record's key in `key`; a Kafka sink writes `partitionkey`.
    headers, body = convert(request_event(v1_body(), "partition:0/offset:41", key="camera-7"))
    event = answer_event(post(transformer, V1_PATH, headers, body), convert is to_structured)
    assert event[events.PARTITION_KEY] == "camera-7"
    assert event[events.IN_RESPONSE_TO] == "partition:0/offset:41"
    assert v1_top1(event.data) == TOP1


def test_v2_binary_tensors_in_a_binary_mode_event(transformer: Server) -> None:
    body, json_length = v2_binary_body()
    event = request_event(body, "v2-binary-9", datacontenttype="application/octet-stream")
    headers, encoded = to_binary(event)
    extra = {codecs.JSON_LENGTH_HEADER: str(json_length)}
    answer = answer_event(post(transformer, V2_PATH, headers, encoded, **extra), False)
    assert answer["id"] == "v2-binary-9"
    assert v2_top1(answer.data) == TOP1


def test_v2_binary_tensors_in_and_out_of_a_structured_event(transformer: Server) -> None:
    body, json_length = v2_binary_body(binary_output=True)
    event = request_event(body, "v2-binary-10", datacontenttype="application/octet-stream")
    headers, encoded = to_structured(event)
    extra = {codecs.JSON_LENGTH_HEADER: str(json_length)}
    response = post(transformer, V2_PATH, headers, encoded, **extra)
    answer = answer_event(response, True)
    assert answer["datacontenttype"] == "application/octet-stream"
    data = answer.data
    head = orjson.loads(data[: int(response.headers[codecs.JSON_LENGTH_HEADER])])
    (label,) = head["outputs"]
    blob = data[int(response.headers[codecs.JSON_LENGTH_HEADER]) :]
    labels = codecs.deserialize_bytes(blob, label["shape"][0] * label["shape"][1], "label")
    assert labels[0].decode() == TOP1


def test_an_event_id_that_is_no_request_id_leaves_a_generated_one(transformer: Server) -> None:
    headers, body = to_binary(request_event(v1_body(), "not a request id"))
    event = answer_event(post(transformer, V1_PATH, headers, body), False)
    assert event["id"] != "not a request id"
    assert len(event["id"]) == 32  # common.tracing.new_request_id


@pytest.mark.parametrize("convert", [to_binary, to_structured], ids=["binary", "structured"])
def test_an_error_answer_stays_a_plain_json_error(transformer: Server, convert: Any) -> None:
    headers, body = convert(request_event({"instances": [{"image": {"b64": "AAAA"}}]}))
    response = post(transformer, V1_PATH, headers, body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert not [name for name in response.headers if name.startswith("ce-")]
    assert "image 0" in response.json()["error"]


BAD_REQUESTS: dict[str, tuple[str, dict[str, str], bytes, str]] = {
    "binary without ce-id": (
        V1_PATH,
        {"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"},
        orjson.dumps(v1_body()),
        "without ce-id",
    ),
    "specversion 0.3": (
        V2_PATH,
        {"ce-specversion": "0.3", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
        orjson.dumps(v2_json_body()),
        "specversion '0.3' is not supported",
    ),
    "binary with text/plain": (
        V2_PATH,
        {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
        | {"content-type": "text/plain"},
        b"hello",
        "Content-Type text/plain",
    ),
    "structured, invalid JSON": (
        V1_PATH,
        {"content-type": events.STRUCTURED_CONTENT_TYPE},
        b'{"specversion": "1.0", "data": ',
        "is not valid JSON",
    ),
    "structured without data": (
        V2_PATH,
        {"content-type": events.STRUCTURED_CONTENT_TYPE},
        orjson.dumps(GOOD),
        "without data or data_base64",
    ),
}


def test_malformed_events_get_a_400_and_the_transformer_keeps_serving(
    transformer: Server,
) -> None:
    for case, (path, headers, body, words) in BAD_REQUESTS.items():
        response = post(transformer, path, headers, body)
        assert response.status_code == 400, (case, response.text)
        assert words in response.json()["error"], case
        assert response.headers["x-request-id"]
    plain = httpx.post(f"{transformer.url}{V1_PATH}", json=v1_body(), timeout=60)
    assert plain.status_code == 200, plain.text
    assert not [name for name in plain.headers if name.startswith("ce-")]
    assert v1_top1(plain.content) == TOP1
    assert transformer.alive()
