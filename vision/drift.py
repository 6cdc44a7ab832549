"""Data-drift signals: the live traffic of a sliding window compared with a reference profile.

Per image the transformer records eight values (`SIGNALS`): what came in (mean brightness,
contrast, colour saturation, area, aspect ratio, encoded size) and what the model made of it
(top-1 confidence, top-1 class). Recording writes one row into ring buffers (microseconds);
the scores are computed from the whole window at most once a second, when someone asks
(a Prometheus scrape of `transformer_drift_score`, or `GET /v2/models/<name>/drift`; the
transformer exports them, see `transformer/drift_metrics.py`).

Scores, each against the reference profile (`drift_reference.json` beside `config.pbtxt`):
- continuous signals: population stability index (PSI) over the reference's quintile bins,
  threshold 0.25 (the usual "significant shift" line; under 0.1 is "no shift");
- the predicted class: Jensen-Shannon distance (base 2, 0..1) over the reference's frequent
  classes plus "other", threshold `JS_THRESHOLD`.

Only numpy: no scipy or drift framework in the transformer image.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PROFILE_FILENAME = "drift_reference.json"
PROFILE_VERSION = 1
# Per-image input statistics, in the column order `input_statistics` returns them.
INPUT_SIGNALS = ("brightness", "contrast", "saturation", "area", "aspect_ratio", "encoded_size")
CONTINUOUS_SIGNALS = (*INPUT_SIGNALS, "confidence")
CLASS_SIGNAL = "class"
SIGNALS = (*CONTINUOUS_SIGNALS, CLASS_SIGNAL)
PSI_THRESHOLD = 0.25
JS_THRESHOLD = 0.35
# Quintile edges, 5 bins: with 10 bins PSI's own sampling noise, about (bins - 1) x
# (1/window + 1/reference), eats too much of the 0.25 threshold for windows of a few hundred.
QUANTILES = np.linspace(0.2, 0.8, 4)
CLASS_MIN_SHARE = 0.02  # classes below this share of the reference pool into "other"
MAX_CLASSES = 30
SMOOTHING = 0.5  # added to every bin count, so an empty bin has a finite log
SCORE_INTERVAL_S = 1.0
MIN_REFERENCE_IMAGES = 10
# Luminance weights (ITU-R BT.601, as Pillow's convert("L")); stats on every 4th pixel.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_STRIDE = 4


class DriftProfileError(ValueError):
    """A reference profile that cannot be read or does not fit this transformer."""


def input_statistics(
    pixels: np.ndarray, width: int, height: int, encoded_bytes: int
) -> tuple[float, ...]:
    """The input signals of one image: brightness and contrast (mean and std of luminance,
    0..255), saturation (mean max-min over R, G, B), log10 area in source pixels, aspect ratio
    (width / height of the upright image) and log10 encoded bytes. `pixels` is the model's
    UINT8 [H, W, 3] crop."""
    sample = pixels[::_STRIDE, ::_STRIDE].astype(np.float32)
    luma = sample @ _LUMA
    chroma = sample.max(axis=2) - sample.min(axis=2)
    return (
        float(luma.mean()),
        float(luma.std()),
        float(chroma.mean()),
        math.log10(max(width * height, 1)),
        width / max(height, 1),
        math.log10(max(encoded_bytes, 1)),
    )


def _proportions(counts: np.ndarray) -> np.ndarray:
    smoothed = counts.astype(np.float64) + SMOOTHING
    return smoothed / smoothed.sum()


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two proportion vectors over the same bins."""
    return float(np.sum((current - reference) * np.log(current / reference)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, 0..1) between two proportion vectors."""
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(math.sqrt(max(divergence, 0.0)))


@dataclass(frozen=True)
class ContinuousReference:
    """A continuous signal's reference: inner bin edges and the reference share of each bin."""

    edges: np.ndarray
    proportions: np.ndarray

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of `values` fall in each bin."""
        index = np.searchsorted(self.edges, values, side="right")
        return np.bincount(index, minlength=len(self.edges) + 1)


@dataclass(frozen=True)
class ClassReference:
    """The predicted-class reference: frequent classes, and their shares plus "other" last."""

    classes: np.ndarray
    proportions: np.ndarray

    def bin_counts(self, class_ids: np.ndarray) -> np.ndarray:
        """How many of `class_ids` are each frequent class, then how many are any other."""
        lookup = {int(c): i for i, c in enumerate(self.classes)}
        other = len(self.classes)
        index = np.fromiter((lookup.get(int(c), other) for c in class_ids), np.int64)
        return np.bincount(index, minlength=other + 1)


@dataclass(frozen=True)
class ReferenceProfile:
    """What normal traffic looks like, from reference images or the first requests served."""

    continuous: dict[str, ContinuousReference]
    classes: ClassReference
    count: int
    source: str

    @classmethod
    def build(cls, values: np.ndarray, class_ids: np.ndarray, source: str) -> ReferenceProfile:
        """A profile from per-image rows of CONTINUOUS_SIGNALS and top-1 class ids; raises
        DriftProfileError for fewer than 10 images."""
        if len(values) < MIN_REFERENCE_IMAGES or len(values) != len(class_ids):
            raise DriftProfileError(
                f"a reference needs at least {MIN_REFERENCE_IMAGES} images with one class each, "
                f"got {len(values)} "
                f"rows and {len(class_ids)} classes"
            )
        continuous = {}
        for column, name in enumerate(CONTINUOUS_SIGNALS):
            edges = np.unique(np.quantile(values[:, column], QUANTILES))
            reference = ContinuousReference(edges, np.zeros(len(edges) + 1))
            continuous[name] = ContinuousReference(
                edges, _proportions(reference.bin_counts(values[:, column]))
            )
        ids, counts = np.unique(class_ids, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:MAX_CLASSES]
        frequent = ids[order][counts[order] >= CLASS_MIN_SHARE * len(class_ids)]
        classes = ClassReference(frequent, np.zeros(len(frequent) + 1))
        classes = ClassReference(frequent, _proportions(classes.bin_counts(class_ids)))
        return cls(continuous, classes, len(values), source)

    def to_json(self) -> dict[str, Any]:
        """The profile as the JSON document `drift_reference.json` holds."""
        return {
            "version": PROFILE_VERSION,
            "source": self.source,
            "count": self.count,
            "signals": {
                **{
                    name: {
                        "edges": ref.edges.round(6).tolist(),
                        "proportions": ref.proportions.round(6).tolist(),
                    }
                    for name, ref in self.continuous.items()
                },
                CLASS_SIGNAL: {
                    "classes": self.classes.classes.tolist(),
                    "proportions": self.classes.proportions.round(6).tolist(),
                },
            },
        }

    @classmethod
    def from_json(cls, document: dict[str, Any], where: str) -> ReferenceProfile:
        """Read a profile document; raises DriftProfileError saying what is wrong."""
        try:
            if document["version"] != PROFILE_VERSION:
                raise DriftProfileError(
                    f"{where}: profile version {document['version']}, expected {PROFILE_VERSION}"
                )
            signals = document["signals"]
            continuous = {
                name: ContinuousReference(
                    np.array(signals[name]["edges"], dtype=np.float64),
                    np.array(signals[name]["proportions"], dtype=np.float64),
                )
                for name in CONTINUOUS_SIGNALS
            }
            classes = ClassReference(
                np.array(signals[CLASS_SIGNAL]["classes"], dtype=np.int64),
                np.array(signals[CLASS_SIGNAL]["proportions"], dtype=np.float64),
            )
            count, source = int(document["count"]), str(document["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftProfileError(f"{where}: not a drift reference profile: {exc!r}") from exc
        for name, ref in continuous.items():
            if len(ref.proportions) != len(ref.edges) + 1:
                raise DriftProfileError(
                    f"{where}: {name} has {len(ref.edges)} edges and "
                    f"{len(ref.proportions)} proportions, expected edges + 1"
                )
        if len(classes.proportions) != len(classes.classes) + 1:
            raise DriftProfileError(f"{where}: class proportions must be classes + 1 (other)")
        return cls(continuous, classes, count, source)

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        """Read `drift_reference.json`; raises DriftProfileError."""
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DriftProfileError(f"{path}: cannot read the drift reference: {exc}") from exc
        return cls.from_json(document, str(path))

    def save(self, path: Path) -> None:
        """Write the profile as JSON."""
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


THRESHOLDS = {**{name: PSI_THRESHOLD for name in CONTINUOUS_SIGNALS}, CLASS_SIGNAL: JS_THRESHOLD}
METHODS = {**{name: "psi" for name in CONTINUOUS_SIGNALS}, CLASS_SIGNAL: "jensen_shannon"}


class DriftMonitor:
    """A sliding window of the last `window` images and its scores against a reference.

    With no profile yet, and `learn_first` > 0 (at least MIN_REFERENCE_IMAGES), the first
    `learn_first` images recorded become the reference. Thread-safe: the decode threads, the
    event loop and the scrape may call it.
    """

    def __init__(
        self,
        profile: ReferenceProfile | None,
        window: int,
        min_count: int,
        learn_first: int = 0,
    ) -> None:
        if 0 < learn_first < MIN_REFERENCE_IMAGES:
            raise DriftProfileError(
                f"learning a reference from {learn_first} images; it needs at least "
                f"{MIN_REFERENCE_IMAGES}"
            )
        self.profile = profile
        self.window = window
        self.min_count = min_count
        self.learn_first = learn_first
        self._values = np.zeros((window, len(CONTINUOUS_SIGNALS)), dtype=np.float64)
        self._classes = np.zeros(window, dtype=np.int64)
        self._next = 0
        self._filled = 0
        self._seen = 0
        self._learning: list[tuple[np.ndarray, np.ndarray]] = []
        self._learned = 0
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._cached_at = -math.inf

    @property
    def enabled(self) -> bool:
        """Whether there is, or will be, a reference to compare with."""
        return self.profile is not None or self.learn_first > 0

    def record(self, values: np.ndarray, class_ids: np.ndarray) -> None:
        """Add images to the window: rows of CONTINUOUS_SIGNALS and their top-1 class ids."""
        if self.profile is None:
            if self.learn_first > 0:
                self._learn(values, class_ids)
            return
        with self._lock:
            for row, class_id in zip(values, class_ids, strict=True):
                self._values[self._next] = row
                self._classes[self._next] = class_id
                self._next = (self._next + 1) % self.window
            self._filled = min(self._filled + len(values), self.window)
            self._seen += len(values)

    def _learn(self, values: np.ndarray, class_ids: np.ndarray) -> None:
        with self._lock:
            if self.profile is not None:
                return
            self._learning.append((values, class_ids))
            self._learned += len(values)
            if self._learned < self.learn_first:
                return
            rows = np.concatenate([v for v, _ in self._learning])[: self.learn_first]
            ids = np.concatenate([c for _, c in self._learning])[: self.learn_first]
            self._learning = []
            self.profile = ReferenceProfile.build(rows, ids, f"the first {len(rows)} images served")
            logger.info("drift reference learned from %s", self.profile.source)

    def report(self) -> dict[str, Any]:
        """The window's scores, thresholds and counts (recomputed at most once a second)."""
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached_at < SCORE_INTERVAL_S:
                return self._cached
            values = self._values[: self._filled].copy()
            classes = self._classes[: self._filled].copy()
            seen = self._seen
        profile = self.profile
        ready = profile is not None and len(values) >= self.min_count
        signals: dict[str, Any] = {}
        for column, name in enumerate(CONTINUOUS_SIGNALS):
            score = math.nan
            if ready and profile is not None:
                ref = profile.continuous[name]
                score = psi(ref.proportions, _proportions(ref.bin_counts(values[:, column])))
            signals[name] = self._signal(name, score)
        score = math.nan
        if ready and profile is not None:
            ref_classes = profile.classes
            score = js_distance(
                ref_classes.proportions, _proportions(ref_classes.bin_counts(classes))
            )
        signals[CLASS_SIGNAL] = self._signal(CLASS_SIGNAL, score)
        report = {
            "reference": None
            if profile is None
            else {"source": profile.source, "count": profile.count},
            "learning": None
            if profile is not None or self.learn_first == 0
            else {"images": self._learned, "of": self.learn_first},
            "window": {"size": self.window, "min_count": self.min_count, "count": len(values)},
            "images_seen": seen,
            "ready": ready,
            "drifted": sorted(name for name, s in signals.items() if s["drifted"]),
            "signals": signals,
        }
        with self._lock:
            self._cached, self._cached_at = report, now
        return report

    @staticmethod
    def _signal(name: str, score: float) -> dict[str, Any]:
        return {
            "method": METHODS[name],
            "score": None if math.isnan(score) else round(score, 6),
            "threshold": THRESHOLDS[name],
            "drifted": not math.isnan(score) and score > THRESHOLDS[name],
        }
