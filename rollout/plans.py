"""What each mutating command changes: a JSON merge patch plus the state to wait for.

Every plan is computed the same way: copy the live object, edit the copy, diff the two into an
RFC 7386 merge patch. Nothing here talks to the API server, so `--dry-run` prints exactly what
would be sent.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from rollout.errors import Unsupported, UsageError
from rollout.state import Mode, deployment_mode

# The spec of predictor/transformer before the current rollout began, as JSON, so that a later
# `rollback` can restore it. It lives on the object because the CLI keeps no state of its own.
PREVIOUS_SPEC_ANNOTATION = "image-classifier-rollout/previous-spec"
KSERVE_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
# Predictor keys that may hold the model's storageUri, besides `model` (KServe model formats).
FRAMEWORK_KEYS = (
    "model", "pytorch", "triton", "onnx", "tensorflow", "sklearn", "xgboost", "lightgbm",
    "huggingface", "paddle", "pmml",
)  # fmt: skip
CANARY_COMPONENTS = ("predictor", "transformer")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """The new artifacts a canary brings; None leaves that field as it is."""

    storage_uri: str | None = None
    image: str | None = None
    transformer_image: str | None = None


@dataclass(frozen=True)
class Expectation:
    """The state a wait must observe, beyond `observedGeneration >= generation` and Ready=True.

    latest_percent: Knative, per component, the percent on the latest revision.
    canaries: Standard, the exact set of canary names with their percent (ready); None: unchecked.
    """

    latest_percent: dict[str, int] = field(default_factory=dict)
    canaries: dict[str, int] | None = None


@dataclass(frozen=True)
class Plan:
    """A merge patch for one InferenceService, what it means, and what to wait for afterwards."""

    summary: str
    patch: Obj
    expect: Expectation
    warnings: tuple[str, ...] = ()


def merge_diff(old: Any, new: Any) -> Any:
    """Return the RFC 7386 merge patch that turns `old` into `new` (lists are replaced whole)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: Obj = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            if isinstance(old[key], dict) and isinstance(value, dict):
                patch[key] = merge_diff(old[key], value)
            else:
                patch[key] = copy.deepcopy(value)
    return patch


def plan_canary(isvc: Obj, percent: int, change: Change, canary_name: str | None) -> Plan:
    """Plan a canary at `percent` carrying `change`; raises UsageError or Unsupported."""
    if not 0 <= percent <= 100:
        raise UsageError(f"--percent must be between 0 and 100, got {percent}")
    if deployment_mode(isvc) is Mode.KNATIVE:
        return _knative_canary(isvc, percent, change)
    return _standard_canary(isvc, percent, change, canary_name)


def plan_promote(isvc: Obj) -> Plan:
    """Plan sending all traffic to the canary; raises UsageError when no canary is in progress."""
    if deployment_mode(isvc) is Mode.KNATIVE:
        return _knative_promote(isvc)
    return _standard_promote(isvc)


def plan_rollback(isvc: Obj, restore_spec: bool = False, failed: bool = False) -> Plan:
    """Plan returning traffic to the last rolled-out version; raises UsageError if there is none.

    Knative: a healthy canary is rolled back by `canaryTrafficPercent: 0`, which moves all
    traffic to the previous rolled-out revision at once. When the latest revision `failed`, or
    `restore_spec` is asked, or no canary is in progress, the spec recorded before the rollout is
    restored instead: Knative keeps an InferenceService whose latest revision failed not Ready
    until a good revision exists, whatever the traffic split says.
    Standard: the canary entries are removed (the main predictor never changed), or, after a
    promote, the recorded predictor is restored.
    """
    new = copy.deepcopy(isvc)
    spec = new["spec"]
    if deployment_mode(isvc) is Mode.KNATIVE:
        in_canary = _knative_canary_components(spec)
        if in_canary and not (restore_spec or failed):
            for name in in_canary:
                spec[name]["canaryTrafficPercent"] = 0
            return _plan(
                isvc,
                new,
                f"roll back {', '.join(in_canary)}: 0% to the latest revision",
                Expectation(latest_percent=dict.fromkeys(in_canary, 0)),
            )
        restored = _restore_recorded(new)
        return _plan(
            isvc,
            new,
            f"restore the {', '.join(restored)} spec recorded before the rollout",
            Expectation(latest_percent=dict.fromkeys(restored, 100)),
        )
    if spec.get("canary") and not restore_spec:
        spec.pop("canary")
        _annotations(new).pop(PREVIOUS_SPEC_ANNOTATION, None)
        return _plan(isvc, new, "remove the canary", Expectation(canaries={}))
    spec.pop("canary", None)
    _restore_recorded(new)
    return _plan(
        isvc, new, "restore the predictor recorded before the rollout", Expectation(canaries={})
    )


def canary_in_progress(isvc: Obj) -> bool:
    """Whether some traffic is split off to a canary (Knative: a canaryTrafficPercent between 0
    and 100, both excluded; Standard: canary predictors)."""
    spec = isvc.get("spec") or {}
    if deployment_mode(isvc) is Mode.KNATIVE:
        percents = [(spec.get(c) or {}).get("canaryTrafficPercent") for c in CANARY_COMPONENTS]
        return any(isinstance(p, int) and 0 < p < 100 for p in percents)
    return bool(spec.get("canary"))


def recorded_spec(isvc: Obj) -> Obj | None:
    """The predictor/transformer spec recorded by the last canary, or None."""
    raw = _annotations(isvc).get(PREVIOUS_SPEC_ANNOTATION)
    if not raw:
        return None
    try:
        recorded = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"annotation {PREVIOUS_SPEC_ANNOTATION} is not JSON: {exc}") from None
    if not isinstance(recorded, dict):
        raise UsageError(
            f"annotation {PREVIOUS_SPEC_ANNOTATION} holds {type(recorded).__name__},"
            " expected an object"
        )
    return recorded


def _knative_canary(isvc: Obj, percent: int, change: Change) -> Plan:
    new = copy.deepcopy(isvc)
    spec = new["spec"]
    _apply_change(spec, change)
    changed = [c for c in CANARY_COMPONENTS if _template(isvc["spec"], c) != _template(spec, c)]
    in_canary = _knative_canary_components(isvc["spec"])
    targets = changed or in_canary
    if not targets:
        raise UsageError(
            "nothing to canary: give --storage-uri, --image or --transformer-image"
            " (no canary is in progress whose percent could change)"
        )
    for name in targets:
        spec[name]["canaryTrafficPercent"] = percent
    if changed and not in_canary:
        _record(isvc, new)
    what = "new revision" if changed else "latest revision"
    return _plan(
        isvc,
        new,
        f"canary: {percent}% to the {what} of {', '.join(targets)}",
        Expectation(latest_percent=dict.fromkeys(targets, percent)),
        _transformer_lag(spec, change),
    )


def _standard_canary(isvc: Obj, percent: int, change: Change, canary_name: str | None) -> Plan:
    if change.transformer_image is not None:
        raise Unsupported(
            "Standard mode canaries carry only a predictor (spec.canary[].predictor);"
            " --transformer-image cannot be canaried there: change the transformer with `apply`"
        )
    new = copy.deepcopy(isvc)
    spec = new["spec"]
    current = spec.get("canary") or []
    if change.storage_uri is None and change.image is None:
        entry = _pick_canary(current, canary_name)
        entry["trafficPercent"] = percent
        name = entry["predictor"]["name"]
    else:
        name = canary_name or f"canary-{int(isvc['metadata'].get('generation', 0)) + 1}"
        if name == spec["predictor"].get("name"):
            raise UsageError(f"canary name {name!r} is the main predictor's name; pick another")
        predictor = copy.deepcopy(spec["predictor"])
        predictor.pop("canaryTrafficPercent", None)
        predictor["name"] = name
        _set_predictor(predictor, change)
        spec["canary"] = [{"predictor": predictor, "trafficPercent": percent}]
        if not current:
            _record(isvc, new)
    return _plan(
        isvc,
        new,
        f"canary {name}: {percent}% of predictor traffic",
        Expectation(canaries={name: percent}),
        _transformer_lag(spec, change),
    )


def _knative_promote(isvc: Obj) -> Plan:
    in_canary = _knative_canary_components(isvc["spec"])
    if not in_canary:
        raise UsageError("no canary in progress: canaryTrafficPercent is not set on any component")
    new = copy.deepcopy(isvc)
    for name in in_canary:
        new["spec"][name].pop("canaryTrafficPercent")
    promoted = in_canary
    if _sync_transformer_storage(new["spec"]) and "transformer" not in promoted:
        promoted = [*promoted, "transformer"]  # a new transformer revision, at 100%
    return _plan(
        isvc,
        new,
        f"promote {', '.join(promoted)}: 100% to the latest revision",
        Expectation(latest_percent=dict.fromkeys(promoted, 100)),
    )


def _standard_promote(isvc: Obj) -> Plan:
    new = copy.deepcopy(isvc)
    spec = new["spec"]
    entry = _pick_canary(spec.get("canary") or [], None)
    # KServe: setting predictor.name to the canary's name and dropping the entry promotes the
    # canary's Deployment in place, without a restart.
    spec["predictor"] = entry["predictor"]
    spec.pop("canary")
    _sync_transformer_storage(spec)
    return _plan(
        isvc, new, f"promote canary {entry['predictor']['name']}", Expectation(canaries={})
    )


def _pick_canary(entries: list[Obj], name: str | None) -> Obj:
    if not entries:
        raise UsageError("no canary in progress: spec.canary is empty")
    if name is None:
        if len(entries) > 1:
            names = [e["predictor"].get("name") for e in entries]
            raise UsageError(f"several canaries {names}: pick one with --canary-name")
        return entries[0]
    for e in entries:
        if e["predictor"].get("name") == name:
            return e
    raise UsageError(
        f"no canary named {name!r}; spec.canary has {[e['predictor'].get('name') for e in entries]}"
    )


def _knative_canary_components(spec: Obj) -> list[str]:
    return [
        c for c in CANARY_COMPONENTS if (spec.get(c) or {}).get("canaryTrafficPercent") is not None
    ]


def _template(spec: Obj, component: str) -> Obj:
    """A component's spec without canaryTrafficPercent: what makes Knative cut a new revision."""
    comp = dict(spec.get(component) or {})
    comp.pop("canaryTrafficPercent", None)
    return comp


def _apply_change(spec: Obj, change: Change) -> None:
    _set_predictor(spec["predictor"], change)
    if change.transformer_image is not None:
        if not spec.get("transformer"):
            raise UsageError(
                "--transformer-image given but the InferenceService has no transformer"
            )
        _container(spec["transformer"], "transformer")["image"] = change.transformer_image


def _set_predictor(predictor: Obj, change: Change) -> None:
    if change.storage_uri is not None:
        _set_storage_uri(predictor, change.storage_uri)
    if change.image is not None:
        holder = next((predictor[k] for k in FRAMEWORK_KEYS if k in predictor), None)
        # A model-format predictor takes the image override on the model, a custom one on its
        # container.
        target = holder if holder is not None else _container(predictor, "predictor")
        target["image"] = change.image


def _storage_uri(predictor: Obj) -> str | None:
    for key in FRAMEWORK_KEYS:
        if key in predictor and "storageUri" in predictor[key]:
            return str(predictor[key]["storageUri"])
    for container in predictor.get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == STORAGE_URI_ENV:
                return str(env.get("value"))
    return None


def _set_storage_uri(predictor: Obj, uri: str) -> None:
    for key in FRAMEWORK_KEYS:
        if key in predictor:
            predictor[key]["storageUri"] = uri
            return
    if predictor.get("containers"):
        # Custom containers get the model through the storage initializer, which KServe injects
        # when kserve-container has a STORAGE_URI env var.
        _set_env(_container(predictor, "predictor"), STORAGE_URI_ENV, uri)
        return
    raise UsageError(
        "--storage-uri given but the predictor has neither a model format"
        f" ({', '.join(FRAMEWORK_KEYS)}) nor containers"
    )


def _transformer_storage_env(spec: Obj) -> str | None:
    for container in (spec.get("transformer") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == STORAGE_URI_ENV:
                return str(env.get("value"))
    return None


def _sync_transformer_storage(spec: Obj) -> bool:
    """Point the transformer's STORAGE_URI at the predictor's model; True if that changed it.

    The transformer reads labels and preprocessing from the same model repository as the
    predictor. A canary may change weights, never those, so the transformer keeps the stable
    model during a canary and follows the predictor when it is promoted.
    """
    uri = _storage_uri(spec["predictor"])
    current = _transformer_storage_env(spec)
    if uri is None or current is None or current == uri:
        return False
    for container in spec["transformer"]["containers"]:
        if any(e.get("name") == STORAGE_URI_ENV for e in container.get("env") or []):
            _set_env(container, STORAGE_URI_ENV, uri)
    return True


def _transformer_lag(spec: Obj, change: Change) -> tuple[str, ...]:
    current = _transformer_storage_env(spec)
    if change.storage_uri is None or current is None or current == change.storage_uri:
        return ()
    return (
        f"the transformer keeps {STORAGE_URI_ENV}={current} (labels, preprocessing) while the"
        f" canary runs; `promote` moves it to {change.storage_uri}",
    )


def _container(component: Obj, what: str) -> Obj:
    containers = component.get("containers") or []
    if not containers:
        raise UsageError(f"the {what} has no containers to set an image on")
    return next((c for c in containers if c.get("name") == KSERVE_CONTAINER), containers[0])


def _set_env(container: Obj, name: str, value: str) -> None:
    env = container.setdefault("env", [])
    for item in env:
        if item.get("name") == name:
            item.pop("valueFrom", None)
            item["value"] = value
            return
    env.append({"name": name, "value": value})


def _annotations(isvc: Obj) -> dict[str, str]:
    meta = isvc.setdefault("metadata", {})
    if meta.get("annotations") is None:
        meta["annotations"] = {}
    annotations: dict[str, str] = meta["annotations"]
    return annotations


def _record(old: Obj, new: Obj) -> None:
    """Store the pre-rollout predictor/transformer of `old` on `new` for a later rollback."""
    recorded = {c: _template(old["spec"], c) for c in CANARY_COMPONENTS if old["spec"].get(c)}
    _annotations(new)[PREVIOUS_SPEC_ANNOTATION] = json.dumps(recorded, sort_keys=True)


def _restore_recorded(new: Obj) -> list[str]:
    """Put the recorded components back on `new` and drop the record; returns their names."""
    recorded = recorded_spec(new)
    if recorded is None:
        raise UsageError(
            "nothing to roll back: no canary in progress and no spec recorded by a previous"
            f" `canary` (annotation {PREVIOUS_SPEC_ANNOTATION})"
        )
    for name, comp in recorded.items():
        new["spec"][name] = comp
    _annotations(new).pop(PREVIOUS_SPEC_ANNOTATION)
    return sorted(recorded)


def _plan(
    old: Obj, new: Obj, summary: str, expect: Expectation, warnings: tuple[str, ...] = ()
) -> Plan:
    return Plan(summary=summary, patch=_patch(old, new), expect=expect, warnings=warnings)


def _patch(old: Obj, new: Obj) -> Obj:
    """The merge patch of spec and annotations, pinned to the resourceVersion that was read."""
    patch: Obj = {}
    spec = merge_diff(old.get("spec") or {}, new.get("spec") or {})
    if spec:
        patch["spec"] = spec
    old_ann = (old.get("metadata") or {}).get("annotations") or {}
    annotations = merge_diff(old_ann, _annotations(new))
    meta: Obj = {}
    if annotations:
        meta["annotations"] = annotations
    if patch or meta:
        # A concurrent writer makes the server answer 409 instead of us overwriting its change.
        meta["resourceVersion"] = old["metadata"].get("resourceVersion")
        patch["metadata"] = meta
    return patch


def annotated(plan: Plan, annotations: dict[str, str | None]) -> Plan:
    """`plan` with annotations set (a value) or removed (None) by the same patch."""
    patch = copy.deepcopy(plan.patch)
    patch.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    return dataclasses.replace(plan, patch=patch)


def set_model(isvc: Obj, storage_uri: str) -> None:
    """Point an InferenceService's predictor, and its transformer's labels and preprocessing,
    at one model repository (what `apply --model` does to the rendered overlay)."""
    spec = isvc["spec"]
    _set_storage_uri(spec["predictor"], storage_uri)
    if spec.get("transformer") and _transformer_storage_env(spec) is not None:
        _set_env(_container(spec["transformer"], "transformer"), STORAGE_URI_ENV, storage_uri)
