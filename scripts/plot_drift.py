"""Draw the drift scores of the shifted-input test as the README's picture.

    DRIFT_SCORES_OUT=/tmp/drift.json .venv/bin/python -m pytest tests/test_drift.py
    .venv/bin/python scripts/plot_drift.py /tmp/drift.json docs/drift-scores.png

One row per window the test sent, one column per signal; the colour is the score relative to
its threshold (red above it), the number the score itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm


def plot(scores_file: Path, out: Path) -> None:
    """Write the heat map of `scores_file` (what tests/test_drift.py writes) to `out`."""
    document = json.loads(scores_file.read_text())
    thresholds: dict[str, float] = document["thresholds"]
    phases: dict[str, dict[str, float]] = document["phases"]
    signals = list(thresholds)
    ratio = np.array([[phases[p][s] / thresholds[s] for s in signals] for p in phases])
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(phases) + 1.8))
    image = ax.imshow(
        np.clip(ratio, 0.02, 20), cmap="RdYlGn_r", norm=LogNorm(vmin=0.05, vmax=20), aspect="auto"
    )
    for row, phase in enumerate(phases):
        for column, signal in enumerate(signals):
            score = phases[phase][signal]
            crossed = score > thresholds[signal]
            ax.text(
                column,
                row,
                f"{score:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                fontweight="bold" if crossed else "normal",
            )
    ax.set_xticks(range(len(signals)))
    ax.set_xticklabels([f"{s}\n(> {thresholds[s]:g})" for s in signals], fontsize=8, rotation=0)
    ax.set_yticks(range(len(phases)))
    ax.set_yticklabels(list(phases))
    ax.set_title(
        "Drift scores of 80-image windows against a reference of 120 real photos\n"
        "(PSI; Jensen-Shannon distance for class; bold = above the threshold)",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, label="score / threshold")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
