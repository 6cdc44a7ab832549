"""Rendering a Snapshot for people (a plain-text table) and for programs (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rollout.state import Snapshot


def as_dict(snap: Snapshot) -> dict[str, Any]:
    """The `status --output json` document; field names are part of the CLI's interface."""
    return {
        "name": snap.name,
        "namespace": snap.namespace,
        "mode": snap.mode.value,
        "ready": snap.ready,
        "url": snap.url,
        "generation": snap.generation,
        "observedGeneration": snap.observed_generation,
        "traffic": [
            {
                "component": r.component,
                "revision": r.revision,
                "percent": r.percent,
                "latest": r.latest,
                "tag": r.tag,
                "ready": r.ready,
            }
            for r in snap.traffic
        ],
        "components": {
            name: {
                "latestCreatedRevision": c.latest_created,
                "latestReadyRevision": c.latest_ready,
                "latestRolledoutRevision": c.latest_rolledout,
                "previousRolledoutRevision": c.previous_rolledout,
                "url": c.url,
            }
            for name, c in snap.components.items()
        },
        "model": snap.model,
        "previousModel": snap.previous_model,
        "conditionsNotTrue": [
            {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
            for c in snap.not_true
        ],
    }


def as_json(snap: Snapshot) -> str:
    return json.dumps(as_dict(snap), indent=2)


def as_text(snap: Snapshot) -> str:
    """A header, the traffic table, and a table of the conditions that are not True."""
    ready = snap.condition("Ready")
    lines = [
        f"InferenceService {snap.namespace}/{snap.name} ({snap.mode.value} mode)",
        f"Ready:      {ready.status}" + (f" ({ready.reason})" if ready.reason else ""),
        f"URL:        {snap.url or '-'}",
        f"Generation: {snap.generation} (observed {snap.observed_generation})",
    ]
    for title, model in (("Model:", snap.model), ("Previous:", snap.previous_model)):
        if model:
            lines.append(f"{title:<12}{_model_line(model)}")
    lines.append("")
    lines += table(
        ["COMPONENT", "REVISION", "PERCENT", "TAG", "LATEST", "READY"],
        [
            [
                r.component,
                r.revision,
                "-" if r.percent is None else f"{r.percent}%",
                r.tag or "-",
                "yes" if r.latest else "",
                "-" if r.ready is None else str(r.ready),
            ]
            for r in snap.traffic
        ],
        empty="no traffic reported yet",
    )
    if snap.not_true:
        lines += ["", "Conditions not True:"]
        lines += table(
            ["TYPE", "STATUS", "REASON", "MESSAGE"],
            [[c.type, c.status, c.reason, c.message] for c in snap.not_true],
        )
    return "\n".join(lines)


def _model_line(model: dict[str, str]) -> str:
    """models:/NAME/VERSION (@alias) -> storage URI, from REGISTRY."""
    if "error" in model:
        return model["error"]
    alias = f" (@{model['alias']})" if model.get("alias") else ""
    return (
        f"models:/{model.get('name')}/{model.get('version')}{alias} -> "
        f"{model.get('storageUri')} from {model.get('registry')}"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "") -> list[str]:
    """Left-aligned columns two spaces apart; `empty` replaces the table when there are no rows."""
    if not rows:
        return [empty] if empty else []
    widths = [max(len(str(cell)) for cell in col) for col in zip(header, *rows, strict=False)]
    return [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
