"""Runs tritonclient.grpc calls in a process of its own and prints the results as JSON.

kserve and tritonclient.grpc cannot be imported into one process (both register the protobuf
package `inference`), so the pytest process, which imports kserve, runs this script instead:

    python tests/grpc_client.py < calls.json > results.json

Input: a JSON list of calls, each {"op": ..., "url": "host:port", ...}; "headers" (optional)
become gRPC metadata on the call, "client_timeout" (optional, seconds) its deadline. Output: a
list of results in the same order, {"ok": true, ...} or {"ok": false, "code": ...,
"message": ...}, each with the "seconds" the call took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def health(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    headers = call.get("headers")
    return {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(call["model"], headers=headers),
    }


def metadata(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    meta = client.get_model_metadata(call["model"], headers=call.get("headers"), as_json=True)
    return {"inputs": meta.get("inputs", []), "outputs": meta.get("outputs", [])}


def infer_images(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    blobs = [Path(f).read_bytes() for f in call.get("files", [])]
    blobs += [bytes.fromhex(h) for h in call.get("hex", [])]
    tensor = grpcclient.InferInput("image", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    parameters = {"top_k": call["top_k"]} if "top_k" in call else None
    result = client.infer(
        call["model"],
        [tensor],
        parameters=parameters,
        request_id=call.get("request_id", ""),
        headers=call.get("headers"),
        client_timeout=call.get("client_timeout"),
    )
    return {
        "id": result.get_response().id,
        "class_id": result.as_numpy("class_id").tolist(),
        "label": [[v.decode() for v in row] for row in result.as_numpy("label")],
        "score": result.as_numpy("score").tolist(),
    }


def infer_tensor(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    array = np.load(call["npy"])
    tensor = grpcclient.InferInput(call["name"], list(array.shape), call["datatype"])
    tensor.set_data_from_numpy(array)
    result = client.infer(call["model"], [tensor])
    logits = result.as_numpy(call["output"])
    return {"shape": list(logits.shape), "dtype": str(logits.dtype), "values": logits.tolist()}


def infer_tensors(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    """Several named inputs, each {"name", "datatype", "npy"}; returns each output in
    call["outputs"] by name as {"datatype", "shape", "values"} (None where the answer lacks it)."""
    tensors = []
    for entry in call["inputs"]:
        array = np.load(entry["npy"])
        tensor = grpcclient.InferInput(entry["name"], list(array.shape), entry["datatype"])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    wanted = [grpcclient.InferRequestedOutput(name) for name in call["outputs"]]
    result = client.infer(call["model"], tensors, outputs=wanted)
    outputs: dict[str, dict[str, Any] | None] = {}
    for name in call["outputs"]:
        values = result.as_numpy(name)
        outputs[name] = None
        if values is not None:
            outputs[name] = {
                "datatype": result.get_output(name).datatype,
                "shape": list(values.shape),
                "values": values.tolist(),
            }
    return {"outputs": outputs}


OPS = {
    "health": health,
    "metadata": metadata,
    "infer_images": infer_images,
    "infer_tensor": infer_tensor,
    "infer_tensors": infer_tensors,
}


def main() -> int:
    calls = json.load(sys.stdin)
    results = []
    for call in calls:
        client = grpcclient.InferenceServerClient(call["url"])
        started = time.perf_counter()
        try:
            result = {"ok": True, **OPS[call["op"]](client, call)}
        except InferenceServerException as exc:
            result = {"ok": False, "code": exc.status(), "message": exc.message()}
        finally:
            client.close()
        results.append({**result, "seconds": time.perf_counter() - started})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
