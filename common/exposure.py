"""What each server exposes, decided route by route: the reviewed inventory and its enforcement.

Every REST route and gRPC method that kserve (or this project) registers is listed here with a
decision and the reason for it. Anything not listed is refused at start-up (and logged as
unreviewed), so a kserve upgrade or a new route cannot widen what a server exposes without
someone adding it here; `tests/test_exposure.py` fails until they do.

Decisions:
- OPEN: served to anyone who can connect (health, readiness, metrics). Never needs a key.
- KEYED: served; when the server has API keys (`--api_key_file`, transformer only), a request
  must carry one (REST `Authorization: Bearer <key>`, gRPC `authorization` metadata).
- CONTROL: the model repository extension (load/unload). Off unless the predictor runs with
  `--enable_model_repository_api`; never on the transformer, the public entry point.
- REFUSED: never served (404 over REST, UNIMPLEMENTED over gRPC).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from . import admission, kserve_compat

# Under kserve's logger, which kserve configures: the inventory is part of the start-up log.
logger = logging.getLogger("kserve").getChild("exposure")

GRPC_SERVICE = "inference.GRPCInferenceService"


class Access(enum.Enum):
    """Who may call a route or method (see the module docstring)."""

    OPEN = "open"
    KEYED = "keyed"
    CONTROL = "control"
    REFUSED = "refused"


@dataclass(frozen=True)
class Entry:
    """One reviewed route or method: the decision and why."""

    access: Access
    why: str


OPEN, KEYED, CONTROL, REFUSED = Access.OPEN, Access.KEYED, Access.CONTROL, Access.REFUSED
_MODEL = "/v2/models/{model_name}"
_VERSION = _MODEL + "/versions/{model_version}"

# (method, path template) -> decision, for every route kserve 0.21 and this project register.
# HEAD is implied by GET and not listed.
REST_ROUTES: dict[tuple[str, str], Entry] = {
    ("GET", "/"): Entry(
        OPEN,
        "kserve's liveness answer; on the transformer, browsers (Accept: text/html) get the "
        "static demo page instead, whose own V2 calls send the key the user types in",
    ),
    ("GET", "/demo/demo.css"): Entry(OPEN, "the demo page's stylesheet (static, transformer)"),
    ("GET", "/demo/demo.js"): Entry(OPEN, "the demo page's script (static, transformer)"),
    ("GET", "/metrics"): Entry(
        OPEN,
        "Prometheus scrape: aggregate counters and latency histograms, no request content; "
        "the NetworkPolicy admits only the monitoring namespace to the predictor",
    ),
    ("GET", "/openapi.json"): Entry(
        REFUSED, "a map of every route, the refused ones included; clients need no schema"
    ),
    ("GET", "/docs"): Entry(
        REFUSED, "Swagger UI (--enable_docs_url) loads scripts from a CDN; not for production"
    ),
    ("GET", "/docs/oauth2-redirect"): Entry(REFUSED, "part of the Swagger UI"),
    ("GET", "/v1/models"): Entry(KEYED, "V1 list of model names"),
    ("GET", "/v1/models/{model_name}"): Entry(OPEN, "V1 model readiness (a health check)"),
    ("POST", "/v1/models/{model_name}:predict"): Entry(KEYED, "V1 inference"),
    ("POST", "/v1/models/{model_name}:explain"): Entry(
        REFUSED, "no explainer is deployed; kserve would answer an error anyway"
    ),
    ("GET", "/v2"): Entry(KEYED, "V2 server metadata (kserve version, extensions)"),
    ("GET", "/v2/health/live"): Entry(OPEN, "V2 liveness (the transformer's livenessProbe)"),
    ("GET", "/v2/health/ready"): Entry(OPEN, "V2 readiness (the transformer's readinessProbe)"),
    ("GET", "/v2/models"): Entry(KEYED, "V2 list of model names"),
    ("GET", _MODEL): Entry(KEYED, "V2 model metadata: tensor names, datatypes, shapes"),
    ("GET", _VERSION): Entry(KEYED, "V2 model metadata, versioned path"),
    ("GET", _MODEL + "/ready"): Entry(OPEN, "V2 model readiness (a health check)"),
    ("GET", _MODEL + "/drift"): Entry(
        KEYED, "drift scores of the transformer's window (aggregates, as on /metrics)"
    ),
    ("POST", _MODEL + "/labels"): Entry(
        KEYED,
        "true labels for logged predictions (transformer, --prediction_log_db): writes to the "
        "prediction log's database, so it takes the same key as inference",
    ),
    ("GET", _MODEL + "/accuracy"): Entry(
        KEYED, "accuracy per model version from the labelled predictions (aggregates)"
    ),
    ("GET", _VERSION + "/ready"): Entry(OPEN, "V2 model readiness, versioned path"),
    ("POST", _MODEL + "/infer"): Entry(
        KEYED, "V2 inference (common.server's zero-copy route, then kserve's behind it)"
    ),
    ("POST", _VERSION + "/infer"): Entry(
        KEYED, "kserve answers 501 rather than serve another version"
    ),
    ("POST", "/v2/repository/models/{model_name}/load"): Entry(
        CONTROL, "model repository extension; kserve cannot reload a custom model after unload"
    ),
    ("POST", "/v2/repository/models/{model_name}/unload"): Entry(
        CONTROL, "model repository extension: one anonymous call takes the model down"
    ),
}

# gRPC method of inference.GRPCInferenceService -> decision (kserve 0.21's proto; it has no
# RepositoryIndex, which clients therefore get UNIMPLEMENTED for from gRPC itself).
GRPC_METHODS: dict[str, Entry] = {
    "ServerLive": Entry(OPEN, "liveness"),
    "ServerReady": Entry(OPEN, "readiness"),
    "ModelReady": Entry(OPEN, "model readiness"),
    "ServerMetadata": Entry(KEYED, "server metadata (kserve version, extensions)"),
    "ModelMetadata": Entry(KEYED, "model metadata: tensor names, datatypes, shapes"),
    "ModelInfer": Entry(KEYED, "inference"),
    "RepositoryModelLoad": Entry(CONTROL, "model repository extension"),
    "RepositoryModelUnload": Entry(CONTROL, "model repository extension: takes the model down"),
}


class KeyCheck(Protocol):
    """Validates a presented API key (transformer.auth.ApiKeys)."""

    def valid(self, presented: str) -> bool:
        """Whether `presented` is one of the current keys."""
        ...


@dataclass(frozen=True)
class ExposurePolicy:
    """How one server applies the inventory: control plane on or off, keys or none."""

    control_plane: bool = False
    api_keys: KeyCheck | None = None

    def serves(self, entry: Entry | None) -> bool:
        """Whether a route or method with this decision is served at all."""
        if entry is None:
            return False
        if entry.access is CONTROL:
            return self.control_plane
        return entry.access is not REFUSED

    def needs_key(self, entry: Entry | None) -> bool:
        """Whether a call to it must carry a valid API key."""
        return self.api_keys is not None and (entry is None or entry.access is not OPEN)


@dataclass(frozen=True)
class Inventory:
    """What a server registered, split by the policy's decision."""

    served: list[str]
    refused: list[str]
    unreviewed: list[str]

    def log(self, kind: str) -> None:
        """One line each for what is served and refused; an error naming unreviewed ones."""
        logger.info("exposure: %s served: %s", kind, ", ".join(self.served) or "-")
        logger.info("exposure: %s refused: %s", kind, ", ".join(self.refused) or "-")
        if self.unreviewed:
            logger.error(
                "exposure: %s unreviewed, so refused: %s (decide each in common/exposure.py)",
                kind,
                ", ".join(self.unreviewed),
            )


# ---------------------------------------------------------------------------- REST


def registered_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route registered on `app`, HEAD left out ("*" for any method).

    Walks routers included with `include_router`, which FastAPI 0.165 keeps as nested objects.
    """
    found: list[tuple[str, str]] = []

    def walk(routes: Iterable[BaseRoute], prefix: str) -> None:
        for route in routes:
            nested = getattr(route, "original_router", None)
            if nested is not None:
                context = getattr(route, "include_context", None)
                walk(nested.routes, prefix + getattr(context, "prefix", ""))
                continue
            path = prefix + getattr(route, "path", repr(route))
            methods = getattr(route, "methods", None) or {"*"}
            found.extend((m, path) for m in sorted(methods) if m != "HEAD")

    walk(app.router.routes, "")
    return list(dict.fromkeys(found))


def rest_inventory(app: FastAPI, policy: ExposurePolicy) -> Inventory:
    """Split the routes registered on `app` by the policy's decision."""
    served, refused, unreviewed = [], [], []
    for method, path in registered_routes(app):
        entry = REST_ROUTES.get((method, path))
        name = f"{method} {path}"
        if entry is None:
            unreviewed.append(name)
        elif policy.serves(entry):
            served.append(name)
        else:
            refused.append(name)
    return Inventory(served, refused, unreviewed)


def install_policy(app: FastAPI, policy: ExposurePolicy) -> None:
    """Enforce `policy` on `app`'s REST routes (and keys, when it has them) from the start.

    Enforcement is by request: a request reaches the app only when its method and path match
    a reviewed route the policy serves, whatever else is registered. kserve registers its
    routes when its REST server starts, after this call, so the middleware logs the inventory
    on its first call (the ASGI lifespan start-up).
    """
    app.add_middleware(ExposureMiddleware, fastapi_app=app, policy=policy)


_REST_PATTERNS = [
    (method, compile_path(path)[0], entry) for (method, path), entry in REST_ROUTES.items()
]


def rest_entry(method: str, path: str) -> Entry | None:
    """The reviewed decision for a request line, None when no reviewed route matches."""
    method = "GET" if method == "HEAD" else method
    for route_method, pattern, entry in _REST_PATTERNS:
        if route_method == method and pattern.match(path):
            return entry
    return None


class ExposureMiddleware:
    """Lets through only HTTP requests for routes the policy serves (others get 404) and, when
    the policy has keys, answers 401 to requests for non-OPEN routes without a valid
    `Authorization: Bearer` key. Unknown paths count as unserved."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, policy: ExposurePolicy) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.policy = policy
        self.logged = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.logged:
            self.logged = True
            rest_inventory(self.fastapi_app, self.policy).log("REST")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = rest_entry(scope["method"], scope["path"])
        if self.policy.needs_key(entry) and not self._key_valid(scope):
            # Before the 404: without a key nobody learns which routes exist.
            await admission.send_error(
                scope,
                receive,
                send,
                401,
                "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                {"www-authenticate": 'Bearer realm="image-classifier"'},
            )
        elif not self.policy.serves(entry):
            await admission.send_error(
                scope, receive, send, 404, f"{scope['method']} {scope['path']} is not served here"
            )
        else:
            await self.app(scope, receive, send)

    def _key_valid(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        return self._bearer_valid(header.decode("latin-1"))

    def _bearer_valid(self, header: str) -> bool:
        scheme, _, token = header.strip().partition(" ")
        keys = self.policy.api_keys
        return keys is not None and scheme.lower() == "bearer" and keys.valid(token.strip())


# ---------------------------------------------------------------------------- gRPC


def grpc_inventory(rpc_names: Iterable[str], policy: ExposurePolicy) -> Inventory:
    """Split the service's RPCs by the policy's decision."""
    served, refused, unreviewed = [], [], []
    for name in rpc_names:
        entry = GRPC_METHODS.get(name)
        if entry is None:
            unreviewed.append(name)
        elif policy.serves(entry):
            served.append(name)
        else:
            refused.append(name)
    return Inventory(served, refused, unreviewed)


def bearer_in_metadata(metadata: Iterable[tuple[str, str | bytes]], keys: KeyCheck) -> bool:
    """Whether gRPC metadata carries `authorization: Bearer <valid key>`."""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            return scheme.lower() == "bearer" and keys.valid(token.strip())
    return False


def guarded_servicer(base: type, policy: ExposurePolicy) -> type:
    """A subclass of kserve's servicer `base` whose refused RPCs answer UNIMPLEMENTED and whose
    KEYED RPCs answer UNAUTHENTICATED without a valid key (when the policy has keys).

    The RPC list is the generated service's, so an RPC added by a kserve upgrade is refused
    until it is reviewed here.
    """
    inventory = grpc_inventory(kserve_compat.grpc_rpc_names(), policy)
    inventory.log("gRPC")
    namespace: dict[str, Any] = {}
    for name in inventory.refused + inventory.unreviewed:
        entry = GRPC_METHODS.get(name)
        reason = f"{GRPC_SERVICE}/{name} is not served here"
        if entry is not None and entry.access is CONTROL:
            reason += " (the model repository API is off)"
        namespace[name] = _refusing(kserve_compat.GrpcUnimplemented, reason)
    if policy.control_plane:
        namespace.update(kserve_compat.repository_rpcs())
    keys = policy.api_keys
    if keys is not None:
        for name in inventory.served:
            if policy.needs_key(GRPC_METHODS[name]):
                namespace[name] = _keyed(namespace.get(name, getattr(base, name)), keys)
    return type(f"Guarded{base.__name__}", (base,), namespace)


def _refusing(error: type[Exception], reason: str) -> Callable[..., Awaitable[Any]]:
    """An RPC handler that fails with `error` (a grpc_interceptor status exception)."""

    async def refuse(self: Any, request: Any, context: Any) -> Any:
        raise error(reason)

    return refuse


def _keyed(method: Callable[..., Awaitable[Any]], keys: KeyCheck) -> Callable[..., Awaitable[Any]]:
    """`method`, answering UNAUTHENTICATED unless the call's metadata carries a valid key."""

    async def keyed(self: Any, request: Any, context: Any) -> Any:
        if not bearer_in_metadata(context.invocation_metadata() or (), keys):
            raise kserve_compat.GrpcUnauthenticated(
                "missing or invalid API key: send the metadata 'authorization: Bearer <key>'"
            )
        return await method(self, request, context)

    return keyed


def install_grpc_policy(policy: ExposurePolicy) -> None:
    """Make kserve's gRPC server use a servicer guarded by `policy` (see guarded_servicer)."""
    kserve_compat.replace_grpc_servicer(lambda base: guarded_servicer(base, policy))
