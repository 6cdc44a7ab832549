"""Hostile clients, run in a process of their own; each prints what it saw as one JSON object.

    python tests/hostile_clients.py slow --port P --connections 200 --seconds 20
    python tests/hostile_clients.py large --protocol v1|v2-binary|grpc|grpc-pixels
        --target HOST:PORT --count 32 --bytes N

`slow` holds connections open against an HTTP server for `--seconds`: most send a request head
with a large Content-Length and then one body byte per second (slow POST); `--slow_heads`
send their request head one byte per second (Slowloris); `--idle` send nothing. A connection
the server ends is opened again at once, so the load holds for the whole time. For every
connection it reports when it started, when the server answered or closed it, and the status.

`large` sends `--count` requests of `--bytes` at once over one protocol and reports each one's
status (HTTP code, or gRPC status name). The bodies are valid for their protocol but hold no
image: V1 JSON with base64 junk, V2 binary BYTES junk, gRPC BYTES junk to the transformer, or
gRPC UINT8 pixels of the wrong shape to the predictor (`grpc-pixels`).

Bounded: every request and the whole run have a time limit. Sends only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

MODEL = "image-classifier"
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
LARGE_TIMEOUT_S = 120.0


# --- slow connections ----------------------------------------------------------------------


async def _one_connection(port: int, kind: str, stop_at: float) -> dict[str, Any]:
    """Open one connection and trickle on it until the server ends it or `stop_at`."""
    started = time.monotonic()
    record: dict[str, Any] = {"kind": kind, "started": started, "ended": None, "status": None}
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        record["error"] = f"connect: {exc}"
        record["ended"] = time.monotonic()
        return record
    head = (
        f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()

    async def trickle() -> None:
        if kind == "slow_body":
            writer.write(head)
            await writer.drain()
            record["head_sent"] = time.monotonic()
        payload = head if kind == "slow_head" else b"{" * 1_000_000
        if kind == "idle":
            await asyncio.sleep(stop_at - time.monotonic())
            return
        for index in range(len(payload)):
            writer.write(payload[index : index + 1])
            await writer.drain()
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    try:
        remaining = stop_at - time.monotonic()
        data = await asyncio.wait_for(reader.read(4096), max(0.0, remaining))
        record["ended"] = time.monotonic()
        if data.startswith(b"HTTP/1.1 "):
            record["status"] = int(data[9:12])
    except TimeoutError:
        pass  # still open when the run ended
    except OSError as exc:  # reset by the server
        record["ended"] = time.monotonic()
        record["error"] = str(exc)
    finally:
        sender.cancel()
        writer.close()
    return record


async def _hold(port: int, kind: str, stop_at: float, records: list[dict[str, Any]]) -> None:
    """Keep one connection of `kind` open until `stop_at`, reopening it whenever it ends."""
    while time.monotonic() < stop_at - 0.5:
        records.append(await _one_connection(port, kind, stop_at))
        if records[-1].get("error", "").startswith("connect"):
            await asyncio.sleep(0.1)


async def slow(args: argparse.Namespace) -> dict[str, Any]:
    """The slow-connection load (see the module docstring)."""
    t0 = time.monotonic()
    stop_at = t0 + args.seconds
    records: list[dict[str, Any]] = []
    kinds = (
        ["slow_body"] * args.connections + ["slow_head"] * args.slow_heads + ["idle"] * args.idle
    )
    await asyncio.gather(*(_hold(args.port, kind, stop_at, records) for kind in kinds))
    for record in records:
        for key in ("started", "ended", "head_sent"):
            if record.get(key) is not None:
                record[key] = round(record[key] - t0, 3)
    return {"records": records, "seconds": round(time.monotonic() - t0, 3)}


# --- large bodies --------------------------------------------------------------------------


def _junk(size: int) -> bytes:
    return os.urandom(size)


async def _large_http(args: argparse.Namespace) -> list[str]:
    import httpx

    url = f"http://{args.target}"
    if args.protocol == "v1":
        # Valid JSON, valid base64 of junk, the whole body just under the limit.
        junk_bytes = (args.bytes - 64) * 3 // 4
        encoded = base64.b64encode(_junk(junk_bytes)).decode()
        body = json.dumps({"instances": [{"image": {"b64": encoded}}]}).encode()
        path, headers = PREDICT_PATH, {"content-type": "application/json"}
    else:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 0},
                    }
                ]
            }
        )
        junk_bytes = args.bytes - 512 - 4
        tensor_size = junk_bytes + 4
        header = header.replace('"binary_data_size": 0', f'"binary_data_size": {tensor_size}')
        prefix = header.encode()
        body = prefix + junk_bytes.to_bytes(4, "little") + _junk(junk_bytes)
        path = f"/v2/models/{MODEL}/infer"
        headers = {
            "inference-header-content-length": str(len(prefix)),
            "content-type": "application/octet-stream",
        }
    assert len(body) <= args.bytes, (len(body), args.bytes)
    limits = httpx.Limits(max_connections=args.count)
    async with httpx.AsyncClient(timeout=LARGE_TIMEOUT_S, limits=limits) as client:

        async def one() -> str:
            try:
                response = await client.post(url + path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return f"error: {type(exc).__name__}"
            return str(response.status_code)

        return list(await asyncio.gather(*(one() for _ in range(args.count))))


async def _large_grpc(args: argparse.Namespace) -> list[str]:
    import numpy as np
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    if args.protocol == "grpc":
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([_junk(args.bytes - 1024)], dtype=np.object_))
    else:
        # Pixels, as the transformer sends them, but a batch no model config allows.
        rows = (args.bytes - 1024) // (224 * 224 * 3)
        pixels = np.frombuffer(_junk(rows * 224 * 224 * 3), np.uint8).reshape(rows, 224, 224, 3)
        tensor = grpcclient.InferInput("pixels__0", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
    async with grpcclient.InferenceServerClient(args.target) as client:

        async def one() -> str:
            try:
                await client.infer(MODEL, [tensor], client_timeout=LARGE_TIMEOUT_S)
            except InferenceServerException as exc:
                return str(exc.status()).replace("StatusCode.", "")
            return "OK"

        return list(await asyncio.gather(*(one() for _ in range(args.count))))


async def large(args: argparse.Namespace) -> dict[str, Any]:
    """The large-body load (see the module docstring)."""
    started = time.monotonic()
    if args.protocol.startswith("grpc"):
        statuses = await _large_grpc(args)
    else:
        statuses = await _large_http(args)
    return {"statuses": statuses, "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    slow_parser = commands.add_parser("slow")
    slow_parser.add_argument("--port", type=int, required=True)
    slow_parser.add_argument("--connections", type=int, default=200)
    slow_parser.add_argument("--slow_heads", type=int, default=0)
    slow_parser.add_argument("--idle", type=int, default=0)
    slow_parser.add_argument("--seconds", type=float, default=20.0)
    large_parser = commands.add_parser("large")
    large_parser.add_argument(
        "--protocol", choices=["v1", "v2-binary", "grpc", "grpc-pixels"], required=True
    )
    large_parser.add_argument("--target", required=True, help="127.0.0.1:PORT")
    large_parser.add_argument("--count", type=int, default=32)
    large_parser.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args()
    run = slow if args.command == "slow" else large
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
