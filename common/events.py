"""CloudEvents in and out of the REST inference routes (Knative Eventing sources, brokers and
triggers send and expect them): the envelope, and nothing inside it.

`CloudEventsMiddleware` sits in front of `POST /v1/models/<name>:predict` and
`POST /v2/models/<name>[/versions/<v>]/infer`. A request that carries an event (any `ce-*`
header: binary content mode; `Content-Type: application/cloudevents+json`: structured mode) is
unwrapped here into the plain request the route serves today, so the routes, their codecs and
kserve never see an envelope; its answer is wrapped back into an event in the same mode. Any
other request is passed on untouched after one look at its headers.

- **Binary mode**: the `ce-specversion`, `ce-id`, `ce-source` and `ce-type` headers; the body
  is the request body as without an event (V1 JSON, V2 JSON, or V2 with the binary tensor
  extension and its `inference-header-content-length`). The `ce-*` headers are dropped, the
  body is passed on as it is. The answer keeps its body and Content-Type and gains `ce-*`
  headers.
- **Structured mode**: the body is the event as JSON; its `data` (a JSON object) or
  `data_base64` (the bytes, typed by `datacontenttype`) is the request body. A V2 binary body
  in `data_base64` takes its JSON length from the HTTP header, as without an event. The answer
  is an `application/cloudevents+json` event whose `data` is the JSON answer, or whose
  `data_base64` is a binary V2 answer (its `inference-header-content-length` header stays).

The answer event says what kserve's own does (`kserve.utils.utils.create_response_cloudevent`,
so Knative Trigger filters written for kserve keep matching): type `RESPONSE_TYPE`, source
`SOURCE_PREFIX` + the model name. Its id is the request id (`x-request-id` of the answer): the
client's `x-request-id` header if any, else the event's id when it is a valid request id
(`common.ids`), else the V2 body's `id`, else a generated one (`common.tracing`). Error
answer also names the event it answers (`inresponseto`, the request event's id: a request id
set by a gateway, Istio's say, would otherwise hide it) and keeps its partition key
(`partitionkey`, or the `key` a KafkaSource gives a keyed record), so a KafkaSink writes each
reply under its request's record key. Error
answers (4xx, 5xx) stay plain JSON errors, as kserve's are: Knative counts any non-2xx answer as
a failed delivery and does not read it as an event. An envelope that is not a valid event is
answered 400 here, saying what was received and what is expected.

Only CloudEvents 1.0 is accepted (what Knative sends); batched mode
(`application/cloudevents-batch+json`) is refused. The `cloudevents` SDK holds each event and
writes the answers; structured request bodies are parsed here, once, with orjson (the SDK
parses them with the standard library and repeats a body it cannot parse in its error).
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cloudevents.exceptions as cloud_exceptions
import orjson
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admission, ids
from .codecs import JSON_LENGTH_HEADER

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# kserve's own answer attributes (CE_TYPE, CE_SOURCE defaults in kserve 0.21).
RESPONSE_TYPE = "io.kserve.inference.response"
SOURCE_PREFIX = "io.kserve.inference."
# Extension attributes of the answer: the id of the event answered, and the record key a Kafka
# sink writes the answer under (CloudEvents' Kafka binding maps `partitionkey` to it).
IN_RESPONSE_TO = "inresponseto"
PARTITION_KEY = "partitionkey"
SOURCE_KEY = "key"  # where a KafkaSource puts a keyed record's key
# The attributes every event has (CloudEvents 1.0, "Required Attributes").
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
JSON_CONTENT_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"
# What each protocol's body may be, by media type (an absent Content-Type means JSON, as it
# does on these routes without an event).
DATA_CONTENT_TYPES: dict[str, tuple[str, ...]] = {
    "v1": (JSON_CONTENT_TYPE,),
    "v2": (JSON_CONTENT_TYPE, OCTET_STREAM),
}
_EXPECTED_DATA = {
    "v1": f"{JSON_CONTENT_TYPE} (the V1 request)",
    "v2": f"{JSON_CONTENT_TYPE} (the V2 request) or {OCTET_STREAM} (the V2 binary tensor "
    f"extension, with {JSON_LENGTH_HEADER})",
}
_ROUTE = re.compile(
    r"/v1/models/(?P<v1>[^/]+):predict|/v2/models/(?P<v2>[^/]+)(?:/versions/[^/]+)?/infer"
)
_CE_PREFIX = b"ce-"
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_CLOUDEVENTS_MEDIA = b"application/cloudevents"  # structured and batched alike


class Mode(enum.Enum):
    """An event's content mode (CloudEvents HTTP protocol binding, section 3)."""

    BINARY = "binary"
    STRUCTURED = "structured"


class EventError(ValueError):
    """A request's envelope is not a valid CloudEvent for this route (answered 400)."""


@dataclass(frozen=True)
class Route:
    """An inference route an event may be sent to: its protocol ("v1" or "v2") and model."""

    protocol: str
    model_name: str


@dataclass(frozen=True)
class Unwrapped:
    """A request event taken apart: the event (attributes only), and the plain request the
    route serves: its headers (ASGI pairs) and body (None: the body as received)."""

    event: CloudEvent
    headers: list[tuple[bytes, bytes]]
    body: bytes | None


def inference_route(method: str, path: str) -> Route | None:
    """The inference route of a request, None for any other route."""
    if method != "POST":
        return None
    match = _ROUTE.fullmatch(path)
    if match is None:
        return None
    if match["v1"] is not None:
        return Route("v1", match["v1"])
    return Route("v2", match["v2"])


def content_mode(headers: Iterable[tuple[bytes, bytes]]) -> Mode | None:
    """The content mode of a request, from its ASGI headers (lower-case names); None when it
    carries no event (no `ce-*` header, no CloudEvents Content-Type)."""
    mode = None
    for name, value in headers:
        if name == _CONTENT_TYPE and value[: len(_CLOUDEVENTS_MEDIA)].lower() == _CLOUDEVENTS_MEDIA:
            return Mode.STRUCTURED
        if name[:3] == _CE_PREFIX:
            mode = Mode.BINARY
    return mode


def unwrap(
    mode: Mode, headers: Sequence[tuple[bytes, bytes]], body: bytes | bytearray | None, route: Route
) -> Unwrapped:
    """The plain request inside an event sent to `route`; raises EventError for an envelope
    that is not a CloudEvents 1.0 event carrying a body this route takes.

    `body` is needed in structured mode only (binary mode keeps the body as it is).
    """
    if mode is Mode.BINARY:
        return _unwrap_binary(headers, route)
    return _unwrap_structured(headers, body if body is not None else b"", route)


def _unwrap_binary(headers: Sequence[tuple[bytes, bytes]], route: Route) -> Unwrapped:
    attributes: dict[str, str] = {}
    content_type: str | None = None
    plain: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:3] == _CE_PREFIX:
            attributes[name[3:].decode("latin-1")] = value.decode("latin-1")
            continue
        if name == _CONTENT_TYPE:
            content_type = value.decode("latin-1")
        plain.append((name, value))
    missing = [f"ce-{key}" for key in REQUIRED_ATTRIBUTES if not attributes.get(key)]
    if missing:
        received = ", ".join(f"ce-{key}" for key in attributes)
        raise EventError(
            f"binary-mode CloudEvent without {', '.join(missing)} (received {received}): "
            "expected the headers ce-specversion, ce-id, ce-source and ce-type, or "
            f"Content-Type: {STRUCTURED_CONTENT_TYPE} with the event as the body"
        )
    _check_specversion(attributes["specversion"])
    _check_data_type(content_type, route, "binary-mode CloudEvent with Content-Type")
    return Unwrapped(_event(attributes), plain, None)


def _unwrap_structured(
    headers: Sequence[tuple[bytes, bytes]], body: bytes | bytearray, route: Route
) -> Unwrapped:
    content_type = next((v for n, v in headers if n == _CONTENT_TYPE), b"").decode("latin-1")
    if _media_type(content_type) != STRUCTURED_CONTENT_TYPE:
        raise EventError(
            f"Content-Type {content_type:.80}: expected {STRUCTURED_CONTENT_TYPE} (one event "
            "per request: batched mode and other event formats are not served), or a "
            "binary-mode event (ce-* headers)"
        )
    expected = (
        "expected a JSON object with specversion, id, source, type, and the request as data "
        "(a JSON object) or data_base64"
    )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventError(
            f"structured-mode CloudEvent whose body ({len(body)} bytes) is not valid JSON "
            f"({exc}): {expected}"
        ) from None
    if not isinstance(document, dict):
        raise EventError(
            f"structured-mode CloudEvent whose body is a JSON {_json_type(document)}: {expected}"
        )
    data = document.pop("data", None)
    data_base64 = document.pop("data_base64", None)
    missing = [key for key in REQUIRED_ATTRIBUTES if key not in document]
    if missing:
        raise EventError(
            f"structured-mode CloudEvent without {', '.join(missing)} (received attributes "
            f"{', '.join(sorted(document)) or 'none'}): {expected}"
        )
    for key in REQUIRED_ATTRIBUTES:
        value = document[key]
        if not isinstance(value, str) or not value:
            raise EventError(
                f"CloudEvent attribute {key} is {value!r:.80}, expected a non-empty string"
            )
    _check_specversion(document["specversion"])
    declared = document.get("datacontenttype")
    if declared is not None and not isinstance(declared, str):
        raise EventError(f"CloudEvent datacontenttype is {declared!r:.80}, expected a string")
    if data is not None and data_base64 is not None:
        raise EventError("structured-mode CloudEvent with both data and data_base64: expected one")
    plain = [
        (n, v)
        for n, v in headers
        if n[:3] != _CE_PREFIX and n not in (_CONTENT_TYPE, _CONTENT_LENGTH)
    ]
    if data is not None:
        if not isinstance(data, dict):
            raise EventError(
                f"CloudEvent data is a JSON {_json_type(data)}, expected a JSON object "
                f"(the {route.protocol.upper()} request body)"
            )
        if declared is not None and _media_type(declared) != JSON_CONTENT_TYPE:
            raise EventError(
                f"CloudEvent datacontenttype {declared} with JSON data: expected "
                f"{JSON_CONTENT_TYPE}, or the bytes as data_base64"
            )
        payload = orjson.dumps(data)
        content_type = JSON_CONTENT_TYPE
        # The JSON length of a binary V2 body has nothing to say about a JSON one.
        plain = [(n, v) for n, v in plain if n != JSON_LENGTH_HEADER.encode()]
    elif data_base64 is not None:
        if not isinstance(data_base64, str):
            raise EventError(
                f"CloudEvent data_base64 is a JSON {_json_type(data_base64)}, expected a "
                "base64 string"
            )
        try:
            payload = binascii.a2b_base64(data_base64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(
                f"CloudEvent data_base64 is not valid base64 ({len(data_base64)} characters): {exc}"
            ) from None
        _check_data_type(declared, route, "CloudEvent datacontenttype")
        content_type = declared or JSON_CONTENT_TYPE
    else:
        raise EventError(
            "structured-mode CloudEvent without data or data_base64: expected the "
            f"{route.protocol.upper()} request as data (a JSON object) or data_base64"
        )
    plain += [
        (_CONTENT_TYPE, content_type.encode("latin-1")),
        (_CONTENT_LENGTH, str(len(payload)).encode()),
    ]
    return Unwrapped(_event(document), plain, payload)


def _event(attributes: dict[str, Any]) -> CloudEvent:
    """The SDK's event of checked attributes (the SDK checks them once more)."""
    try:
        return CloudEvent(attributes)
    except cloud_exceptions.GenericException as exc:
        raise EventError(f"not a valid CloudEvent: {exc}") from None


def _check_specversion(specversion: str) -> None:
    if specversion != SPECVERSION:
        raise EventError(
            f"CloudEvent specversion {specversion!r:.40} is not supported, expected {SPECVERSION!r}"
        )


def _check_data_type(content_type: str | None, route: Route, what: str) -> None:
    if content_type is None or _media_type(content_type) in DATA_CONTENT_TYPES[route.protocol]:
        return
    raise EventError(f"{what} {content_type:.80}: expected {_EXPECTED_DATA[route.protocol]}")


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def answer_extensions(request: CloudEvent) -> dict[str, str]:
    """What an answer carries over from the event it answers: that event's id, and its
    partition key (or a KafkaSource's record key) when it has one."""
    extensions = {IN_RESPONSE_TO: str(request["id"])}
    key = request.get(PARTITION_KEY) or request.get(SOURCE_KEY)
    if key:
        extensions[PARTITION_KEY] = str(key)
    return extensions


def _answer_event(
    route: Route, request_id: str, extensions: dict[str, str], attributes: dict[str, str]
) -> dict[str, str]:
    return {
        **extensions,
        "type": RESPONSE_TYPE,
        "source": SOURCE_PREFIX + route.model_name,
        "id": request_id,
        **attributes,
    }


def binary_answer_headers(
    route: Route, request_id: str, extensions: dict[str, str] | None = None
) -> list[tuple[bytes, bytes]]:
    """The `ce-*` headers of a binary-mode answer with id `request_id` and `extensions` (its
    body and Content-Type are the answer's own)."""
    headers, _ = to_binary(CloudEvent(_answer_event(route, request_id, extensions or {}, {})))
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def structured_answer(
    route: Route,
    request_id: str,
    content_type: str,
    body: bytes | bytearray,
    extensions: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """The Content-Type and body of a structured-mode answer with id `request_id` and
    `extensions`: the answer `body` as data (JSON) or data_base64 (anything else)."""
    data: Any = body
    if _media_type(content_type) == JSON_CONTENT_TYPE:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = body  # not the JSON it says it is: passed on as it is, in data_base64
    attributes = {"datacontenttype": content_type}
    event = CloudEvent(_answer_event(route, request_id, extensions or {}, attributes), data)
    headers, encoded = to_structured(event)
    return headers["content-type"], encoded


class CloudEventsMiddleware:
    """ASGI middleware: CloudEvents in and out of the inference routes (see the module
    docstring).

    Install it inside common.intake's body reading (it takes the whole body) and inside
    common.tracing's request ids (the answer's id is the request's).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        mode = content_mode(headers)
        route = inference_route(scope.get("method", ""), scope.get("path", "")) if mode else None
        if mode is None or route is None:
            await self.app(scope, receive, send)
            return
        body: bytes | bytearray | None = None
        if mode is Mode.STRUCTURED:
            body = await _whole_body(receive)
            if body is None:
                return  # the client left
        try:
            unwrapped = unwrap(mode, headers, body, route)
        except EventError as exc:
            await admission.send_error(scope, receive, send, 400, str(exc))
            return
        body = None  # the event's body is not kept while the route serves what it carried
        # The event's id becomes the request's id unless the client sent x-request-id.
        request_id = ids.adopt_v2_id(unwrapped.event["id"])
        extensions = answer_extensions(unwrapped.event)
        plain_headers, payload = unwrapped.headers, unwrapped.body
        del unwrapped
        if payload is not None:
            receive = _receiving(payload, receive)
            payload = None
        wrap = _BinaryAnswer if mode is Mode.BINARY else _StructuredAnswer
        answer = wrap(route, request_id, extensions, send)
        await self.app({**scope, "headers": plain_headers}, receive, answer.send)


async def _whole_body(receive: Receive) -> bytes | bytearray | None:
    """The request body (common.intake delivers it in one message); None if the client left."""
    pieces: list[bytes | bytearray] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        pieces.append(message.get("body", b""))
        if not message.get("more_body", False):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _receiving(body: bytes, receive: Receive) -> Receive:
    """A receive that delivers `body` whole, then what the client sends (its disconnect)."""
    held: bytes | None = body

    async def replaced() -> Message:
        nonlocal held
        if held is None:
            return await receive()
        message: Message = {"type": "http.request", "body": held, "more_body": False}
        held = None  # the route holds the body now, not this closure
        return message

    return replaced


def _request_id(adopted: str) -> str:
    # Read when the answer starts: a V2 body's id may have become the request id since.
    return ids.current_request_id() or adopted


class _BinaryAnswer:
    """Adds the answer event's `ce-*` headers to a 2xx answer."""

    def __init__(
        self, route: Route, request_id: str, extensions: dict[str, str], send: Send
    ) -> None:
        self.route, self.request_id, self._send = route, request_id, send
        self.extensions = extensions

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
            request_id = _request_id(self.request_id)
            headers = [(n, v) for n, v in message.get("headers", []) if n[:3] != _CE_PREFIX]
            message = {
                **message,
                "headers": headers + binary_answer_headers(self.route, request_id, self.extensions),
            }
        await self._send(message)


class _StructuredAnswer:
    """Holds a 2xx answer whole and sends it as a structured-mode event instead."""

    def __init__(
        self, route: Route, request_id: str, extensions: dict[str, str], send: Send
    ) -> None:
        self.route, self.request_id, self._send = route, request_id, send
        self.extensions = extensions
        self._start: Message | None = None
        self._body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if 200 <= message["status"] < 300:
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            await self._send_event(self._start)
            return
        await self._send(message)

    async def _send_event(self, start: Message) -> None:
        headers = [
            (n, v)
            for n, v in start.get("headers", [])
            if n not in (_CONTENT_TYPE, _CONTENT_LENGTH) and n[:3] != _CE_PREFIX
        ]
        content_type = next(
            (v.decode("latin-1") for n, v in start.get("headers", []) if n == _CONTENT_TYPE),
            JSON_CONTENT_TYPE,
        )
        event_type, body = structured_answer(
            self.route, _request_id(self.request_id), content_type, self._body, self.extensions
        )
        headers += [
            (_CONTENT_TYPE, event_type.encode("latin-1")),
            (_CONTENT_LENGTH, str(len(body)).encode()),
        ]
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
