"""Which OTEL_* environments turn tracing on, and the ones refused before a server starts
(common.telemetry.TelemetrySettings; the servers' traces are tests/test_tracing.py's)."""

from __future__ import annotations

import pytest

from common.telemetry import TelemetryError, TelemetrySettings

SERVICE = "image-classifier-predictor"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


def settings(**env: str) -> TelemetrySettings:
    return TelemetrySettings.from_env(env, SERVICE)


def test_off_unless_an_endpoint_is_set() -> None:
    off = settings(OTEL_TRACES_SAMPLER="always_on")
    assert not off.enabled and "OTEL_EXPORTER_OTLP_ENDPOINT" in off.why
    on = settings(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://collector:4318/v1/traces")
    assert on.enabled and on.protocol == "grpc" and on.service_name == SERVICE


@pytest.mark.parametrize(
    "variable, value",
    [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ],
)
def test_the_standard_switches_turn_it_off(variable: str, value: str) -> None:
    off = settings(**ENDPOINT, **{variable: value})
    assert not off.enabled and variable in off.why


def test_the_environment_names_the_service_when_it_says_so() -> None:
    assert settings(**ENDPOINT, OTEL_SERVICE_NAME="mine").service_name is None
    named = settings(**ENDPOINT, OTEL_RESOURCE_ATTRIBUTES="team=vision,service.name=mine")
    assert named.service_name is None
    assert settings(**ENDPOINT, OTEL_RESOURCE_ATTRIBUTES="team=vision").service_name == SERVICE


def test_http_protobuf_is_accepted() -> None:
    assert settings(**ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf").protocol == (
        "http/protobuf"
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "expected one of"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "expected 'otlp' or 'none'"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "a ratio from 0 to 1",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "a ratio from 0 to 1",
        ),
    ],
)
def test_values_the_sdk_would_ignore_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(TelemetryError, match=message):
        settings(**ENDPOINT, **env)
