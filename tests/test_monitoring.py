"""manifests/monitoring and scraping: the rules and dashboard use only metrics that exist.

Every PromQL expression in the PrometheusRule and the Grafana dashboard is parsed (promql-parser)
and each metric it selects must appear on a real server's /metrics after real traffic, so a
renamed metric breaks this test instead of a dashboard or an alert. The cluster's own series
(cAdvisor, kube-state-metrics, NVIDIA's dcgm-exporter), which no test here can scrape, are
checked by name against CLUSTER_SERIES, and their selectors must pick our pods by KServe's pod
names. Every overlay enables scraping the KServe way; the payload-logging overlay turns on
KServe's logger.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from conftest import DATA, MODEL_NAME, Server, start_transformer
from prometheus_client.parser import text_string_to_metric_families
from test_manifests import OVERLAYS

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
KUBECTL = shutil.which("kubectl")
# Series Prometheus makes itself, not the servers.
PROMETHEUS_OWN = {"up"}
# Series the cluster exports about our pods, by the exporter whose documentation lists them: a
# misspelt name in a panel or an alert fails the test as an unexported one would.
CLUSTER_SERIES = {
    # The kubelet's embedded cAdvisor (/metrics/cadvisor; cAdvisor's docs/storage/prometheus.md),
    # labelled namespace, pod, container.
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
    # kube-state-metrics (docs/metrics/workload/pod-metrics.md), labels resource and unit.
    "kube_pod_container_resource_limits": "kube-state-metrics",
    # NVIDIA dcgm-exporter's default counters (etc/default-counters.csv; FB_* in MiB), labelled
    # with the pod holding the GPU (namespace, pod, container) in Kubernetes mode.
    "DCGM_FI_DEV_GPU_UTIL": "dcgm-exporter",
    "DCGM_FI_DEV_FB_USED": "dcgm-exporter",
    "DCGM_FI_DEV_FB_FREE": "dcgm-exporter",
}
# The series prometheus_client adds to both servers' /metrics, which the resource panels use.
PROCESS_SERIES = {"process_cpu_seconds_total", "process_resident_memory_bytes"}
# Pod names KServe gives our components (Knative: <isvc>-<component>-<revision>-deployment-...,
# Standard: <isvc>-<component>-..., a Standard-mode canary <isvc>-<canary>-predictor-...), and
# another service's, which the cluster-side selectors must leave out.
OUR_PODS = {
    "predictor": (
        "image-classifier-predictor-00001-deployment-5d8f7c9b6-x2x9z",
        "image-classifier-predictor-7c9d8b5f4-abcde",
        "image-classifier-v2-predictor-6b8c9d7e5-fghij",
    ),
    "transformer": (
        "image-classifier-transformer-00001-deployment-68b6b695f6-4qhdj",
        "image-classifier-transformer-7d9f8c6b5-klmno",
    ),
}
OTHER_PODS = ("mnist-predictor-00001-deployment-7786656484-7zrcr", "image-classifier-batch-x7k2p")
# Grafana's variables, replaced by values PromQL accepts before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": "default"}

needs_kubectl = pytest.mark.usefixtures("kubectl")  # skips without kubectl, fails under CI


def render(path: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def monitoring() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in render("monitoring")}


def rule_expressions(rule: dict[str, Any]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}


def dashboard(config_map: dict[str, Any]) -> dict[str, Any]:
    [text] = config_map["data"].values()
    return json.loads(text)


def dashboard_expressions(board: dict[str, Any]) -> dict[str, str]:
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in board["panels"]
        for target in panel["targets"]
    }


def selectors(expr: str) -> list[Any]:
    """The vector selectors of an expression; raises ValueError if it does not parse."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects; raises ValueError if it does not parse."""
    return {selector.name for selector in selectors(expr)}


def pod_pattern(selector: Any) -> re.Pattern[str]:
    """The selector's `pod=~` regex, anchored as Prometheus anchors it; raises AssertionError
    unless it has exactly one."""
    patterns = [
        m.value
        for m in selector.matchers.matchers
        if m.name == "pod" and m.op == promql_parser.MatchOp.Re
    ]
    assert len(patterns) == 1, f"{selector.name}: expected one pod=~ matcher, got {patterns}"
    return re.compile(f"^(?:{patterns[0]})$")


def all_expressions(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every alert and panel query of the rendered monitoring, by where it is."""
    return {
        **{f"alert {k}": v for k, v in rule_expressions(docs["PrometheusRule"]).items()},
        **{f"panel {k}": v for k, v in dashboard_expressions(dashboard(docs["ConfigMap"])).items()},
    }


def exported(server: Server) -> set[str]:
    """Every sample name on the server's /metrics (with _total, _bucket, ... suffixes)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


@needs_kubectl
def test_monitoring_renders_a_rule_with_the_alerts_and_a_dashboard() -> None:
    docs = monitoring()
    assert set(docs) == {"PrometheusRule", "ConfigMap"}
    alerts = rule_expressions(docs["PrometheusRule"])
    assert set(alerts) == {
        "ImageClassifierHighErrorRatio",
        "ImageClassifierHighP99Latency",
        "ImageClassifierPredictorUnavailable",
        "ImageClassifierQueueSaturated",
        "ImageClassifierInputDrift",
        "ImageClassifierLowAccuracy",
        "ImageClassifierPredictionLogDropping",
        "ImageClassifierContainerMemoryNearLimit",
    }
    for group in docs["PrometheusRule"]["spec"]["groups"]:
        for rule in group["rules"]:
            assert rule["for"] and rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
    config_map = docs["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard(config_map)
    titles = " ".join(p["title"].lower() for p in board["panels"])
    topics = ("traffic", "errors", "latency per stage", "batch size", "queue", "drift")
    resources = ("process cpu", "resident memory", "container cpu", "container memory", "gpu")
    for topic in (*topics, "accuracy per version", "label volume", "label delay", *resources):
        assert topic in titles, topic


@pytest.fixture(scope="module")
def logging_transformer(
    predictor: Server, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A transformer with the prediction log on (SQLite): its series exist from the start."""
    logs = tmp_path_factory.mktemp("logging-transformer")
    server = start_transformer(
        predictor,
        model_repository,
        logs / "transformer.log",
        "--prediction_log_db",
        f"sqlite:///{logs / 'log.db'}",
    )
    yield server
    server.stop()


@needs_kubectl
def test_every_expression_parses_and_uses_only_exported_metrics(
    drift_transformer: Server, logging_transformer: Server, predictor: Server
) -> None:
    image = base64.b64encode((DATA / "coffee.jpg").read_bytes()).decode()
    for payload in (image, "not base64!"):  # a good and a bad request: every label set exists
        httpx.post(
            f"{drift_transformer.url}/v1/models/{MODEL_NAME}:predict",
            json={"instances": [{"image": {"b64": payload}}]},
            timeout=60,
        )
    ours = exported(drift_transformer) | exported(logging_transformer) | exported(predictor)
    # The resource panels' process_* series: on both servers' /metrics, not assumed.
    for server in (drift_transformer, predictor):
        assert PROCESS_SERIES <= exported(server), server.url
    assert not ours & set(CLUSTER_SERIES)  # the allow-list holds only what we cannot scrape
    available = ours | PROMETHEUS_OWN | set(CLUSTER_SERIES)
    used: set[str] = set()
    for where, expr in all_expressions(monitoring()).items():
        names = metric_names(expr)
        assert names, f"{where}: selects no metric"
        missing = names - available
        assert not missing, f"{where}: {sorted(missing)} not exported by the servers"
        used |= names
    # The drift gauges are among them, so the check above saw a drift-enabled transformer.
    assert {"transformer_drift_score", "transformer_drift_threshold"} <= used
    assert "transformer_labelled_predictions_total" in used  # and the log's, with the log on
    assert PROCESS_SERIES <= used
    assert used >= set(CLUSTER_SERIES), "CLUSTER_SERIES lists a series nothing uses"


@needs_kubectl
def test_cluster_series_select_our_pods_by_kserves_pod_names() -> None:
    """cAdvisor, kube-state-metrics and dcgm-exporter know pods, not InferenceServices: each of
    their selectors names our pods (both components, or the predictor for the GPU) in every
    deployment mode, and no other service's."""
    checked = 0
    for where, expr in all_expressions(monitoring()).items():
        for selector in selectors(expr):
            if selector.name not in CLUSTER_SERIES:
                continue
            pattern = pod_pattern(selector)
            components = ("predictor",) if selector.name.startswith("DCGM_") else tuple(OUR_PODS)
            for component in components:
                for pod in OUR_PODS[component]:
                    assert pattern.match(pod), f"{where}: {selector.name} misses {pod}"
            for pod in OTHER_PODS:
                assert not pattern.match(pod), f"{where}: {selector.name} selects {pod}"
            if selector.name == "kube_pod_container_resource_limits":
                resources = [m.value for m in selector.matchers.matchers if m.name == "resource"]
                assert resources in (["cpu"], ["memory"]), f"{where}: limits of {resources}"
            checked += 1
    assert checked >= len(CLUSTER_SERIES)


def test_readme_lists_every_exported_metric(drift_transformer: Server, predictor: Server) -> None:
    readme = (MANIFESTS.parent / "README.md").read_text()
    ours = re.compile(r"^(transformer|predictor)_")
    families = set()
    for server in (drift_transformer, predictor):
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        families |= {f.name for f in text_string_to_metric_families(text) if ours.match(f.name)}
    # prometheus_client's text format adds a <name>_created gauge per counter and histogram.
    families = {name for name in families if not name.endswith("_created")}
    assert families
    missing = sorted(name for name in families if f"`{name}" not in readme)
    assert not missing, f"README.md's metrics table lacks {missing}"


@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_enables_scraping_the_kserve_way(overlay: str) -> None:
    [isvc] = [d for d in render(f"overlays/{overlay}") if d["kind"] == "InferenceService"]
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == "8080"
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


@needs_kubectl
def test_payload_logging_overlay_logs_the_transformer_only() -> None:
    [isvc] = [d for d in render("overlays/payload-logging") if d["kind"] == "InferenceService"]
    logger = isvc["spec"]["transformer"]["logger"]
    assert logger["mode"] in {"all", "request", "response"} and logger["url"].startswith("http")
    assert "logger" not in isvc["spec"]["predictor"]
