"""JSON Schemas of the Open Inference Protocol's REST responses, written for this project.

Written by reading the protocol's own text and OpenAPI file (version 2, `inference_rest.md` and
`open_inference_rest.yaml` of the Open Inference Protocol, Apache 2.0): those files are not
copied here, and the repository does not need them to run its tests. Each schema states what
the protocol requires of a response body, as strictly as the protocol does: required fields and
their types (`versions`, when present, is a list of strings, so `null` fails), and nothing the
protocol leaves open (extra fields stay allowed, as in the OpenAPI file).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
_SHAPE: Schema = {"type": "array", "items": {"type": "integer"}}

# $metadata_tensor: name, datatype, shape (-1 for a variable dimension).
METADATA_TENSOR: Schema = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": _SHAPE,
    },
}

# $tensor_data: a (nested) array of numbers, strings and booleans (a $defs entry of the schema
# that uses it, so that it can refer to itself).
TENSOR_DATA: Schema = {
    "type": "array",
    "items": {
        "anyOf": [
            {"$ref": "#/$defs/tensor_data"},
            {"type": "number"},
            {"type": "string"},
            {"type": "boolean"},
        ]
    },
}

SCHEMAS: dict[str, Schema] = {
    # $live_server_response
    "server_live": {
        "type": "object",
        "required": ["live"],
        "properties": {"live": {"type": "boolean"}},
    },
    # $ready_server_response: the text shows "live", an evident copy of the live response;
    # servers (Triton, KServe) answer "ready". Either is taken, as a boolean.
    "server_ready": {
        "type": "object",
        "anyOf": [{"required": ["ready"]}, {"required": ["live"]}],
        "properties": {"ready": {"type": "boolean"}, "live": {"type": "boolean"}},
    },
    # $ready_model_response
    "model_ready": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    # $metadata_server_response
    "server_metadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": _STRINGS,
        },
    },
    # $metadata_model_response
    "model_metadata": {
        "type": "object",
        "required": ["name", "platform"],
        "properties": {
            "name": {"type": "string"},
            "versions": _STRINGS,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": METADATA_TENSOR},
            "outputs": {"type": "array", "items": METADATA_TENSOR},
            "properties": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    # $inference_response, its outputs in JSON (the binary extension's are not JSON).
    "inference_response": {
        "$defs": {"tensor_data": TENSOR_DATA},
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": _SHAPE,
                        "datatype": {"type": "string"},
                        "parameters": {"type": "object"},
                        "data": {"$ref": "#/$defs/tensor_data"},
                    },
                },
            },
        },
    },
    # $metadata_server_error_response, $metadata_model_error_response, $inference_error_response
    "error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}
