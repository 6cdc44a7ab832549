"""The one place where V2 payloads become numpy arrays and numpy arrays become payloads.

Covers REST JSON, the REST binary tensor extension (parsed zero-copy: each binary input is a
view into the request body, never a Python list) and gRPC (`raw_input_contents` or typed
`contents`, as kserve's servicer hands them over in an InferRequest). Every check raises
kserve's InvalidInput, which both servers turn into HTTP 400 / gRPC INVALID_ARGUMENT, with a
message that says what was received and what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
)

from . import kserve_compat
from .modelrepo import NUMPY_DTYPES, TensorSpec, datatype_name

# The header that tells where the JSON part of a binary-extension body ends.
JSON_LENGTH_HEADER = "inference-header-content-length"

_LENGTH = struct.Struct("<I")


# --- tensors -----------------------------------------------------------------------------


def _check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    dims = list(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise InvalidInput(f"input {name!r}: shape must hold non-negative integers, got {dims}")
    return dims


def _check_datatype(name: str, datatype: Any) -> np.dtype[Any]:
    dtype = NUMPY_DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r}, expected one of {sorted(NUMPY_DTYPES)}"
        )
    return dtype


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split a length-prefixed BYTES buffer into `count` elements; raises InvalidInput."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES element {len(items)} declares {length} bytes but only "
                f"{len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: {len(items)} BYTES elements for a shape of {count}")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefix every element of a BYTES array (str is encoded as UTF-8)."""
    parts: list[bytes] = []
    for item in array.ravel():
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def input_to_numpy(tensor: InferInput) -> np.ndarray:
    """The validated array of one request input, whatever protocol carried it.

    Raw data (REST binary, gRPC raw_input_contents) is viewed in place, without a copy.
    Raises InvalidInput when the datatype is unknown or the data does not fill the shape.
    """
    name = tensor.name
    dtype = _check_datatype(name, tensor.datatype)
    shape = _check_shape(name, tensor.shape)
    count = math.prod(shape)
    raw = kserve_compat.raw_data(tensor)
    if raw is not None:
        return _raw_to_numpy(raw, tensor.datatype, shape, name)
    data = tensor.data
    if isinstance(data, np.ndarray):
        array = data
    elif data is None:
        raise InvalidInput(f"input {name!r}: no data")
    elif dtype == np.object_:
        # JSON can only carry strings; what they mean (text, base64) is the model's business.
        flat = list(_flatten(data))
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = flat
    else:
        if tensor.datatype == "FP16":
            raise InvalidInput(f"input {name!r}: FP16 is only accepted as binary data")
        try:
            array = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(
                f"input {name!r}: data is not valid {tensor.datatype}: {exc}"
            ) from exc
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: {array.size} elements of data, expected {count} for shape {shape}"
        )
    return array.reshape(shape)


def _raw_to_numpy(
    raw: bytes | memoryview, datatype: str, shape: list[int], name: str
) -> np.ndarray:
    """View binary tensor data as an array of `shape`; raises InvalidInput when sizes differ."""
    dtype = NUMPY_DTYPES[datatype]
    count = math.prod(shape)
    if dtype == np.object_:
        return deserialize_bytes(raw, count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"tensor {name!r}: {len(raw)} bytes of binary data, expected {expected} for "
            f"{datatype} shape {shape}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _flatten(data: Any) -> Any:
    if isinstance(data, list | tuple):
        for item in data:
            yield from _flatten(item)
    elif isinstance(data, str | bytes):
        yield data
    else:
        raise InvalidInput(f"BYTES data must hold strings, got {type(data).__name__}")


def output_to_numpy(tensor: InferOutput) -> np.ndarray:
    """The array of a response output (what a model or the predictor answered).

    Raises InferenceError (a server-side fault, not the client's) when it is malformed.
    """
    shape = list(tensor.shape)
    try:
        raw = kserve_compat.raw_data(tensor)
        if raw is not None:
            return _raw_to_numpy(raw, tensor.datatype, shape, tensor.name)
        if isinstance(tensor.data, np.ndarray):
            return tensor.data
        return np.asarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).reshape(shape)
    except (InvalidInput, KeyError, ValueError) as exc:
        raise InferenceError(f"malformed output {tensor.name!r}: {exc}") from exc


def numpy_input(name: str, array: np.ndarray) -> InferInput:
    """A request input carrying `array` as raw bytes (gRPC raw_input_contents)."""
    tensor = InferInput(name, list(array.shape), datatype_of(array))
    tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
    return tensor


def numpy_output(name: str, array: np.ndarray) -> InferOutput:
    """A response output holding `array` as raw bytes.

    Every output of a response must be raw: kserve's gRPC encoder breaks clients when raw and
    typed outputs are mixed. The REST encoder below reads raw outputs back as arrays.
    """
    tensor = InferOutput(name, list(array.shape), datatype_of(array))
    tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
    return tensor


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array."""
    name = datatype_name(array.dtype)
    if name is None:
        raise InvalidInput(f"no V2 datatype for numpy dtype {array.dtype}")
    return name


def v1_instances(payload: Any, example: str) -> list[Any]:
    """The rows of a V1 predict body: its "instances" list, or its "inputs" list (KServe's V1
    protocol takes either, from TensorFlow Serving's row format); raises InvalidInput, naming
    `example` (what one row looks like), when there is neither, both, or not a list."""
    if not isinstance(payload, dict):
        raise InvalidInput(
            f'expected a JSON object {{"instances": [{example}, ...]}}, got '
            f"{type(payload).__name__}"
        )
    given = [key for key in ("instances", "inputs") if key in payload]
    if len(given) != 1:
        raise InvalidInput(
            f'expected {{"instances": [{example}, ...]}} (or "inputs" instead of "instances"), '
            f"got keys {sorted(payload)}"
        )
    rows = payload[given[0]]
    if not isinstance(rows, list):
        raise InvalidInput(f'"{given[0]}" must be a list, got {type(rows).__name__}')
    return rows


def v1_tensors(
    payload: Any, inputs: Sequence[TensorSpec], alternates: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    """The named input arrays of a V1 predict body, each cast to its declared datatype (or to
    its alternate form's, for floats where the input is integer); raises InvalidInput.

    One input: each instance is a row of it. Several: each instance is an object with one
    value per input name (TensorFlow Serving's row format, which KServe's V1 follows)."""
    if len(inputs) == 1:
        rows = v1_instances(payload, f"<{inputs[0].describe()} row>")
        columns: dict[str, list[Any]] = {inputs[0].name: rows}
    else:
        names = [spec.name for spec in inputs]
        rows = v1_instances(payload, "{" + ", ".join(f'"{n}": ...' for n in names) + "}")
        columns = {name: [] for name in names}
        for index, row in enumerate(rows):
            if not isinstance(row, dict) or sorted(row) != sorted(names):
                got = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise InvalidInput(f"instance {index}: {got}, expected an object with {names}")
            for name in names:
                columns[name].append(row[name])
    return {
        spec.name: _v1_array(spec, alternates.get(spec.name), columns[spec.name]) for spec in inputs
    }


def _v1_array(spec: TensorSpec, alternate: TensorSpec | None, values: list[Any]) -> np.ndarray:
    """One input's V1 values as an array of its datatype; raises InvalidInput."""
    try:
        array = np.asarray(values)
    except ValueError as exc:
        raise InvalidInput(
            f"input {spec.name!r}: instances are not arrays of one shape: {exc}"
        ) from exc
    forms = [spec] + ([alternate] if alternate is not None else [])
    if array.dtype.kind in "iu":  # JSON integers: the integer form, else a float one
        form = next((f for f in forms if f.dtype.kind in "iu"), None)
        form = form or next((f for f in forms if f.dtype.kind == "f"), None)
    elif array.dtype.kind == "f":
        form = next((f for f in forms if f.dtype.kind == "f"), None)
    elif array.dtype.kind == "b":
        form = next((f for f in forms if f.dtype.kind == "b"), None)
    else:
        form = None
    if form is None:
        raise InvalidInput(
            f"input {spec.name!r}: instances of {array.dtype} values, expected "
            + " or ".join(f.describe() for f in forms)
        )
    if form.dtype.kind in "iu" and array.size:
        limits = np.iinfo(form.dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise InvalidInput(
                f"input {spec.name!r}: integer values must fit {form.datatype} "
                f"({limits.min} to {limits.max})"
            )
    return array.astype(form.dtype)


def v1_predictions(outputs: Mapping[str, np.ndarray]) -> np.ndarray | list[dict[str, Any]]:
    """A V1 "predictions" value: the one output's array (its rows), or with several outputs one
    object per row with each output's row (TensorFlow Serving's row format). Arrays stay numpy:
    kserve's orjson writes them (float32 as float32: short) without a Python list between."""
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    rows = len(next(iter(outputs.values())))
    return [{name: array[i] for name, array in outputs.items()} for i in range(rows)]


def parameter(parameters: Any, key: str) -> Any:
    """A request parameter's plain value, from a REST dict or a gRPC InferParameter map.

    Raises InvalidInput when `parameters` is neither (a V1 body's "parameters": true, say).
    """
    if parameters is None:
        return None
    if not isinstance(parameters, Mapping):
        raise InvalidInput(
            f'"parameters" must be an object, got {type(parameters).__name__}: {parameters!r:.40}'
        )
    if key not in parameters:
        return None
    value = parameters[key]
    if hasattr(value, "WhichOneof"):  # gRPC InferParameter
        field = value.WhichOneof("parameter_choice")
        return getattr(value, field) if field else None
    return value


# --- REST requests and responses -----------------------------------------------------------


def parse_rest_request(
    body: bytes | bytearray, json_length: str | None, model_name: str
) -> InferRequest:
    """Parse a V2 REST infer body, JSON or with binary tensors after the JSON part.

    Binary inputs stay views into `body`. Raises InvalidInput for malformed JSON, missing or
    misnamed fields, and binary sizes that do not add up to the body.
    """
    if json_length is None:
        header_end = len(body)
    else:
        try:
            header_end = int(json_length)
        except ValueError:
            header_end = -1
        if not 0 <= header_end <= len(body):
            raise InvalidInput(
                f"{JSON_LENGTH_HEADER} is {json_length!r}, expected an integer between 0 and "
                f"the body length {len(body)}"
            )
    view = memoryview(body)
    try:
        request = orjson.loads(view[:header_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise InvalidInput(f"request must be a JSON object, got {type(request).__name__}")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f'request needs a non-empty "inputs" list, got {inputs!r:.80}')

    offset = header_end
    tensors = []
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f'each input needs a "name" string, got {entry!r:.80}')
        name = entry["name"]
        for key in ("datatype", "shape"):
            if key not in entry:
                raise InvalidInput(f'input {name!r}: missing "{key}"')
        _check_datatype(name, entry["datatype"])
        shape = _check_shape(name, entry["shape"])
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f'input {name!r}: "parameters" must be an object')
        tensor = InferInput(name, shape, entry["datatype"], parameters=params or None)
        size = params.get("binary_data_size")
        if "data" in entry:
            tensor.data = entry["data"]
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(body) - offset} bytes left in the body"
                )
            kserve_compat.set_raw_data(tensor, view[offset : offset + size])
            offset += size
        else:
            raise InvalidInput(f'input {name!r}: needs "data" or a binary_data_size parameter')
        tensors.append(tensor)
    if offset != len(body):
        raise InvalidInput(
            f"{len(body) - offset} bytes after the last binary input: binary_data_size "
            "values do not add up to the body"
        )

    requested = None
    if request.get("outputs") is not None:
        outputs = request["outputs"]
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict)
            and isinstance(o.get("name"), str)
            and isinstance(o.get("parameters") or {}, dict)
            for o in outputs
        ):
            raise InvalidInput(
                '"outputs" must be a list of objects with a "name" (and optional "parameters" '
                f"object), got {outputs!r:.80}"
            )
        requested = [RequestedOutput(o["name"], o.get("parameters")) for o in outputs]
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'"id" must be a string, got {request_id!r:.40}')
    return InferRequest(
        model_name=model_name,
        infer_inputs=tensors,
        request_id=request_id,
        parameters=parameters,
        request_outputs=requested,
    )


def encode_rest_response(
    response: InferResponse, request: InferRequest
) -> tuple[bytes, dict[str, str]]:
    """Encode a V2 REST response; outputs go binary where the request asked for it.

    Returns the body and the extra headers (the JSON length when binary data follows).
    """
    default_binary = bool(parameter(request.parameters, "binary_data_output"))
    chosen: list[tuple[InferOutput, bool]] = []
    if request.request_outputs:
        for wanted in request.request_outputs:
            found = response.get_output_by_name(wanted.name)
            if found is None:
                names = [o.name for o in response.outputs]
                raise InvalidInput(f"requested output {wanted.name!r} does not exist: {names}")
            binary = (wanted.parameters or {}).get("binary_data", default_binary)
            chosen.append((found, bool(binary)))
    else:
        chosen = [(o, default_binary) for o in response.outputs]

    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in chosen:
        array = output_to_numpy(tensor)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(array.shape),
        }
        if binary or tensor.datatype == "FP16":
            blob = serialize_bytes(array) if tensor.datatype == "BYTES" else array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif tensor.datatype == "BYTES":
            entry["data"] = [_utf8(tensor.name, v) for v in array.ravel()]
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "outputs": outputs}
    if response.id:
        body["id"] = response.id
    if response.model_version:
        body["model_version"] = response.model_version
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {
        "content-type": "application/octet-stream",
        JSON_LENGTH_HEADER: str(len(head)),
    }


def _utf8(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"output {name!r} holds non-UTF-8 bytes: request it with binary_data"
        ) from exc


def json_response_body(payload: Mapping[str, Any]) -> bytes:
    """Serialise a V1 response (numpy arrays allowed)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
