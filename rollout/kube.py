"""The cluster connection: loading config, and KServe custom-object calls with errors translated.

Every call to the API server goes through `KserveApi`, so transport failures, a missing CRD and
a missing object each become one `RolloutError` with its own exit code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from rollout.errors import ClusterUnreachable, CrdMissing, NotFound, Rejected

GROUP = "serving.kserve.io"
FIELD_MANAGER = "image-classifier-rollout"
# One request should never take long; the rollout deadline is enforced by the wait loop.
REQUEST_TIMEOUT_S = 30

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """A namespaced serving.kserve.io resource type."""

    kind: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{self.version}"


ISVC = Resource("InferenceService", "v1beta1", "inferenceservices")
SERVING_RUNTIME = Resource("ServingRuntime", "v1alpha1", "servingruntimes")
# What `apply` handles, by (apiVersion, kind).
APPLIABLE = {(r.api_version, r.kind): r for r in (ISVC, SERVING_RUNTIME)}


@dataclass(frozen=True)
class Connection:
    """A configured API client and a human description of where its configuration came from."""

    api_client: client.ApiClient
    source: str

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    """Build a client from --kubeconfig/--context, else in-cluster, else the default kubeconfig.

    Raises ClusterUnreachable naming each source tried when none loads.
    """
    cfg = client.Configuration()
    if kubeconfig is not None or context is not None:
        path = kubeconfig or os.path.expanduser(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
        if not os.path.exists(path):
            raise ClusterUnreachable(f"no kubeconfig at {path}: the file does not exist")
        try:
            config.load_kube_config(
                config_file=path, context=context, client_configuration=cfg, persist_config=False
            )
        except ConfigException as exc:
            raise ClusterUnreachable(
                f"cannot load kubeconfig {path} (context {context}): {exc}"
            ) from None
        return Connection(client.ApiClient(cfg), _describe(path, context))
    try:
        config.load_incluster_config(client_configuration=cfg)
        return Connection(client.ApiClient(cfg), "in-cluster service account")
    except ConfigException as in_cluster_exc:
        default = os.path.expanduser(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
        if not os.path.exists(default):
            raise ClusterUnreachable(
                f"no cluster configuration: not in a pod ({in_cluster_exc}) and no kubeconfig"
                f" at {default}; pass --kubeconfig or set KUBECONFIG"
            ) from None
        try:
            config.load_kube_config(
                config_file=default, client_configuration=cfg, persist_config=False
            )
        except ConfigException as exc:
            raise ClusterUnreachable(f"cannot load kubeconfig {default}: {exc}") from None
        return Connection(client.ApiClient(cfg), _describe(default, None))


def _describe(path: str, context: str | None) -> str:
    return f"kubeconfig {path}" + (f", context {context}" if context else "")


class KserveApi:
    """Namespaced serving.kserve.io objects: get, create, server-side apply, merge patch."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._api = client.CustomObjectsApi(connection.api_client)

    def get(self, res: Resource, namespace: str, name: str) -> Obj | None:
        """Return the object, or None if absent; raises CrdMissing if the type is unknown."""
        try:
            return self.get_required(res, namespace, name)
        except NotFound:
            return None

    def get_required(self, res: Resource, namespace: str, name: str) -> Obj:
        """Return the object; raises NotFound, CrdMissing, ClusterUnreachable or Rejected."""
        return self._call(
            res,
            f"{res.plural}/{name} in namespace {namespace}",
            lambda: self._api.get_namespaced_custom_object(
                GROUP, res.version, namespace, res.plural, name, _request_timeout=REQUEST_TIMEOUT_S
            ),
        )

    def create(self, res: Resource, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        """Create the object (server-side dry run when asked) and return what the server stored."""
        name = body["metadata"]["name"]
        return self._call(
            res,
            f"create {res.plural}/{name} in namespace {namespace}",
            lambda: self._api.create_namespaced_custom_object(
                GROUP,
                res.version,
                namespace,
                res.plural,
                body,
                dry_run="All" if dry_run else None,
                field_manager=FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )

    def apply(self, res: Resource, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        """Server-side apply `body` as this tool's field manager, taking over conflicting fields."""
        name = body["metadata"]["name"]
        return self._call(
            res,
            f"apply {res.plural}/{name} in namespace {namespace}",
            lambda: self._api.patch_namespaced_custom_object(
                GROUP,
                res.version,
                namespace,
                res.plural,
                name,
                body,
                dry_run="All" if dry_run else None,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )

    def merge_patch(self, res: Resource, namespace: str, name: str, patch: Obj) -> Obj:
        """Apply an RFC 7386 JSON merge patch and return the updated object."""
        return self._call(
            res,
            f"patch {res.plural}/{name} in namespace {namespace}",
            lambda: self._api.patch_namespaced_custom_object(
                GROUP,
                res.version,
                namespace,
                res.plural,
                name,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
        )

    def _call(self, res: Resource, what: str, call: Callable[[], object]) -> Obj:
        try:
            result = call()
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterUnreachable(self._unreachable(exc)) from None
        except ApiException as exc:
            if exc.status == 404:
                self._require_crd(res)
                raise NotFound(f"{what}: not found") from None
            raise Rejected(f"{what}: HTTP {exc.status} {exc.reason}: {_message(exc)}") from None
        if not isinstance(result, dict):
            raise Rejected(
                f"{what}: expected a JSON object from the API, got {type(result).__name__}"
            )
        return result

    def _require_crd(self, res: Resource) -> None:
        """Raise CrdMissing unless discovery lists the resource in its group version."""
        try:
            resources = self._api.get_api_resources(
                GROUP, res.version, _request_timeout=REQUEST_TIMEOUT_S
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ClusterUnreachable(self._unreachable(exc)) from None
        except ApiException as exc:
            if exc.status == 404:
                raise CrdMissing(_crd_missing(res, f"{res.api_version} is not served")) from None
            raise Rejected(
                f"discovery of {res.api_version}: HTTP {exc.status}: {_message(exc)}"
            ) from None
        names = [r.name for r in resources.resources]
        if res.plural not in names:
            raise CrdMissing(_crd_missing(res, f"{res.api_version} serves only {names}"))

    def _unreachable(self, exc: urllib3.exceptions.HTTPError) -> str:
        reason = getattr(exc, "reason", None) or exc
        return (
            f"cannot reach the Kubernetes API at {self._conn.host} ({self._conn.source}): {reason}"
        )


def _crd_missing(res: Resource, detail: str) -> str:
    return f"{res.kind} CRD not installed ({detail}): is KServe installed?"


def _message(exc: ApiException) -> str:
    """The Status message of an API error body, or the raw body when it is not a Status."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return (exc.body or "").strip()[:500]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:500]
