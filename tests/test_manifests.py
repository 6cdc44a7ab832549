"""Render every kustomize overlay under manifests/ and check what the deployment relies on.

Each overlay is rendered with `kubectl kustomize`, validated strictly against the types
installed here (every field declared by the kserve SDK's models, or by Kubernetes' schemas for
core kinds, with a value of its type: tests/kube_schema.py), loaded into the kserve SDK's
V1beta1InferenceService, and checked for the invariants that matter: GPU placement, the
transformer-to-predictor gRPC wiring, probes and hardening on every container, pinned images,
one model repository for both components, and the canary split. No YAML snapshots.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
import kube_schema
import kubernetes.client
import kubernetes_validate
import pytest
import yaml
from conftest import Stack

from common import budget, lifecycle, memory, telemetry
from common.cli import DEFAULT_MAX_REQUEST_BYTES
from harness.repositories import engine_repository

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "manifests"
OVERLAYS_DIR = MANIFESTS / "overlays"
EXAMPLES_DIR = MANIFESTS / "examples"
# Every example under manifests/examples, each checked by a test of its own (here, or
# tests/test_eventing_manifests.py for kafka-eventing) and rendered by
# test_every_example_renders_with_valid_core_kinds.
EXAMPLES = ("gateway-auth", "kafka-eventing", "prediction-log", "tracing")
# Core API groups, whose kinds kubernetes-validate checks strictly (the rest are CRDs: Istio,
# Knative, KServe, each checked by its example's own test).
CORE_API_VERSIONS = (
    "v1",
    "apps/v1",
    "batch/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
)
# The ConfigMap both servers take their OTEL_* variables from (manifests/base, optional).
TRACING_CONFIG_MAP = "image-classifier-tracing"
KUBECTL = shutil.which("kubectl")

GPU = "nvidia.com/gpu"
BASE_URI = "gs://YOUR-BUCKET/models/image-classifier/v1"
CANARY_URI = "gs://YOUR-BUCKET/models/image-classifier/v2"
# The ONNX repository (python -m modelbuild onnx) the CPU overlay serves by default.
CPU_URI = "gs://YOUR-BUCKET/models/image-classifier/v1-openvino-int8"  # the default CPU engine
ONNX_URI = "gs://YOUR-BUCKET/models/image-classifier/v1-onnx"  # what Triton serves
CANARY_PERCENT = 10
IMAGE_PATTERNS = {
    "predictor": re.compile(r"ghcr\.io/example/image-classifier-predictor:\d+\.\d+\.\d+"),
    "predictor-cpu": re.compile(r"ghcr\.io/example/image-classifier-predictor-cpu:\d+\.\d+\.\d+"),
    "transformer": re.compile(r"ghcr\.io/example/image-classifier-transformer:\d+\.\d+\.\d+"),
    "triton": re.compile(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3"),
}
# Fields KServe rejects on a spec.canary predictor: canaries run fixed replicas.
CANARY_FORBIDDEN = ("maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget", "autoScaling")


@dataclass(frozen=True)
class Expect:
    """What one overlay must render to."""

    mode: str | None  # serving.kserve.io/deploymentMode, None = the cluster default
    gpu: bool
    canary: bool = False
    triton: bool = False
    storage: str = BASE_URI  # the repository both components read


OVERLAYS: dict[str, Expect] = {
    "gpu": Expect(mode=None, gpu=True),
    "cpu": Expect(mode=None, gpu=False, storage=CPU_URI),
    "knative": Expect(mode="Knative", gpu=True),
    "knative-scale-to-zero": Expect(mode="Knative", gpu=True),
    "standard": Expect(mode="Standard", gpu=True),
    "canary/knative": Expect(mode="Knative", gpu=True, canary=True),
    "canary/standard": Expect(mode="Standard", gpu=True, canary=True),
    "triton": Expect(mode=None, gpu=True, triton=True, storage=ONNX_URI),
    "payload-logging": Expect(mode=None, gpu=False, storage=CPU_URI),
}

needs_kubectl = pytest.mark.usefixtures("kubectl")  # skips without kubectl, fails under CI
each_overlay = pytest.mark.parametrize("overlay", sorted(OVERLAYS))


# ---------------------------------------------------------------------------- rendering


@functools.cache
def render_text(path: str) -> str:
    """Return `kubectl kustomize manifests/<path>`; raises AssertionError with kustomize's error."""
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize manifests/{path} failed:\n{proc.stderr}"
    return proc.stdout


def render(path: str) -> list[dict[str, Any]]:
    """Return the rendered documents of manifests/<path> (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Return the single document of `kind`; raises AssertionError on zero or several."""
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def isvc_of(overlay: str) -> dict[str, Any]:
    return one(render(f"overlays/{overlay}"), "InferenceService")


def predictor_pods(isvc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (label, predictor spec) for the stable predictor and every spec.canary predictor."""
    yield "predictor", isvc["spec"]["predictor"]
    for i, canary in enumerate(isvc["spec"].get("canary", [])):
        yield f"canary[{i}].predictor", canary["predictor"]


def predictor_containers(predictor: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the serving containers of a predictor: custom containers or the model container."""
    if "model" in predictor:
        return [predictor["model"]]
    return list(predictor["containers"])


def isvc_containers(isvc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (label, container) for every container the InferenceService declares."""
    for label, predictor in predictor_pods(isvc):
        for container in predictor_containers(predictor):
            yield label, container
    for container in isvc["spec"]["transformer"]["containers"]:
        yield "transformer", container


def env_value(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def flag_value(args: list[str], flag: str) -> str | None:
    """Return the value following `flag` in an argv list (or after `flag=`), None if absent."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def storage_uri(predictor: dict[str, Any]) -> str | None:
    if "model" in predictor:
        return predictor["model"].get("storageUri")
    return env_value(predictor["containers"][0], "STORAGE_URI")


# ---------------------------------------------------------------------------- kserve SDK


class _SdkClient(kserve.ApiClient):
    """kserve's ApiClient, able to build the Kubernetes types the kserve models embed.

    kserve's generated deserializer looks every type name up in `kserve.models` only; the
    V1Container, V1Toleration, ... inside a predictor live in `kubernetes.client.models`, which
    builds them itself (`from_dict`).
    """

    _K8S_ALIAS = re.compile(r"K8sIoApi[A-Z][a-z]+(V\d+(?:(?:alpha|beta)\d+)?)(\w+)")
    _RAW = frozenset({"V1beta1MetricQuantity", "ResourceQuantity"})

    def _ApiClient__deserialize(self, data: Any, klass: Any) -> Any:
        if isinstance(klass, str) and not hasattr(kserve.models, klass):
            if klass in self._RAW:
                return data
            alias = self._K8S_ALIAS.fullmatch(klass)
            name = "".join(alias.groups()) if alias else klass
            k8s_model = getattr(kubernetes.client.models, name, None)
            if k8s_model is not None:
                return None if data is None else k8s_model.from_dict(data)
        return super()._ApiClient__deserialize(data, klass)


class _Response:
    """The one attribute ApiClient.deserialize reads from an HTTP response."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body)


def assert_contained(original: Any, round_trip: Any, path: str = "") -> None:
    """Assert every field and value of `original` is in `round_trip`; raises AssertionError."""
    if isinstance(original, dict):
        assert isinstance(round_trip, dict), path
        for key, value in original.items():
            assert key in round_trip, f"{path}.{key} lost"
            assert_contained(value, round_trip[key], f"{path}.{key}")
    elif isinstance(original, list):
        assert isinstance(round_trip, list) and len(round_trip) == len(original), path
        for i, (a, b) in enumerate(zip(original, round_trip, strict=True)):
            assert_contained(a, b, f"{path}[{i}]")
    else:
        assert original == round_trip, f"{path}: {original!r} became {round_trip!r}"


def load_into_sdk(isvc: dict[str, Any]) -> Any:
    """Return `isvc` as a kserve.models.V1beta1InferenceService; raises on a malformed field."""
    return _SdkClient().deserialize(_Response(isvc), "V1beta1InferenceService")


# ---------------------------------------------------------------------------- tests


def test_every_overlay_on_disk_is_checked() -> None:
    on_disk = {
        str(path.parent.relative_to(OVERLAYS_DIR))
        for path in OVERLAYS_DIR.rglob("kustomization.yaml")
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization"
    }
    assert on_disk == set(OVERLAYS), "add new overlays to OVERLAYS with what they must render to"


# Kinds the kserve SDK declares (checked along its models by tests/kube_schema.py); every other
# kind is a core one, checked by kubernetes-validate against Kubernetes' own schemas.
KSERVE_KINDS = {
    "InferenceService": "V1beta1InferenceService",
    "ServingRuntime": "V1alpha1ServingRuntime",
}
# Core kinds are checked against the oldest Kubernetes KServe 0.21 supports (per its docs: no
# field newer than the cluster) and the newest kubernetes-validate knows (no removed field).
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def validate_core(doc: dict[str, Any]) -> None:
    """Strict schema validation of one core-kind document at every version above; raises
    kubernetes_validate's ValidationError."""
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@needs_kubectl
@each_overlay
def test_overlay_has_only_declared_fields_of_the_right_types(overlay: str) -> None:
    """Strict validation without the CRD files: every field of every rendered document is one
    the installed kserve SDK (or Kubernetes' schemas, for core kinds) declares, with a value
    of its type."""
    for doc in render(f"overlays/{overlay}"):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in KSERVE_KINDS:
            assert doc["apiVersion"].startswith("serving.kserve.io/"), name
            found = kube_schema.problems(doc, KSERVE_KINDS[doc["kind"]], name)
            assert not found, "\n".join(found)
        else:
            validate_core(doc)


@needs_kubectl
def test_the_strict_check_catches_a_misspelt_field_deep_in_a_container() -> None:
    """The check the overlays pass is not vacuous: a misspelt key inside a container's probe,
    a number where a string belongs, and a field of the wrong level each fail it, by path."""
    isvc = isvc_of("cpu")
    container = isvc["spec"]["predictor"]["containers"][0]
    container["readinessProbe"]["tcpSocket"]["prot"] = container["readinessProbe"]["tcpSocket"].pop(
        "port"
    )
    container["image"] = 42
    isvc["spec"]["transformer"]["minReplica"] = 1
    found = kube_schema.problems(isvc, "V1beta1InferenceService")
    assert any(
        p.startswith(".spec.predictor.containers[0].readinessProbe.tcpSocket.prot: not a field")
        for p in found
    ), found
    assert ".spec.predictor.containers[0].image: expected str, got 42" in found
    assert any(p.startswith(".spec.transformer.minReplica: not a field") for p in found), found
    assert len(found) == 3, found


@needs_kubectl
@each_overlay
def test_inference_service_loads_into_kserve_sdk_without_losing_fields(overlay: str) -> None:
    isvc = isvc_of(overlay)
    model = load_into_sdk(isvc)
    assert isinstance(model, kserve.V1beta1InferenceService)
    assert model.metadata.name == "image-classifier"
    assert model.spec.transformer is not None
    # A field the SDK does not know is silently dropped on load: the round trip shows it.
    # (The other way round is fine: the SDK adds its defaults, such as model.name "".)
    assert_contained(isvc, _SdkClient().sanitize_for_serialization(model))


@needs_kubectl
@each_overlay
def test_gpu_only_on_the_predictor_and_only_in_gpu_overlays(overlay: str) -> None:
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    for label, predictor in predictor_pods(isvc):
        for container in predictor_containers(predictor):
            limits = container.get("resources", {}).get("limits", {})
            assert limits.get(GPU) == ("1" if expect.gpu else None), label
            if "args" in container and not expect.triton:
                assert flag_value(container["args"], "--device") == (
                    "cuda" if expect.gpu else "cpu"
                )
        tolerations = {t["key"] for t in predictor.get("tolerations", [])}
        assert (GPU in tolerations) == expect.gpu, label
        assert predictor.get("runtimeClassName") == ("nvidia" if expect.gpu else None), label
        assert ("nvidia.com/gpu.present" in predictor.get("nodeSelector", {})) == expect.gpu, label
    transformer = isvc["spec"]["transformer"]
    for container in transformer["containers"]:
        for section in ("requests", "limits"):
            names = container.get("resources", {}).get(section, {})
            assert not [n for n in names if n.startswith("nvidia.com/")], "transformer holds a GPU"
    assert "nodeSelector" not in transformer and "tolerations" not in transformer


@needs_kubectl
@each_overlay
def test_transformer_calls_the_predictor_over_grpc_v2(overlay: str) -> None:
    (container,) = isvc_of(overlay)["spec"]["transformer"]["containers"]
    assert container["name"] == "kserve-container"
    assert flag_value(container["args"], "--predictor_protocol") == "grpc-v2"
    assert flag_value(container["args"], "--model_dir") == "/mnt/models"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", 8080)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}


@needs_kubectl
@each_overlay
def test_predictor_exposes_one_h2c_port_probed_over_tcp(overlay: str) -> None:
    isvc = isvc_of(overlay)
    for label, predictor in predictor_pods(isvc):
        (container,) = predictor_containers(predictor)
        (port,) = container["ports"]  # Knative allows one port per container
        assert port["name"] == "h2c", label
        for probe in ("readinessProbe", "livenessProbe"):
            # Knative: probe port == container port; no grpc.health.v1 in KServe.
            assert container[probe]["tcpSocket"]["port"] == port["containerPort"], (label, probe)
        if not OVERLAYS[overlay].triton:
            assert container["name"] == "kserve-container"
            assert flag_value(container["args"], "--grpc_port") == str(port["containerPort"])


@needs_kubectl
@each_overlay
def test_every_container_is_probed_and_hardened(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    isvc = one(docs, "InferenceService")
    hardened: list[tuple[str, dict[str, Any]]] = list(isvc_containers(isvc))
    for label, container in hardened:
        assert "readinessProbe" in container and "livenessProbe" in container, label
    for runtime in (d for d in docs if d["kind"] == "ServingRuntime"):
        hardened += [("runtime", c) for c in runtime["spec"]["containers"]]
    for label, container in hardened:
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 1000, label
        assert sc.get("readOnlyRootFilesystem") is True, label
        assert sc.get("allowPrivilegeEscalation") is False, label
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], label
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), label
        assert {"cpu", "memory"} <= set(resources.get("limits", {})), label


@needs_kubectl
@each_overlay
def test_tmp_is_a_writable_emptydir_under_the_read_only_root(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    isvc = one(docs, "InferenceService")
    pods: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
        (label, predictor, predictor_containers(predictor))
        for label, predictor in predictor_pods(isvc)
        if "containers" in predictor
    ]
    pods.append(
        ("transformer", isvc["spec"]["transformer"], isvc["spec"]["transformer"]["containers"])
    )
    for runtime in (d for d in docs if d["kind"] == "ServingRuntime"):
        pods.append(("runtime", runtime["spec"], runtime["spec"]["containers"]))
    for label, pod, containers in pods:
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in containers:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, label


@needs_kubectl
@each_overlay
def test_images_are_pinned(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    isvc = one(docs, "InferenceService")
    images: list[str] = [c["image"] for _, c in isvc_containers(isvc) if "image" in c]
    images += [
        c["image"] for d in docs if d["kind"] == "ServingRuntime" for c in d["spec"]["containers"]
    ]
    # Overlays with the cpu component run the CPU predictor image (no torch), the others the
    # CUDA one.
    predictor = "predictor" if OVERLAYS[overlay].gpu else "predictor-cpu"
    expected = {"transformer", "triton"} if OVERLAYS[overlay].triton else {predictor, "transformer"}
    for image in images:
        assert any(IMAGE_PATTERNS[kind].fullmatch(image) for kind in expected), image
    assert {
        kind for kind in expected for image in images if IMAGE_PATTERNS[kind].fullmatch(image)
    } == expected
    # The two custom images are one release: same tag.
    tags = {image.rsplit(":", 1)[1] for image in images if image.startswith("ghcr.io/example/")}
    assert len(tags) == 1, tags


@needs_kubectl
@each_overlay
def test_transformer_reads_the_stable_predictors_model_repository(overlay: str) -> None:
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    transformer_uri = env_value(isvc["spec"]["transformer"]["containers"][0], "STORAGE_URI")
    predictor_uri = storage_uri(isvc["spec"]["predictor"])
    assert transformer_uri == expect.storage
    if expect.canary and expect.mode == "Knative":
        # The predictor spec names the new revision's model; the stable revision (and the
        # transformer, which a canary must not change) keep v1.
        assert predictor_uri == CANARY_URI
    else:
        assert predictor_uri == transformer_uri
    for label, predictor in list(predictor_pods(isvc))[1:]:
        assert storage_uri(predictor) == CANARY_URI, label


@needs_kubectl
@each_overlay
def test_canary_split_only_in_canary_overlays(overlay: str) -> None:
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    spec = isvc["spec"]
    assert "canaryTrafficPercent" not in spec["transformer"]
    if not expect.canary:
        assert "canary" not in spec and "canaryTrafficPercent" not in spec["predictor"]
    elif expect.mode == "Knative":
        assert spec["predictor"]["canaryTrafficPercent"] == CANARY_PERCENT
        assert "canary" not in spec
    else:
        # Standard mode ignores canaryTrafficPercent; it runs spec.canary entries instead.
        assert "canaryTrafficPercent" not in spec["predictor"]
        (canary,) = spec["canary"]
        assert canary["trafficPercent"] == CANARY_PERCENT
        candidate = canary["predictor"]
        assert candidate["name"] and candidate["name"] != spec["predictor"].get("name")
        assert not [f for f in CANARY_FORBIDDEN if f in candidate]
        # Same pod as the stable predictor except for the model it loads.
        stable = spec["predictor"]
        for field in ("volumes", "nodeSelector", "tolerations"):
            assert candidate.get(field) == stable.get(field), field
        (new,), (old,) = candidate["containers"], stable["containers"]
        swap = {"name": "STORAGE_URI", "value": BASE_URI}
        assert {
            **new,
            "env": [swap if e["name"] == "STORAGE_URI" else e for e in new["env"]],
        } == old


@needs_kubectl
@each_overlay
def test_mode_and_autoscaling_fit_together(overlay: str) -> None:
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    annotations = isvc["metadata"].get("annotations", {})
    assert annotations.get("serving.kserve.io/deploymentMode") == expect.mode
    components = {
        "predictor": isvc["spec"]["predictor"],
        "transformer": isvc["spec"]["transformer"],
    }
    for name, component in components.items():
        if "minReplicas" in component and "maxReplicas" in component:
            assert component["minReplicas"] <= component["maxReplicas"], name
        if expect.mode == "Knative":
            # The KPA scales on requests, and the webhook rejects deploymentStrategy here.
            assert component["scaleMetric"] in ("concurrency", "rps"), name
            assert "deploymentStrategy" not in component, name
        elif expect.mode == "Standard":
            assert annotations.get("serving.kserve.io/autoscalerClass") == "hpa"
            assert component["scaleMetric"] in ("cpu", "memory"), name
            assert 1 <= component["scaleTarget"] <= 100, name
            assert component["deploymentStrategy"]["type"] == "RollingUpdate", name
        else:
            assert "scaleMetric" not in component and "deploymentStrategy" not in component
    if expect.mode is not None:
        # The GPU predictor stays warm; overlays/knative-scale-to-zero is the one exception.
        assert components["predictor"]["minReplicas"] == (0 if "scale-to-zero" in overlay else 1)


@needs_kubectl
def test_triton_runs_the_same_transformer_against_triton_grpc() -> None:
    """The base's transformer, reading the repository Triton serves: the ONNX one."""
    docs = render("overlays/triton")
    isvc, runtime = one(docs, "InferenceService"), one(docs, "ServingRuntime")
    base = one(render("base"), "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    transformer = copy.deepcopy(isvc["spec"]["transformer"])
    env = transformer["containers"][0]["env"]
    assert env[0]["name"] == "STORAGE_URI" and env[0]["value"] == model["storageUri"]
    env[0]["value"] = base["spec"]["transformer"]["containers"][0]["env"][0]["value"]
    assert transformer == base["spec"]["transformer"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (server,) = runtime["spec"]["containers"]
    assert flag_value(server["args"], "--model-store") == "/mnt/models"
    assert flag_value(server["args"], "--grpc-port") == str(model["ports"][0]["containerPort"])


# ONNX Runtime in each Triton image the triton overlay may pin (the image's release notes),
# and the newest opset and ONNX IR version that ONNX Runtime reads (its versioning table).
TRITON_ONNXRUNTIME = {"24.12-py3": ("1.19.2", 21, 10)}


def test_the_pinned_triton_reads_the_exported_onnx_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The overlay's Triton image loads the ONNX file `make model-repo` writes: its opset and
    IR version are ones the image's ONNX Runtime reads. A new tag needs its row above."""
    import onnx

    onnx_repository = engine_repository("onnx", tmp_path_factory)
    kustomization = yaml.safe_load((MANIFESTS / "overlays/triton/kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "nvcr.io/nvidia/tritonserver"]
    assert image["newTag"] in TRITON_ONNXRUNTIME, f"{image['newTag']}: add its ONNX Runtime"
    onnxruntime, newest_opset, newest_ir = TRITON_ONNXRUNTIME[image["newTag"]]
    model = onnx.load(
        onnx_repository / "image-classifier" / "1" / "model.onnx", load_external_data=False
    )
    (opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert opset <= newest_opset, (
        f"model.onnx has opset {opset}; Triton {image['newTag']}'s ONNX Runtime {onnxruntime} "
        f"reads up to {newest_opset}"
    )
    assert model.ir_version <= newest_ir, (
        f"model.onnx has IR version {model.ir_version}; ONNX Runtime {onnxruntime} reads up to "
        f"{newest_ir}"
    )


BATCHING_FLAGS = ("--max_batch_size", "--max_batch_delay_ms", "--max_images")


@needs_kubectl
@each_overlay
def test_batching_is_left_to_the_model_config(overlay: str) -> None:
    """config.pbtxt decides batching for our servers and Triton alike; a flag in a manifest
    would quietly override it in the cluster only. Flags appear once (components append)."""
    for label, container in isvc_containers(isvc_of(overlay)):
        args = container.get("args", [])
        assert not [a for a in args if a in BATCHING_FLAGS], (label, args)
        flags = [a for a in args if a.startswith("--")]
        assert len(flags) == len(set(flags)), (label, args)


# ---------------------------------------------------------------------------- security

RBAC_DIR = "rbac/rollout"
ALLOWED_NAMESPACES = {
    # Knative's activator and autoscaler; the ingress / local gateway; Prometheus.
    "Knative": {"knative-serving", "istio-system", "monitoring"},
    "Standard": {"istio-system", "monitoring"},
}
METRICS_PORTS = {8080, 9091}


def kubernetes_documents(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The built-in Kubernetes kinds among rendered documents (KServe's own are CRDs)."""
    return [d for d in docs if not d["apiVersion"].startswith("serving.kserve.io/")]


@needs_kubectl
@pytest.mark.parametrize("path", [*(f"overlays/{o}" for o in sorted(OVERLAYS)), RBAC_DIR])
def test_kubernetes_kinds_pass_strict_schema_validation(path: str) -> None:
    for doc in kubernetes_documents(render(path)):
        validate_core(doc)


@needs_kubectl
@each_overlay
def test_serving_pods_mount_no_service_account_token(overlay: str) -> None:
    isvc = isvc_of(overlay)
    for label, pod in [*predictor_pods(isvc), ("transformer", isvc["spec"]["transformer"])]:
        assert pod.get("automountServiceAccountToken") is False, label


@needs_kubectl
@each_overlay
def test_transformer_reads_api_keys_from_a_secret(overlay: str) -> None:
    transformer = isvc_of(overlay)["spec"]["transformer"]
    (container,) = transformer["containers"]
    key_file = Path(flag_value(container["args"], "--api_key_file") or "")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount  # updates reach the file
    (volume,) = [v for v in transformer["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "image-classifier-api-keys"
    assert key_file.name in {"api-keys"}
    for label, predictor in predictor_pods(isvc_of(overlay)):
        for c in predictor_containers(predictor):
            assert "--api_key_file" not in c.get("args", []), label  # keys stay at the edge


def network_policies(overlay: str) -> dict[str, dict[str, Any]]:
    """The rendered NetworkPolicies of an overlay, by the component they select."""
    found = {}
    for doc in render(f"overlays/{overlay}"):
        if doc["kind"] == "NetworkPolicy":
            labels = doc["spec"]["podSelector"]["matchLabels"]
            assert labels["serving.kserve.io/inferenceservice"] == "image-classifier"
            found[labels["component"]] = doc["spec"]
    return found


def peers(rule: dict[str, Any]) -> list[str]:
    """Each `from` entry of an ingress rule as 'pods:<component>' or 'ns:<namespace>'."""
    named = []
    for peer in rule["from"]:
        assert set(peer) in ({"podSelector"}, {"namespaceSelector"}), peer  # no ipBlock, no AND
        if "podSelector" in peer:
            labels = peer["podSelector"]["matchLabels"]
            assert labels["serving.kserve.io/inferenceservice"] == "image-classifier"
            named.append(f"pods:{labels['component']}")
        else:
            named.append(
                f"ns:{peer['namespaceSelector']['matchLabels']['kubernetes.io/metadata.name']}"
            )
    return named


@needs_kubectl
@each_overlay
def test_network_policies_admit_only_the_serving_path(overlay: str) -> None:
    expect = OVERLAYS[overlay]
    policies = network_policies(overlay)
    if expect.mode is None:
        assert not policies  # the cluster's default mode decides the path: see README
        return
    assert set(policies) == {"predictor", "transformer"}
    for component, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["ingress"], component  # an empty list would deny all, a missing one too
        for rule in spec["ingress"]:
            assert rule.get("from") and rule.get("ports"), (component, rule)  # never open to all
            sources = peers(rule)
            ports = {p["port"] for p in rule["ports"]}
            namespaces = {s[3:] for s in sources if s.startswith("ns:")}
            assert namespaces <= ALLOWED_NAMESPACES[expect.mode], (component, namespaces)
            if "ns:monitoring" in sources:
                assert sources == ["ns:monitoring"] and ports <= METRICS_PORTS
            if component == "transformer":
                assert not [s for s in sources if s.startswith("pods:")]
            else:
                assert set(sources) - {"ns:monitoring"} <= {
                    "pods:transformer",
                    *(
                        {"ns:knative-serving", "ns:istio-system"}
                        if expect.mode == "Knative"
                        else ()
                    ),
                }
    predictor_sources = {s for r in policies["predictor"]["ingress"] for s in peers(r)}
    assert "pods:transformer" in predictor_sources
    if expect.mode == "Standard":
        (grpc_rule,) = [
            r for r in policies["predictor"]["ingress"] if "pods:transformer" in peers(r)
        ]
        assert peers(grpc_rule) == ["pods:transformer"]
        assert [p["port"] for p in grpc_rule["ports"]] == [8081]  # the h2c port, nothing else


@needs_kubectl
def test_the_gateway_authentication_example_renders_and_exempts_only_health() -> None:
    docs = render("examples/gateway-auth")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["AuthorizationPolicy"] * 2 + ["RequestAuthentication"] * 2
    for doc in docs:
        if doc["kind"] == "RequestAuthentication":
            assert all(r["issuer"] and r["jwksUri"] for r in doc["spec"]["jwtRules"])
            continue
        (rule,) = doc["spec"]["rules"]
        assert doc["spec"]["action"] == "DENY"
        assert rule["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
        (operation,) = [t["operation"] for t in rule["to"]]
        assert sorted(operation["notPaths"]) == [
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/*/ready",
        ]


def last_flag(args: list[str], flag: str, default: float) -> float:
    """The value argparse would keep for `flag` (its last occurrence), or `default`."""
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]
    return float(values[-1]) if values else default


@each_overlay
def test_shutdown_fits_inside_the_grace_period(overlay: str) -> None:
    """SIGTERM: the drain, then the longest request, then exit, inside the pod's grace period
    (Knative sets it from the component's timeout and rejects the field itself)."""
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    for name in ("predictor", "transformer"):
        if name == "predictor" and expect.triton:
            continue  # Triton's own shutdown
        component = isvc["spec"][name]
        args = component["containers"][0].get("args", [])
        drain = last_flag(args, "--drain_seconds", lifecycle.DEFAULT_DRAIN_SECONDS)
        timeout = last_flag(args, "--request_timeout_seconds", lifecycle.DEFAULT_REQUEST_TIMEOUT_S)
        needed = drain + timeout + lifecycle.STOP_MARGIN_S
        if expect.mode == "Knative":
            assert "terminationGracePeriodSeconds" not in component, name
            grace = component["timeout"]
        elif expect.mode == "Standard":
            grace = component["terminationGracePeriodSeconds"]
        else:  # the cluster's default mode: Kubernetes' 30 s, or Knative's 300 s timeout
            grace = component.get("terminationGracePeriodSeconds", 30)
        assert needed + 5 <= grace, f"{name}: shutdown takes up to {needed:g} s, grace {grace}"


# Host memory the CUDA context takes beyond the CPU process, which no test here can measure:
# 2-3 GiB resident with cuBLAS and cuDNN loaded (published figures), the upper end taken.
CUDA_CONTEXT_BYTES = 3 * 1024**3
MEMORY_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes ('512Mi', '4Gi')."""
    for suffix, unit in MEMORY_UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * unit)
    return int(quantity)


@each_overlay
def test_memory_limits_hold_the_request_memory_budget_over_the_measured_baseline(
    overlay: str, stacks: Stack
) -> None:
    """Every container of ours has a memory limit that holds what the server itself takes
    (measured now: the running servers of this session, TorchScript, ONNX or OpenVINO INT8 as
    the overlay's repository says, plus the CUDA context on a GPU) and its request memory budget on
    top (the one its flags set, or the default it derives from that limit), and the budget
    holds the two largest gRPC messages the server must be able to read (one inference, one
    control call)."""
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    engine = {CPU_URI: "openvino-int8", ONNX_URI: "onnx"}.get(expect.storage, "torchscript")
    predictor, transformer = stacks(engine)
    measured = {
        name: memory.status_bytes("VmRSS", server.process.pid) or 0
        for name, server in (("predictor", predictor), ("transformer", transformer))
    }
    assert all(measured.values()), measured
    for name in ("predictor", "transformer"):
        if name == "predictor" and expect.triton:
            continue  # Triton's own memory
        container = isvc["spec"][name]["containers"][0]
        args = container.get("args", [])
        limit = memory_bytes(container["resources"]["limits"]["memory"])
        baseline = measured[name]
        if name == "predictor" and expect.gpu:
            baseline += CUDA_CONTEXT_BYTES
        largest = int(last_flag(args, "--max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))
        largest_charge = largest * budget.GRPC_COPIES
        default = budget.default_budget(limit, baseline, largest_charge)
        request_budget = int(last_flag(args, "--request_memory_budget_bytes", default))
        mib = 1024**2
        budget.ProcessMemory.split(request_budget, largest_charge)  # raises if it cannot start
        assert baseline + request_budget <= limit, (
            f"{name}: {baseline // mib} MiB measured + {request_budget // mib} MiB of request "
            f"budget > the {limit // mib} MiB limit"
        )


@needs_kubectl
@each_overlay
def test_every_transformer_reads_the_prediction_log_url_from_the_optional_secret(
    overlay: str,
) -> None:
    """Off unless configured: the URL comes from a Secret that may be absent, never from args,
    and the example Secret has the name and key the transformer reads."""
    transformer = isvc_of(overlay)["spec"]["transformer"]["containers"][0]
    assert not any("prediction_log" in arg for arg in transformer.get("args", []))
    [source] = [
        e["valueFrom"]["secretKeyRef"]
        for e in transformer.get("env", [])
        if e["name"] == "PREDICTION_LOG_DB_URL"
    ]
    assert source["optional"] is True
    [secret] = render("examples/prediction-log")
    assert secret["kind"] == "Secret"
    assert (secret["metadata"]["name"], list(secret["stringData"])) == (
        source["name"],
        [source["key"]],
    )


@needs_kubectl
@each_overlay
def test_every_server_reads_tracing_settings_from_the_optional_config_map(overlay: str) -> None:
    """Tracing costs nothing unless asked for: both servers' containers (a canary's too) take
    their OTEL_* variables from a ConfigMap that may be absent, and from nowhere else."""
    expect, isvc = OVERLAYS[overlay], isvc_of(overlay)
    reference = {"configMapRef": {"name": TRACING_CONFIG_MAP, "optional": True}}
    checked = []
    for label, container in isvc_containers(isvc):
        if expect.triton and label != "transformer":
            continue  # Triton reads no OTEL_* variables (its tracing is --trace-config)
        assert container.get("envFrom") == [reference], label
        assert not [e for e in container.get("env", []) if e["name"].startswith("OTEL_")], label
        checked.append(label)
    assert "transformer" in checked and ("predictor" in checked or expect.triton)


@needs_kubectl
def test_the_tracing_example_turns_tracing_on_and_leaves_the_names_to_the_servers() -> None:
    """The example ConfigMap has the name the containers read, and its variables, as the
    servers read them (common.telemetry), turn tracing on, sample by the caller's decision,
    and leave each server its own service name."""
    [config_map] = render("examples/tracing")
    assert (config_map["kind"], config_map["metadata"]["name"]) == ("ConfigMap", TRACING_CONFIG_MAP)
    variables = config_map["data"]
    assert all(name.startswith("OTEL_") for name in variables), sorted(variables)
    assert "OTEL_SERVICE_NAME" not in variables
    assert variables["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    for component in ("predictor", "transformer"):
        default = f"image-classifier-{component}"
        settings = telemetry.TelemetrySettings.from_env(variables, default)
        assert settings.enabled, settings.why
        assert settings.service_name == default


def test_every_example_on_disk_is_checked() -> None:
    on_disk = {path.parent.name for path in EXAMPLES_DIR.glob("*/kustomization.yaml")}
    assert on_disk == set(EXAMPLES), "add new examples to EXAMPLES, and a test of what they render"


@needs_kubectl
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_renders_with_valid_core_kinds(example: str) -> None:
    docs = render(f"examples/{example}")
    assert docs
    for doc in docs:
        if doc["apiVersion"] in CORE_API_VERSIONS:
            validate_core(doc)
