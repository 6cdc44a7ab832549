"""Rendering a kustomize overlay into the documents `apply` sends (`kubectl kustomize DIR`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from rollout.errors import Rejected, Unsupported, UsageError
from rollout.kube import APPLIABLE

KUSTOMIZE_TIMEOUT_S = 60


def render(overlay: Path) -> list[dict[str, Any]]:
    """Render `overlay` into its documents; raises UsageError or Rejected with kubectl's words.

    Only InferenceService and ServingRuntime documents are accepted:
    anything else is refused before the cluster is touched, so a partial apply cannot happen.
    """
    if (
        not (overlay / "kustomization.yaml").is_file()
        and not (overlay / "kustomization.yml").is_file()
    ):
        raise UsageError(f"{overlay} is not a kustomize directory: no kustomization.yaml in it")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise UsageError("kubectl not found on PATH: it renders the overlay (`kubectl kustomize`)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=KUSTOMIZE_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise Rejected(
            f"kubectl kustomize {overlay} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    if not docs:
        raise UsageError(f"kubectl kustomize {overlay} rendered no documents")
    unsupported = [
        f"{d.get('apiVersion')}/{d.get('kind')} {d.get('metadata', {}).get('name')}"
        for d in docs
        if (d.get("apiVersion"), d.get("kind")) not in APPLIABLE
    ]
    if unsupported:
        raise Unsupported(
            f"apply handles only {sorted(f'{v}/{k}' for v, k in APPLIABLE)}; {overlay} also renders"
            f" {unsupported}: apply those with `kubectl apply -k`"
        )
    return docs
