"""Start the predictor and the transformer on loopback, print an example request, stop on Ctrl-C.

    python scripts/serve.py --model_dir model_repository [--transformer_http_port 8080 ...]

Each component is its own process, as in the cluster; the transformer reaches the predictor
over V2 gRPC.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common.cli import DEFAULT_MODEL_NAME, LOCAL_MODEL_REPOSITORY

EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "coffee.jpg"


def wait_ready(url: str, name: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll a readiness URL until it answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", default=LOCAL_MODEL_REPOSITORY)
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--transformer_http_port", type=int, default=8080)
    p.add_argument("--transformer_grpc_port", type=int, default=8081)
    p.add_argument("--predictor_http_port", type=int, default=9080)
    p.add_argument("--predictor_grpc_port", type=int, default=9081)
    p.add_argument("--timeout", type=float, default=120)
    args, extra = p.parse_known_args()
    common = ["--model_dir", args.model_dir, "--model_name", args.model_name]
    predictor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "predictor",
            *common,
            "--http_port",
            str(args.predictor_http_port),
            "--grpc_port",
            str(args.predictor_grpc_port),
            *extra,
        ]
    )
    transformer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transformer",
            *common,
            "--http_port",
            str(args.transformer_http_port),
            "--grpc_port",
            str(args.transformer_grpc_port),
            "--predictor_host",
            f"127.0.0.1:{args.predictor_grpc_port}",
        ]
    )
    processes = [predictor, transformer]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for name, process, port in (
            ("predictor", predictor, args.predictor_http_port),
            ("transformer", transformer, args.transformer_http_port),
        ):
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", name, process, args.timeout)
        base = f"http://127.0.0.1:{args.transformer_http_port}"
        # The shell splices the image's base64 into the JSON body.
        body = '{"instances": [{"image": {"b64": "\'$(base64 -w0 ' + str(EXAMPLE_IMAGE) + ")'\"}}]}"
        print(
            "\nReady: transformer on "
            f"HTTP {args.transformer_http_port} / gRPC {args.transformer_grpc_port}, predictor on "
            f"HTTP {args.predictor_http_port} / gRPC {args.predictor_grpc_port}.\n"
            f"Demo page: open {base}/ in a browser.\n"
            "Or try (V1 JSON):\n\n"
            f"  curl -s {base}/v1/models/{args.model_name}:predict \\\n"
            "    -H 'Content-Type: application/json' \\\n"
            f"    -d '{body}'\n\n"
            "Press Ctrl-C to stop both.\n",
            flush=True,
        )
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        for name, process in (("predictor", predictor), ("transformer", transformer)):
            if process.poll() is not None:
                print(f"{name} exited with code {process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
