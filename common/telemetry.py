"""OpenTelemetry traces for both servers: configured once from the standard `OTEL_*` variables,
off unless an OTLP endpoint is set, and the few span shapes the request path needs.

Off (no `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
`OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`) nothing is built: every helper here
checks one module variable and returns, so the request path does no tracing work at all.

On, the SDK reads its own variables as its documentation says: the endpoint, headers, timeout
and certificates (`OTEL_EXPORTER_OTLP_*`), the sampler (`OTEL_TRACES_SAMPLER`, `..._ARG`), the
batch processor (`OTEL_BSP_*`), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`)
and the propagators (`OTEL_PROPAGATORS`, W3C trace context and baggage by default). This module
checks the ones whose mistakes the SDK would only warn about (protocol, sampler) before the
server starts, and names the service `<model>-<component>` unless the environment names it.

Why spans are made here by hand rather than by opentelemetry-instrumentation-asgi/-grpc: the
request edge (`common.tracing`) already wraps every inference request, REST and gRPC, and knows
which requests are probes and scrapes (they get no span), what the client was answered, and the
request id; and batching needs spans the instrumentations cannot make: one span per forward pass,
linked to every request it served.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)

TRACER_NAME = "kserve_image_classifier"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS = ("grpc", "http/protobuf")
# The Python SDK's own default for the `otlp` exporter (the specification's is http/protobuf:
# set OTEL_EXPORTER_OTLP_PROTOCOL for a collector that only listens on 4318).
DEFAULT_PROTOCOL = "grpc"
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# Attribute names: OpenTelemetry's semantic conventions where one exists, else ours.
MODEL_NAME, MODEL_VERSION = "model.name", "model.version"
REQUEST_ID, REQUEST_IDS = "request.id", "request.ids"
IMAGES, BATCH_SIZE, BATCH_REQUESTS, ENGINE = "images", "batch.size", "batch.requests", "engine"
# How much of an error answer's body becomes the span's status message.
ERROR_MESSAGE_CHARS = 1024


class TelemetryError(ValueError):
    """An OTEL_* variable holds a value the SDK would ignore or misread."""


@dataclass(frozen=True)
class TelemetrySettings:
    """Whether traces are exported, where to and as what service; from the environment."""

    enabled: bool
    why: str  # for the start-up log line
    protocol: str = DEFAULT_PROTOCOL
    service_name: str | None = None  # None: the environment names it

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_service: str) -> TelemetrySettings:
        """Read the variables that turn tracing on and off; raises TelemetryError for a
        protocol, exporter or sampler the SDK does not know."""
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(False, "OTEL_SDK_DISABLED=true")
        exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
        if exporter == "none":
            return cls(False, "OTEL_TRACES_EXPORTER=none")
        if exporter != "otlp":
            raise TelemetryError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: this server exports traces over OTLP only, "
                "expected 'otlp' or 'none'"
            )
        endpoint = next((env[k] for k in ENDPOINT_VARIABLES if env.get(k, "").strip()), None)
        if endpoint is None:
            return cls(False, f"no {' or '.join(reversed(ENDPOINT_VARIABLES))} set")
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or DEFAULT_PROTOCOL
        ).strip()
        if protocol not in PROTOCOLS:
            raise TelemetryError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected one of {list(PROTOCOLS)}"
            )
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if sampler and sampler not in SAMPLERS:
            raise TelemetryError(f"OTEL_TRACES_SAMPLER={sampler!r}: expected one of {SAMPLERS}")
        argument = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if sampler.endswith("traceidratio") and argument:
            try:
                ratio = float(argument)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise TelemetryError(
                    f"OTEL_TRACES_SAMPLER_ARG={argument!r}: expected a ratio from 0 to 1"
                )
        named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        return cls(
            True,
            f"to {endpoint} over {protocol}",
            protocol,
            None if named else default_service,
        )


_tracer: trace.Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider while tracing is on


def configure(settings: TelemetrySettings) -> None:
    """Build the tracer provider and its OTLP exporter (or nothing, when off) and log which."""
    global _tracer, _provider
    if not settings.enabled:
        logger.info("tracing off (%s)", settings.why)
        return
    # Imported only when on: a server without tracing never loads the SDK or an exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    attributes = {SERVICE_NAME: settings.service_name} if settings.service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler from the env
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider, _tracer = provider, provider.get_tracer(TRACER_NAME)
    logger.info(
        "tracing on: service %s, exported %s",
        provider.resource.attributes.get(SERVICE_NAME),
        settings.why,
    )


def shutdown() -> None:
    """Export what is buffered and stop the exporter (at server stop); tracing is off after."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def enabled() -> bool:
    """Whether spans are being made."""
    return _tracer is not None


def current() -> Context | None:
    """The trace context of the code running now (to parent or link spans made elsewhere
    later: a batch, a shared call), None when tracing is off."""
    return otel_context.get_current() if _tracer is not None else None


def now_ns() -> int:
    """Wall-clock nanoseconds, as span timestamps are."""
    return time.time_ns()


class ServerSpan:
    """A request's server span, current for the code serving it until `end`."""

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self._token = token

    def set(self, key: str, value: Any) -> None:
        """Set one attribute."""
        self.span.set_attribute(key, value)

    def end(self, error: str | None = None) -> None:
        """End the span (with an error status and the message the client got, when `error`)
        and restore the context from before it."""
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error[:ERROR_MESSAGE_CHARS]))
        self.span.end()
        otel_context.detach(self._token)  # type: ignore[arg-type]


def start_server_span(
    name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]
) -> ServerSpan | None:
    """A server span continuing the trace in `carrier` (the request's `traceparent` and
    `tracestate`), made current; None when tracing is off."""
    if _tracer is None:
        return None
    parent = propagate.extract(carrier)
    span = _tracer.start_span(name, parent, SpanKind.SERVER, attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return ServerSpan(span, token)


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """An internal span, child of the current one, around the block (error status from an
    exception that leaves it); yields None when tracing is off."""
    if _tracer is None:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current_span:
        yield current_span


def _links(contexts: Sequence[Context | None]) -> list[Link]:
    links = []
    for context in contexts:
        if context is None:
            continue
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links


@contextmanager
def shared_span(
    name: str,
    kind: SpanKind,
    contexts: Sequence[Context | None],
    attributes: Mapping[str, Any],
    carrier: MutableMapping[str, str] | None = None,
) -> Iterator[Span | None]:
    """A span for work done once for several requests (a forward pass, a coalesced call):
    child of the first request's context, linked to every request's span (so each request's
    trace finds it, as batching needs). With `carrier`, the span's context is injected into it
    (the headers of an outgoing call). Yields None when tracing is off."""
    if _tracer is None:
        yield None
        return
    parent = next((c for c in contexts if c is not None), None)
    with _tracer.start_as_current_span(
        name, parent, kind, attributes, _links(contexts)
    ) as current_span:
        if carrier is not None:
            propagate.inject(carrier)
        yield current_span


def record_span(
    name: str,
    parent: Context | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """A span that already happened (a wait in a queue), child of `parent`; nothing when
    tracing is off or there is no parent."""
    if _tracer is None or parent is None:
        return
    _tracer.start_span(name, parent, SpanKind.INTERNAL, attributes, start_time=start_ns).end(end_ns)


def error_message(body: bytes) -> str:
    """What an error answer told the client: its JSON `error` field, else its text."""
    text = body[: ERROR_MESSAGE_CHARS * 4].decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text
