"""The model registry: MLflow's Model Registry, through its REST API.

`models:/NAME/VERSION` and `models:/NAME@ALIAS` (MLflow's model URI forms) resolve to the model
version's artifact location, which becomes the InferenceService's storageUri; `register`
uploads a Triton-layout model repository (checked first: config.pbtxt parsed, a version
directory, its model file) through the tracking server's artifact proxy and creates a version
of it, optionally pointing an alias at it.

The artifact proxy (`mlflow server --serve-artifacts`, MLflow's default) records sources as
`mlflow-artifacts:/PATH`; KServe's storage initializer cannot read that scheme, so such a
source resolves through `--artifact-root`, the server's `--artifacts-destination` (for example
s3://bucket/mlflow). A version registered with a source KServe reads (s3://, gs://, https://,
pvc://, ...) resolves to it as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from common.modelrepo import ModelRepositoryError, resolve
from rollout.errors import ExitCode, RolloutError, UsageError

REGISTRY_ENV = "MLFLOW_TRACKING_URI"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # sent as a bearer token, as MLflow's own client does
ARTIFACT_ROOT_ENV = "MLFLOW_ARTIFACT_ROOT"
PROXY_SCHEME = "mlflow-artifacts:"
# What KServe's storage initializer downloads from (python/kserve/kserve/storage/storage.py).
STORAGE_SCHEMES = (
    "gs://",
    "s3://",
    "https://",
    "http://",
    "pvc://",
    "hdfs://",
    "webhdfs://",
    "hf://",
    "oci://",
)
TIMEOUT_S = 30.0
DEFAULT_EXPERIMENT = "0"  # every tracking server has it; the upload's run goes there
ARTIFACT_DIR = "model_repository"  # the repository's directory among the run's artifacts
# The model-version tag naming the repository's version directory the predictor serves (its
# newest): the `model_version` label of its metrics, which canary analysis compares.
SERVED_VERSION_TAG = "served_version"
_MODEL_URI = re.compile(
    r"models:/(?P<name>[^/@\s]+)(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>[A-Za-z_][A-Za-z0-9_-]*))"
)
MODEL_URI_FORMS = "models:/NAME/VERSION or models:/NAME@ALIAS"


class RegistryError(RolloutError):
    """The registry does not know the model, version or alias asked for, or refused a call."""

    exit_code = ExitCode.NOT_FOUND


class RegistryUnreachable(RegistryError):
    """No answer from the registry, or a server error."""

    exit_code = ExitCode.UNREACHABLE


class RegistryRefused(RegistryError):
    """The registry refused the call (credentials, permissions, a bad request)."""

    exit_code = ExitCode.REJECTED


def _failure(url: str, what: str, response: httpx.Response) -> RegistryError:
    """The error for a registry answer that is neither success nor "does not exist"."""
    message = f"registry {url}: {what}: {_describe(response)}"
    if response.status_code >= 500:
        return RegistryUnreachable(message)
    if response.status_code in (401, 403):
        return RegistryRefused(f"{message} (check ${TOKEN_ENV})")
    return RegistryRefused(message)


@dataclass(frozen=True)
class ModelUri:
    """A registered model version named by number or by alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelUri:
        """Raises UsageError for anything but models:/NAME/VERSION or models:/NAME@ALIAS."""
        match = _MODEL_URI.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"--model {text!r}: expected {MODEL_URI_FORMS}")
        return cls(match["name"], match["version"], match["alias"])

    def __str__(self) -> str:
        return (
            f"models:/{self.name}/{self.version}"
            if self.version
            else f"models:/{self.name}@{self.alias}"
        )


@dataclass(frozen=True)
class ResolvedModel:
    """A model version and where KServe downloads it from."""

    name: str
    version: str
    source: str  # as the registry records it
    storage_uri: str  # what KServe's storage initializer reads
    registry: str
    alias: str | None = None
    served_version: str | None = None  # the repository version directory served (its tag)

    def record(self) -> dict[str, str]:
        """What the InferenceService's annotation keeps of it."""
        data = {
            "name": self.name,
            "version": self.version,
            "storageUri": self.storage_uri,
            "registry": self.registry,
        }
        if self.alias:
            data["alias"] = self.alias
        if self.served_version:
            data["servedVersion"] = self.served_version
        return data


class MlflowRegistry:
    """MLflow's Model Registry REST API (2.0 paths, served by MLflow 2.x and 3.x)."""

    def __init__(
        self,
        url: str,
        artifact_root: str | None = None,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.artifact_root = artifact_root.rstrip("/") if artifact_root else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT_S, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def resolve(self, uri: ModelUri) -> ResolvedModel:
        """The version `uri` names and its storage URI; raises RegistryError naming what is
        unknown, or UsageError when its source is no URI KServe can download."""
        if uri.version is not None:
            found = self._get(
                "/api/2.0/mlflow/model-versions/get",
                {"name": uri.name, "version": uri.version},
                lambda: self._unknown_version(uri.name, uri.version or ""),
            )
        else:
            found = self._get(
                "/api/2.0/mlflow/registered-models/alias",
                {"name": uri.name, "alias": uri.alias or ""},
                lambda: self._unknown_alias(uri.name, uri.alias or ""),
            )
        version = found["model_version"]
        return ResolvedModel(
            name=version["name"],
            version=str(version["version"]),
            source=version["source"],
            storage_uri=self.storage_uri(version["source"], version["name"], version["version"]),
            registry=self.url,
            alias=uri.alias,
            served_version=_tag(version, SERVED_VERSION_TAG),
        )

    def storage_uri(self, source: str, name: str, version: str) -> str:
        """The URI KServe downloads a version's source from; raises UsageError."""
        if source.startswith(PROXY_SCHEME):
            source = PROXY_SCHEME + "/" + _proxied_path(source)
            if self.artifact_root is None:
                raise UsageError(
                    f"models:/{name}/{version} is stored as {source} (the tracking server's "
                    f"artifact proxy), which KServe cannot download: give --artifact-root (or "
                    f"${ARTIFACT_ROOT_ENV}), the server's --artifacts-destination, e.g. "
                    "s3://bucket/mlflow"
                )
            return f"{self.artifact_root}/{source[len(PROXY_SCHEME) :].lstrip('/')}"
        if source.startswith(STORAGE_SCHEMES) or (
            self.artifact_root is not None and source.startswith(self.artifact_root)
        ):
            return source
        raise UsageError(
            f"models:/{name}/{version} has source {source!r}, which KServe's storage "
            f"initializer cannot download (expected one of {', '.join(STORAGE_SCHEMES)})"
        )

    def register(
        self, repository: Path, model_name: str, registered_name: str, alias: str | None = None
    ) -> ResolvedModel:
        """Upload a model repository and create a version of it (and point `alias` at it).
        Raises UsageError for an invalid repository (before anything is uploaded) and
        RegistryError when the registry refuses or cannot be reached."""
        try:
            version_dir = resolve(repository, model_name)
        except ModelRepositoryError as exc:
            raise UsageError(
                f"{repository}: not a model repository this project serves: {exc}"
            ) from None
        files = sorted(p for p in repository.rglob("*") if p.is_file())
        self._ensure_registered_model(registered_name)
        # MLflow registers a version from a run's artifacts: a run holds the upload.
        run = self._call(
            "POST",
            "/api/2.0/mlflow/runs/create",
            json={"experiment_id": DEFAULT_EXPERIMENT, "run_name": f"register {registered_name}"},
        )["run"]["info"]
        source = f"{run['artifact_uri'].rstrip('/')}/{ARTIFACT_DIR}"
        proxied = _proxied_path(source)
        for path in files:
            relative = path.relative_to(repository).as_posix()
            self._call(
                "PUT",
                f"/api/2.0/mlflow-artifacts/artifacts/{quote(proxied)}/{quote(relative)}",
                content=path.read_bytes(),
            )
        self._call(
            "POST",
            "/api/2.0/mlflow/runs/update",
            json={"run_id": run["run_id"], "status": "FINISHED"},
        )
        created = self._call(
            "POST",
            "/api/2.0/mlflow/model-versions/create",
            json={
                "name": registered_name,
                "source": source,
                "run_id": run["run_id"],
                "tags": [{"key": SERVED_VERSION_TAG, "value": version_dir.version}],
                "description": (
                    f"Triton-layout model repository: {model_name} version "
                    f"{version_dir.version}, {len(files)} files"
                ),
            },
        )["model_version"]
        if alias:
            self._call(
                "POST",
                "/api/2.0/mlflow/registered-models/alias",
                json={"name": registered_name, "alias": alias, "version": created["version"]},
            )
        return ResolvedModel(
            name=registered_name,
            version=str(created["version"]),
            source=created["source"],
            storage_uri=(
                self.storage_uri(created["source"], registered_name, created["version"])
                if self.artifact_root
                else created["source"]
            ),
            registry=self.url,
            alias=alias,
            served_version=version_dir.version,
        )

    def _ensure_registered_model(self, name: str) -> None:
        response = self._send(
            "POST", "/api/2.0/mlflow/registered-models/create", json={"name": name}
        )
        if response.status_code == 200 or _error_code(response) == "RESOURCE_ALREADY_EXISTS":
            return
        raise _failure(self.url, f"creating model {name!r}", response)

    def _unknown_version(self, name: str, version: str) -> RegistryError:
        known = self._versions(name)
        if known is None:
            return RegistryError(f"registry {self.url}: no registered model named {name!r}")
        return RegistryError(
            f"registry {self.url}: model {name!r} has no version {version} "
            f"(versions: {', '.join(known) or 'none'})"
        )

    def _unknown_alias(self, name: str, alias: str) -> RegistryError:
        response = self._send("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name})
        if _error_code(response) == "RESOURCE_DOES_NOT_EXIST":
            return RegistryError(f"registry {self.url}: no registered model named {name!r}")
        if response.status_code != 200:
            return _failure(self.url, f"reading model {name!r}", response)
        aliases = [a["alias"] for a in response.json()["registered_model"].get("aliases", [])]
        return RegistryError(
            f"registry {self.url}: model {name!r} has no alias {alias!r} "
            f"(aliases: {', '.join(sorted(aliases)) or 'none'})"
        )

    def _versions(self, name: str) -> list[str] | None:
        response = self._send("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name})
        if _error_code(response) == "RESOURCE_DOES_NOT_EXIST":
            return None
        if response.status_code != 200:
            raise _failure(self.url, f"reading model {name!r}", response)
        found = self._send(
            "GET",
            "/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{name}'", "max_results": 1000},
        )
        versions = found.json().get("model_versions", []) if found.status_code == 200 else []
        return sorted((str(v["version"]) for v in versions), key=int)

    def _get(self, path: str, params: dict[str, str], unknown: Any) -> dict[str, Any]:
        response = self._send("GET", path, params=params)
        if response.status_code == 200:
            return dict(response.json())
        if _error_code(response) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise unknown()
        raise _failure(self.url, f"GET {path}", response)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        if response.status_code != 200:
            raise _failure(self.url, f"{method} {path}", response)
        return dict(response.json()) if response.content else {}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnreachable(
                f"registry {self.url} unreachable ({exc.__class__.__name__}: {exc}); is the "
                f"MLflow tracking server running (--registry or ${REGISTRY_ENV})?"
            ) from None


def _proxied_path(source: str) -> str:
    """The artifact proxy's path of an mlflow-artifacts: URI (with or without a host)."""
    if not source.startswith(PROXY_SCHEME):
        raise UsageError(
            f"the tracking server stores run artifacts at {source}, not behind its artifact "
            "proxy: start it with --serve-artifacts (MLflow's default) to register through it"
        )
    path = source[len(PROXY_SCHEME) :]
    if path.startswith("//"):  # mlflow-artifacts://host:port/path
        path = path[2:].split("/", 1)[1] if "/" in path[2:] else ""
    return path.lstrip("/")


def _tag(model_version: dict[str, Any], key: str) -> str | None:
    """A model version's tag value (the REST API lists tags as key/value objects)."""
    for tag in model_version.get("tags") or []:
        if tag.get("key") == key and tag.get("value"):
            return str(tag["value"])
    return None


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("message") or body
    except ValueError:
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"
