"""A real OTLP trace receiver on loopback: the collector's `TraceService/Export` over gRPC (from
`opentelemetry-proto`), keeping every span it is sent, for tests and the benchmark.

It is what an OpenTelemetry Collector's `otlp` receiver is to the servers: they export to
`endpoint` with their real OTLP exporter, and `spans()` reads back what arrived, flattened.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from harness.servers import stop_process

# The proto's span kinds and status codes, by number.
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids in hex."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span
    status: str
    status_message: str
    start_ns: int
    end_ns: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in span.links),
                            status=STATUS.get(span.status.code, str(span.status.code)),
                            status_message=span.status.message,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        self.receiver.add(received, request.ByteSize())
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Keeps the spans exported to it; thread-safe."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.exports = 0
        self.bytes = 0
        self.endpoint = ""  # http://127.0.0.1:<port>, once started

    def add(self, spans: list[ReceivedSpan], size: int) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.exports += 1
            self.bytes += size

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans once `condition(spans)` holds; raises TimeoutError (with what arrived)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if condition(spans):
                return spans
            if time.monotonic() >= deadline:
                names = sorted({f"{s.service}:{s.name}" for s in spans})
                raise TimeoutError(f"{len(spans)} spans after {timeout_s:.0f} s: {names}")
            time.sleep(0.05)


def format_tree(spans: list[ReceivedSpan], trace_id: str) -> str:
    """One trace as an indented tree (service, span, duration, key attributes; links named),
    for a reader: the README's example, a failing test's message."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(mine, key=lambda s: s.start_ns):
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    shown = ("request.id", "images", "batch.size", "batch.requests", "engine", "model.version")
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            ms = (span.end_ns - span.start_ns) / 1e6
            details = ", ".join(f"{k}={span.attributes[k]}" for k in shown if k in span.attributes)
            links = f", linked to {len(span.links)} request(s)" if span.links else ""
            status = f" [{span.status}: {span.status_message}]" if span.status == "error" else ""
            lines.append(
                f"{'  ' * depth}{span.service}  {span.name}  {ms:.1f} ms"
                f"{'  (' + details + links + ')' if details or links else ''}{status}"
            )
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A receiver listening on a free loopback port for the length of the block."""
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None)


def tracing_env(receiver: OtlpReceiver, **overrides: str) -> dict[str, str]:
    """The OTEL_* variables that make a server export every span to `receiver` at once (50 ms
    batches), plus `overrides`."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **overrides,
    }


@contextmanager
def receiver_process(log_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A receiver in a process of its own (`python -m harness.otlp`), so its work is not
    charged to the caller: (endpoint, process). On leaving, it is stopped; it writes the span
    count to `log_dir/otlp-receiver.json`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    summary = log_dir / "otlp-receiver.json"
    summary.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.otlp", "--summary", str(summary)],
        stdout=subprocess.PIPE,
        stderr=(log_dir / "otlp-receiver.log").open("wb"),
    )
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().decode().strip()
        if not endpoint.startswith("http://"):
            raise RuntimeError(f"the OTLP receiver did not start (said {endpoint!r})")
        yield endpoint, process
    finally:
        stop_process(process)


def received_spans(log_dir: Path) -> int | None:
    """How many spans the receiver process of `log_dir` received (after it stopped)."""
    summary = log_dir / "otlp-receiver.json"
    return int(json.loads(summary.read_text())["spans"]) if summary.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Receive until SIGTERM; print the endpoint first, write the span count at the end."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args(argv)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with otlp_receiver() as receiver:
        print(receiver.endpoint, flush=True)
        stopped.wait()
        count = len(receiver.spans())
    args.summary.write_text(json.dumps({"spans": count, "exports": receiver.exports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
