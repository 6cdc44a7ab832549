"""A fake Kubernetes API server for serving.kserve.io/v1beta1, faked at the HTTP wire.

The real `kubernetes` client talks to it over loopback HTTP. It stores InferenceServices and
ServingRuntimes, applies merge / apply patches the way the API server does for custom resources
(generation bumps on spec changes, resourceVersion preconditions, dryRun), and simulates the KServe
controller: after `settle_polls` reads of a changed InferenceService it reports the new generation
as observed, with revisions and a traffic split (Serverless) or canary statuses (Standard).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

GROUP_PATH = "/apis/serving.kserve.io/"
# (version, plural) -> kind, as KServe's CRDs serve them.
RESOURCES = {
    ("v1beta1", "inferenceservices"): "InferenceService",
    ("v1alpha1", "servingruntimes"): "ServingRuntime",
}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class _Revision:
    name: str
    template: Obj
    ready: bool


@dataclass
class _Component:
    revisions: list[_Revision] = field(default_factory=list)
    traffic: list[Obj] = field(default_factory=list)
    rolledout: str = ""
    previous: str = ""


@dataclass
class _Sim:
    """The controller's memory of one InferenceService."""

    polls: int = 0
    components: dict[str, _Component] = field(default_factory=dict)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: apply `patch` to `target` and return the result (inputs are not modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def default_is_broken(component_spec: Obj) -> bool:
    """A revision fails to start when anything in its spec mentions "broken"."""
    return "broken" in json.dumps(component_spec)


class FakeKube:
    """The server, its stored objects, the requests it received, and the controller's knobs.

    crd_installed: False makes serving.kserve.io unknown (404 on discovery and resource paths).
    settle_polls: reads of a changed InferenceService before the controller reconciles it.
    frozen: the controller never reconciles (a rollout that never finishes).
    is_broken: decides whether a revision / canary built from a component spec fails.
    before_patch: called with (plural, namespace, name) before a PATCH is applied.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.requests: list[Recorded] = []  # tests may clear it to look at what came next
        self.every_request: list[Recorded] = []  # never cleared: what RBAC must allow
        self.crd_installed = True
        self.settle_polls = 2
        self.frozen = False
        self.is_broken: Callable[[Obj], bool] = default_is_broken
        self.before_patch: Callable[[str, str, str], None] | None = None
        self._sims: dict[tuple[str, str], _Sim] = {}
        self._version = 0
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose only context points at this server over plain HTTP."""
        path.write_text(kubeconfig_text(self.url))
        return path

    # -- test helpers --------------------------------------------------------------------------

    def seed(self, obj: Obj) -> Obj:
        """Store `obj` as if created earlier and already reconciled by the controller."""
        with self._lock:
            stored = self._create("inferenceservices", obj["metadata"]["namespace"], obj)
            self._reconcile(stored)
            return copy.deepcopy(stored)

    def isvc(self, name: str = "image-classifier", namespace: str = "default") -> Obj:
        with self._lock:
            return copy.deepcopy(self.objects[("inferenceservices", namespace, name)])

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]

    # -- API semantics -------------------------------------------------------------------------

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _create(self, plural: str, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["generation"] = 1
        meta["uid"] = f"uid-{meta['name']}"
        meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
        meta["resourceVersion"] = self._next_version()
        if plural == "inferenceservices":
            obj["status"] = {}
        if not dry_run:
            self.objects[(plural, namespace, meta["name"])] = obj
            self._sims.pop((namespace, meta["name"]), None)
        return obj

    def _update(self, plural: str, current: Obj, new: Obj, dry_run: bool) -> Obj:
        new["metadata"]["generation"] = current["metadata"]["generation"] + (
            new.get("spec") != current.get("spec")
        )
        new["metadata"]["resourceVersion"] = self._next_version()
        new["status"] = current.get("status", {})
        if not dry_run:
            meta = new["metadata"]
            self.objects[(plural, meta["namespace"], meta["name"])] = new
        return new

    def _observe(self, obj: Obj) -> None:
        """One controller read: after `settle_polls` reads of a changed object, reconcile it."""
        status = obj.setdefault("status", {})
        if self.frozen or status.get("observedGeneration") == obj["metadata"]["generation"]:
            return
        sim = self._sims.setdefault((obj["metadata"]["namespace"], obj["metadata"]["name"]), _Sim())
        sim.polls += 1
        if sim.polls < self.settle_polls:
            status["conditions"] = [
                c for c in status.get("conditions", []) if c["type"] != "Ready"
            ] + [{"type": "Ready", "status": "Unknown", "reason": "RevisionMissing"}]
            return
        sim.polls = 0
        self._reconcile(obj)

    def _reconcile(self, obj: Obj) -> None:
        annotations = obj["metadata"].get("annotations") or {}
        if annotations.get(MODE_ANNOTATION) in ("RawDeployment", "Standard"):
            self._reconcile_standard(obj)
        else:
            self._reconcile_knative(obj)
        obj["status"]["observedGeneration"] = obj["metadata"]["generation"]
        obj["metadata"]["resourceVersion"] = self._next_version()

    def _reconcile_knative(self, obj: Obj) -> None:
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        sim = self._sims.setdefault((ns, name), _Sim())
        components: Obj = {}
        conditions = []
        failures = []
        for comp in ("predictor", "transformer"):
            spec = obj["spec"].get(comp)
            if not spec:
                continue
            st = sim.components.setdefault(comp, _Component())
            template = {k: v for k, v in spec.items() if k != "canaryTrafficPercent"}
            if not st.revisions or st.revisions[-1].template != template:
                rev = f"{name}-{comp}-{len(st.revisions) + 1:05d}"
                st.revisions.append(_Revision(rev, template, ready=not self.is_broken(template)))
            latest = st.revisions[-1]
            percent = spec.get("canaryTrafficPercent")
            if latest.ready:
                if percent is not None and st.rolledout and st.rolledout != latest.name:
                    st.traffic = [
                        _target(latest.name, percent, latest=True, tag="latest"),
                        _target(st.rolledout, 100 - percent, latest=False, tag="prev"),
                    ]
                else:
                    st.traffic = [_target(latest.name, 100, latest=True, tag="latest")]
                if st.traffic[0]["percent"] == 100 and st.rolledout != latest.name:
                    st.previous, st.rolledout = st.rolledout, latest.name
                conditions.append(_condition(f"{comp.capitalize()}Ready", "True"))
            else:
                message = f"Revision {latest.name} failed: container exited with code 1"
                conditions.append(
                    _condition(f"{comp.capitalize()}Ready", "False", "RevisionFailed", message)
                )
                failures.append(message)
            ready_revs = [r.name for r in st.revisions if r.ready]
            components[comp] = {
                "latestCreatedRevision": latest.name,
                "latestReadyRevision": ready_revs[-1] if ready_revs else "",
                "latestRolledoutRevision": st.rolledout,
                "previousRolledoutRevision": st.previous,
                "traffic": copy.deepcopy(st.traffic),
                "url": f"http://{name}-{comp}.{ns}.example.com",
            }
        conditions.append(_condition("IngressReady", "True"))
        if failures:
            conditions.append(_condition("Ready", "False", "RevisionFailed", failures[0]))
        else:
            conditions.append(_condition("Ready", "True"))
        obj["status"].update(
            {
                "url": f"http://{name}.{ns}.example.com",
                "components": components,
                "conditions": conditions,
                "deploymentMode": "Serverless",
            }
        )

    def _reconcile_standard(self, obj: Obj) -> None:
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        statuses = []
        for entry in obj["spec"].get("canary") or []:
            predictor = entry["predictor"]
            status: Obj = {
                "name": predictor["name"],
                "ready": not self.is_broken(predictor),
                "trafficPercent": entry["trafficPercent"],
            }
            if not status["ready"]:
                status["modelStatus"] = {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no model found"},
                }
            statuses.append(status)
        obj["status"].update(
            {
                "url": f"http://{name}.{ns}.example.com",
                "components": {"predictor": {"url": f"http://{name}-predictor.{ns}"}},
                "canaryStatuses": statuses,
                "conditions": [
                    _condition("PredictorReady", "True"),
                    _condition("Ready", "True"),
                ],
                "deploymentMode": "Standard",
            }
        )

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, content_type: str, raw_body: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        body: Any = json.loads(raw_body) if raw_body else {}
        with self._lock:
            recorded = Recorded(method, parts.path, query, content_type, body)
            self.requests.append(recorded)
            self.every_request.append(recorded)
            if not parts.path.startswith(GROUP_PATH) or not self.crd_installed:
                return 404, "404 page not found"
            version, *rest = [p for p in parts.path[len(GROUP_PATH) :].split("/") if p] or [""]
            if not rest:
                listed = _resource_list(version)
                return (200, listed) if listed["resources"] else (404, "404 page not found")
            if (
                len(rest) not in (3, 4)
                or rest[0] != "namespaces"
                or (version, rest[2]) not in RESOURCES
            ):
                return 404, "404 page not found"
            namespace, plural = rest[1], rest[2]
            name = rest[3] if len(rest) == 4 else None
            dry_run = query.get("dryRun") == ["All"]
            if name is None:
                if method != "POST":
                    return 405, _status(405, "MethodNotAllowed", f"{method} on a collection")
                key = (plural, namespace, body["metadata"]["name"])
                if key in self.objects:
                    return 409, _status(409, "AlreadyExists", f"{plural} {key[2]} already exists")
                return 201, self._create(plural, namespace, body, dry_run)
            current = self.objects.get((plural, namespace, name))
            if method == "GET":
                if current is None:
                    return 404, _not_found(plural, name)
                if plural == "inferenceservices":
                    self._observe(current)
                return 200, copy.deepcopy(current)
            if method == "PATCH":
                return self._patch(plural, namespace, name, current, content_type, query, body)
            if method == "PUT":
                if current is None:
                    return 404, _not_found(plural, name)
                conflict = _precondition(current, body)
                return conflict or (200, self._update(plural, current, body, dry_run))
            return 405, _status(405, "MethodNotAllowed", method)

    def _patch(
        self,
        plural: str,
        namespace: str,
        name: str,
        current: Obj | None,
        content_type: str,
        query: dict[str, list[str]],
        body: Obj,
    ) -> tuple[int, Any]:
        dry_run = query.get("dryRun") == ["All"]
        if self.before_patch is not None:
            self.before_patch(plural, namespace, name)
            current = self.objects.get((plural, namespace, name))
        if content_type.startswith("application/apply-patch"):
            if not query.get("fieldManager"):
                return 400, _status(400, "BadRequest", "fieldManager is required for apply")
            if current is None:
                return 201, self._create(plural, namespace, body, dry_run)
            # Server-side apply, approximated: the applied configuration wins field by field.
            return 200, self._update(plural, current, merge_patch(current, body), dry_run)
        if not content_type.startswith(
            ("application/merge-patch+json", "application/strategic-merge-patch+json")
        ):
            return 415, _status(415, "UnsupportedMediaType", f"content type {content_type}")
        if current is None:
            return 404, _not_found(plural, name)
        conflict = _precondition(current, body)
        if conflict:
            return conflict
        return 200, self._update(plural, current, merge_patch(current, body), dry_run)


def kubeconfig_text(server: str) -> str:
    return f"""\
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {server}
users:
- name: fake
  user:
    token: fake-token
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
"""


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            code, payload = fake.handle(
                self.command, self.path, self.headers.get("Content-Type", ""), raw
            )
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = text.encode()
            self.send_response(code)
            ctype = "text/plain" if isinstance(payload, str) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    return Handler


def _resource_list(version: str) -> Obj:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"serving.kserve.io/{version}",
        "resources": [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for (v, plural), kind in RESOURCES.items()
            if v == version
        ],
    }


def _precondition(current: Obj, body: Obj) -> tuple[int, Obj] | None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
        message = (
            "Operation cannot be fulfilled: the object has been modified;"
            " please apply your changes to the latest version and try again"
        )
        return 409, _status(409, "Conflict", message)
    return None


def _target(revision: str, percent: int, latest: bool, tag: str) -> Obj:
    return {"revisionName": revision, "percent": percent, "latestRevision": latest, "tag": tag}


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> Obj:
    cond = {"type": type_, "status": status}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _not_found(plural: str, name: str) -> Obj:
    return _status(404, "NotFound", f'{plural}.serving.kserve.io "{name}" not found')


def rbac_request(request: Recorded) -> tuple[str, str, str] | None:
    """The (verb, API group, resource) an API server's RBAC checks for a recorded request, or
    None for discovery and other non-resource paths (which the default `system:discovery`
    ClusterRole already allows every authenticated client)."""
    if not request.path.startswith(GROUP_PATH):
        return None
    parts = [p for p in request.path[len(GROUP_PATH) :].split("/") if p]
    if len(parts) not in (4, 5) or parts[1] != "namespaces":
        return None
    resource, named = parts[3], len(parts) == 5
    if request.method == "GET":
        verb = "get" if named else ("watch" if request.query.get("watch") else "list")
    else:
        verbs = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
        verb = verbs.get(request.method, request.method.lower())
        if request.method == "DELETE" and not named:
            verb = "deletecollection"
    return verb, GROUP_PATH.strip("/").split("/")[1], resource
