"""A typed reading of an InferenceService: deployment mode, readiness, traffic split, conditions.

This is the only module that reads `.status` (and the mode annotation); everything that prints
or waits works on a `Snapshot`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rollout.errors import Unsupported

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
COMPONENTS = ("predictor", "transformer", "explainer")
# Reasons that end a rollout as failed instead of "still progressing". Knative reports a revision
# that cannot start as RevisionFailed (or ContainerMissing for a bad image, ProgressDeadlineExceeded
# when pods never become ready); KServe's model status uses the others.
FAILURE_REASONS = frozenset(
    {
        "RevisionFailed",
        "ContainerMissing",
        "ProgressDeadlineExceeded",
        "InvalidSpec",
        "BlockedByFailedLoad",
        "ModelLoadFailed",
    }
)

Obj = dict[str, Any]


class Mode(Enum):
    """How KServe runs the service: Knative revisions, or plain Deployments ("Standard")."""

    KNATIVE = "Knative"
    STANDARD = "Standard"


# Values of serving.kserve.io/deploymentMode. KServe 0.15 renamed Serverless to Knative and
# RawDeployment to Standard; the old names are still accepted there, so they are here.
_MODES = {
    "Knative": Mode.KNATIVE,
    "Serverless": Mode.KNATIVE,
    "Standard": Mode.STANDARD,
    "RawDeployment": Mode.STANDARD,
}


def deployment_mode(isvc: Obj) -> Mode:
    """Mode from the annotation, else from status.deploymentMode, else KServe's default, Knative.

    Raises Unsupported for ModelMesh or an unknown value.
    """
    annotations = isvc.get("metadata", {}).get("annotations") or {}
    value = annotations.get(MODE_ANNOTATION) or isvc.get("status", {}).get("deploymentMode")
    if not value:
        return Mode.KNATIVE
    if value not in _MODES:
        raise Unsupported(
            f"deployment mode {value!r} ({MODE_ANNOTATION}) is not supported by this tool;"
            f" expected one of {sorted(_MODES)}"
        )
    return _MODES[value]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class TrafficRow:
    """One revision (Knative) or Deployment (Standard) and the share of traffic it gets."""

    component: str
    revision: str
    percent: int | None
    latest: bool
    tag: str = ""
    ready: bool | None = None


@dataclass(frozen=True)
class Canary:
    """A Standard-mode canary from status.canaryStatuses."""

    name: str
    ready: bool
    percent: int
    failure: str = ""


@dataclass(frozen=True)
class ComponentStatus:
    latest_created: str = ""
    latest_ready: str = ""
    latest_rolledout: str = ""
    previous_rolledout: str = ""
    url: str = ""


@dataclass(frozen=True)
class Snapshot:
    """What the controller has reported for one InferenceService at one instant."""

    name: str
    namespace: str
    mode: Mode
    generation: int
    observed_generation: int | None
    url: str
    conditions: list[Condition]
    traffic: list[TrafficRow]
    components: dict[str, ComponentStatus] = field(default_factory=dict)
    canaries: list[Canary] = field(default_factory=list)
    # The registry versions the rollout CLI recorded (rollout.registry): the one the spec
    # serves now (the canary's, during a canary) and the one before it.
    model: dict[str, str] | None = None
    previous_model: dict[str, str] | None = None

    def condition(self, type_: str) -> Condition:
        for c in self.conditions:
            if c.type == type_:
                return c
        return Condition(type=type_, status="Unknown", reason="NotReported")

    @property
    def ready(self) -> bool:
        return self.condition("Ready").status == "True"

    @property
    def not_true(self) -> list[Condition]:
        return [c for c in self.conditions if c.status != "True"]

    def latest_percent(self, component: str) -> int | None:
        """Percent on the component's latest revision (Knative), None when not reported."""
        for row in self.traffic:
            if row.component == component and row.latest:
                return row.percent
        return None

    def failure(self) -> str:
        """Why the rollout has failed, or "" when nothing reports a terminal failure."""
        for c in self.conditions:
            if c.status == "False" and c.reason in FAILURE_REASONS:
                return f"{c.type}={c.status} ({c.reason}): {c.message}".rstrip(": ")
        for canary in self.canaries:
            if canary.failure:
                return f"canary {canary.name}: {canary.failure}"
        return ""


def snapshot(isvc: Obj) -> Snapshot:
    """Read an InferenceService object (as returned by the API) into a Snapshot."""
    meta = isvc.get("metadata", {})
    status = isvc.get("status") or {}
    mode = deployment_mode(isvc)
    conditions = [
        Condition(
            type=str(c.get("type", "")),
            status=str(c.get("status", "Unknown")),
            reason=str(c.get("reason", "")),
            message=str(c.get("message", "")),
        )
        for c in status.get("conditions") or []
    ]
    raw_components = status.get("components") or {}
    components = {
        name: ComponentStatus(
            latest_created=str(comp.get("latestCreatedRevision", "")),
            latest_ready=str(comp.get("latestReadyRevision", "")),
            latest_rolledout=str(comp.get("latestRolledoutRevision", "")),
            previous_rolledout=str(comp.get("previousRolledoutRevision", "")),
            url=str(comp.get("url", "")),
        )
        for name, comp in raw_components.items()
    }
    canaries = [_canary(c) for c in status.get("canaryStatuses") or []]
    if mode is Mode.KNATIVE:
        traffic = _knative_traffic(raw_components)
    else:
        traffic = _standard_traffic(isvc, canaries)
    return Snapshot(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        mode=mode,
        generation=int(meta.get("generation", 0)),
        observed_generation=status.get("observedGeneration"),
        url=str(status.get("url", "")),
        conditions=conditions,
        traffic=traffic,
        components=components,
        canaries=canaries,
        model=_recorded_model(meta, MODEL_ANNOTATION),
        previous_model=_recorded_model(meta, PREVIOUS_MODEL_ANNOTATION),
    )


def _knative_traffic(raw_components: Obj) -> list[TrafficRow]:
    rows = []
    for name in COMPONENTS:
        for t in (raw_components.get(name) or {}).get("traffic") or []:
            rows.append(
                TrafficRow(
                    component=name,
                    revision=str(t.get("revisionName", "")),
                    percent=t.get("percent"),
                    latest=bool(t.get("latestRevision", False)),
                    tag=str(t.get("tag", "")),
                )
            )
    return rows


def _standard_traffic(isvc: Obj, canaries: list[Canary]) -> list[TrafficRow]:
    """Standard mode reports no traffic list: the main predictor gets what the canaries leave."""
    name = isvc.get("metadata", {}).get("name", "")
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    main = f"{name}-{predictor['name']}-predictor" if predictor.get("name") else f"{name}-predictor"
    rows = [
        TrafficRow(
            component="predictor",
            revision=main,
            percent=100 - sum(c.percent for c in canaries),
            latest=not canaries,
            tag="main",
        )
    ]
    rows += [
        TrafficRow(
            component="predictor",
            revision=f"{name}-{c.name}-predictor",
            percent=c.percent,
            latest=True,
            tag="canary",
            ready=c.ready,
        )
        for c in canaries
    ]
    return rows


def _canary(raw: Obj) -> Canary:
    model = raw.get("modelStatus") or {}
    failure = ""
    if model.get("transitionStatus") in FAILURE_REASONS:
        info = model.get("lastFailureInfo") or {}
        failure = f"{model['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}"
    return Canary(
        name=str(raw.get("name", "")),
        ready=bool(raw.get("ready", False)),
        percent=int(raw.get("trafficPercent", 0)),
        failure=failure.strip(),
    )


# Written by the rollout CLI's --model (rollout.cli): JSON of registry.ResolvedModel.record().
MODEL_ANNOTATION = "image-classifier-rollout/model"
PREVIOUS_MODEL_ANNOTATION = "image-classifier-rollout/previous-model"


def _recorded_model(meta: Obj, key: str) -> dict[str, str] | None:
    raw = (meta.get("annotations") or {}).get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": f"annotation {key} is not JSON"}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None
