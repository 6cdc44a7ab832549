"""manifests/examples/kafka-eventing: requests from a Kafka topic, answers to another.

Rendered with `kubectl kustomize` and checked for what the pieces must agree on, with each
other and with the rest of the repository: the KafkaSource feeds the Broker; the request
Trigger sends the source's events to the InferenceService the overlays deploy, on a route the
transformer takes events on (common.events), and never matches an answer; the reply Trigger
matches the type and source the transformer gives its answers and writes them to a topic that
is not the requests topic; every Kafka client names the same bootstrap servers; the delivery
timeout fits between the server's own request timeout and the component's. No Knative schemas
are installed here, so the Knative kinds are checked field by field (the core kinds are checked
strictly in tests/test_manifests.py, with every example).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from test_manifests import flag_value, isvc_of, needs_kubectl, render

from common import events, lifecycle

EXAMPLE = "examples/kafka-eventing"
# The type a KafkaSource gives a record that is not itself a CloudEvent (the KafkaSource CRD's
# registry.knative.dev/eventTypes annotation; Knative's KafkaSource docs).
KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
REQUESTS_TOPIC = "image-classifier-requests"
REPLIES_TOPIC = "image-classifier-replies"
FAILED_TOPIC = "image-classifier-failed"
KINDS = Counter(
    {
        ("sources.knative.dev/v1beta1", "KafkaSource"): 1,
        ("eventing.knative.dev/v1", "Broker"): 1,
        ("eventing.knative.dev/v1", "Trigger"): 2,
        ("eventing.knative.dev/v1alpha1", "KafkaSink"): 2,
        ("v1", "ConfigMap"): 1,
        ("rbac.authorization.k8s.io/v1", "ClusterRole"): 1,
        ("networking.k8s.io/v1", "NetworkPolicy"): 1,
    }
)

pytestmark = needs_kubectl


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    """The example's documents of `kind`, by name."""
    return {d["metadata"]["name"]: d for d in render(EXAMPLE) if d["kind"] == kind}


def ref_to(docs: dict[str, dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any]:
    """The example's document a Knative KReference names; raises AssertionError if none."""
    doc = docs.get(ref["name"])
    assert doc is not None, f"{ref} names nothing in the example"
    assert (ref["apiVersion"], ref["kind"]) == (doc["apiVersion"], doc["kind"]), ref
    return doc


def seconds(duration: str) -> float:
    """An ISO 8601 duration of seconds (PT20S, PT0.5S) in seconds; raises ValueError."""
    match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", duration)
    if match is None:
        raise ValueError(f"{duration!r}: expected PT<seconds>S")
    return float(match[1])


def triggers() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request Trigger (to the InferenceService) and the reply Trigger (to a KafkaSink)."""
    found = by_kind("Trigger")
    [request] = [t for t in found.values() if t["spec"]["subscriber"]["ref"]["kind"] != "KafkaSink"]
    [reply] = [t for t in found.values() if t["spec"]["subscriber"]["ref"]["kind"] == "KafkaSink"]
    return request, reply


def model() -> tuple[str, str]:
    """The InferenceService the overlays deploy and the model name its predictor serves."""
    isvc = isvc_of("knative")
    predictor_args = isvc["spec"]["predictor"]["containers"][0]["args"]
    return isvc["metadata"]["name"], flag_value(predictor_args, "--model_name") or ""


def test_renders_the_knative_kinds_at_their_api_versions() -> None:
    rendered = Counter((d["apiVersion"], d["kind"]) for d in render(EXAMPLE))
    assert rendered == KINDS


def test_the_source_reads_the_requests_topic_into_a_kafka_broker() -> None:
    [source] = by_kind("KafkaSource").values()
    assert source["spec"]["topics"] == [REQUESTS_TOPIC]
    assert source["spec"]["consumerGroup"]
    broker = ref_to(by_kind("Broker"), source["spec"]["sink"]["ref"])
    assert "uri" not in source["spec"]["sink"]
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    config = ref_to(by_kind("ConfigMap"), broker["spec"]["config"])
    assert int(config["data"]["default.topic.replication.factor"]) >= 1


def test_every_kafka_client_names_the_same_bootstrap_servers() -> None:
    [source] = by_kind("KafkaSource").values()
    servers = source["spec"]["bootstrapServers"]
    assert servers and all(re.fullmatch(r"[\w.-]+:\d+", s) for s in servers), servers
    [config] = by_kind("ConfigMap").values()
    assert config["data"]["bootstrap.servers"].split(",") == servers
    sinks = by_kind("KafkaSink")
    assert {name: sink["spec"]["bootstrapServers"] for name, sink in sinks.items()} == {
        name: servers for name in sinks
    }


def test_the_request_trigger_sends_source_events_to_the_inference_service() -> None:
    request, reply = triggers()
    [broker_name] = by_kind("Broker")
    assert request["spec"]["broker"] == reply["spec"]["broker"] == broker_name
    assert request["spec"]["filter"] == {"attributes": {"type": KAFKA_EVENT_TYPE}}
    subscriber = request["spec"]["subscriber"]
    isvc_name, model_name = model()
    assert subscriber["ref"] == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "name": isvc_name,
    }
    # An absolute path, resolved against the InferenceService's address: a route the
    # transformer takes events on, for the model the predictor serves (and KServe names the
    # transformer's model after the InferenceService).
    assert subscriber["uri"].startswith("/")
    assert events.inference_route("POST", subscriber["uri"]) == events.Route("v1", model_name)
    assert model_name == isvc_name
    # Parallel delivery: the predictor batches requests that arrive together.
    annotations = request["metadata"].get("annotations", {})
    assert annotations.get("kafka.eventing.knative.dev/delivery.order", "unordered") == "unordered"


def test_no_answer_is_sent_back_as_a_request() -> None:
    request, reply = triggers()
    assert request["spec"]["filter"]["attributes"]["type"] != events.RESPONSE_TYPE
    sink = ref_to(by_kind("KafkaSink"), reply["spec"]["subscriber"]["ref"])
    assert sink["spec"]["topic"] != REQUESTS_TOPIC


def test_the_reply_trigger_writes_the_transformers_answers_to_the_replies_topic() -> None:
    _, reply = triggers()
    _, model_name = model()
    assert reply["spec"]["filter"] == {
        "attributes": {"type": events.RESPONSE_TYPE, "source": events.SOURCE_PREFIX + model_name}
    }
    sink = ref_to(by_kind("KafkaSink"), reply["spec"]["subscriber"]["ref"])
    assert sink["spec"]["topic"] == REPLIES_TOPIC
    assert sink["spec"]["contentMode"] == "binary"  # the record's value is the answer itself


def test_undelivered_events_go_to_the_failed_topic() -> None:
    request, _ = triggers()
    [broker] = by_kind("Broker").values()
    sinks = by_kind("KafkaSink")
    for owner in (request, broker):  # the request Trigger's delivery, and the Broker's default
        delivery = owner["spec"]["delivery"]
        sink = ref_to(sinks, delivery["deadLetterSink"]["ref"])
        assert sink["spec"]["topic"] == FAILED_TOPIC
        assert delivery["retry"] >= 1 and delivery["backoffPolicy"] in {"linear", "exponential"}
    assert FAILED_TOPIC not in {REQUESTS_TOPIC, REPLIES_TOPIC}


def test_the_delivery_timeout_outlasts_the_servers_request_timeout() -> None:
    """The transformer ends a slow request with its own status before the dispatcher gives up,
    and the dispatcher gives up before Knative's component timeout cuts the request."""
    request, _ = triggers()
    timeout = seconds(request["spec"]["delivery"]["timeout"])
    assert lifecycle.DEFAULT_REQUEST_TIMEOUT_S < timeout
    assert timeout < isvc_of("knative")["spec"]["transformer"]["timeout"]


def test_knative_may_resolve_the_inference_services_address() -> None:
    [role] = by_kind("ClusterRole").values()
    assert role["metadata"]["labels"]["duck.knative.dev/addressable"] == "true"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert {"inferenceservices", "inferenceservices/status"} <= set(rule["resources"])
    assert {"get", "list", "watch"} <= set(rule["verbs"])


def test_the_dispatcher_may_reach_the_transformers_http_port_only() -> None:
    """Standard mode's policies admit only the ingress and Prometheus to the transformer: the
    example adds the Kafka dispatcher (knative-eventing), on the HTTP port and nothing else."""
    [policy] = by_kind("NetworkPolicy").values()
    isvc = isvc_of("standard")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "transformer",
    }
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "knative-eventing"}}}
    ]
    (port,) = isvc["spec"]["transformer"]["containers"][0]["ports"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
