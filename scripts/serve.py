"""Start the predictor and the transformer on loopback, print an example request, stop on Ctrl-C.

    python scripts/serve.py --model_dir model_repository [--transformer_http_port 8080 ...]

Each component is its own process, as in the cluster; the transformer reaches the predictor
over V2 gRPC. Like a kubelet, this restarts a component that exits unexpectedly, with a backoff
that doubles from 1 s to 30 s (reset once it has run for a minute), and leaves the other
running: kill the predictor and watch the transformer answer 503 and turn not ready, then
serve again once the predictor is back. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import DEFAULT_MODEL_NAME, LOCAL_MODEL_REPOSITORY

EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "coffee.jpg"
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a component up this long starts again from the first backoff


@dataclass
class Component:
    """One supervised server process and its restart state."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None
    restarts: int = 0
    stopping: bool = field(default=False)

    def start(self) -> None:
        """Start (or restart) the process."""
        self.process = subprocess.Popen(self.command)
        self.started_at = time.monotonic()
        self.restart_at = None

    def check(self) -> None:
        """Restart the process with backoff if it exited; say so on stderr."""
        now = time.monotonic()
        if self.stopping or self.process is None:
            return
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                print(f"serve: restarting {self.name} (restart {self.restarts})", file=sys.stderr)
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        if now - self.started_at >= STABLE_AFTER_S:
            self.backoff_s = FIRST_BACKOFF_S
        print(
            f"serve: {self.name} exited unexpectedly with code {code}; restarting it in "
            f"{self.backoff_s:.0f} s (the other component keeps running)",
            file=sys.stderr,
            flush=True,
        )
        self.restart_at = now + self.backoff_s
        self.backoff_s = min(MAX_BACKOFF_S, self.backoff_s * 2)

    def stop(self) -> None:
        """SIGINT (stop without the drain), then SIGKILL if it does not exit in 15 s."""
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def wait(self) -> None:
        """Wait for a stopped process to exit."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_ready(url: str, component: Component, timeout: float) -> None:
    """Poll a readiness URL until it answers 200; restarts a component that dies meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        component.check()
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
    predictor = Component(
        "predictor",
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
        ],
    )
    transformer = Component(
        "transformer",
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
        ],
    )
    components = [predictor, transformer]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C stops both, even when this was started with SIGINT ignored (as a shell does for a
    # command started in the background with `&`), where Python would not raise on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for component in components:
            component.start()
        for component, port in (
            (predictor, args.predictor_http_port),
            (transformer, args.transformer_http_port),
        ):
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", component, args.timeout)
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
        while True:
            for component in components:
                component.check()
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    except TimeoutError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    finally:
        for component in components:
            component.stop()
        for component in components:
            component.wait()


if __name__ == "__main__":
    sys.exit(main())
