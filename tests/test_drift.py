"""Drift signals: the scores' arithmetic, then the real thing on real photos.

The reference is 120 random crops and flips of real photos (harness/drift_images.py), written
by `python -m modelbuild drift-reference` through the real preprocessing and model. Then, through
a real transformer and predictor, windows of other crops of the same photos must stay under
every threshold, and windows of shifted inputs (darker, blurred, noisy, greyscale, thumbnails)
must cross the thresholds of the signals that shift measures.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import DRIFT_WINDOW, MODEL_NAME, Server, start_transformer

from harness.drift_images import SHIFTS, image_set, load_photos
from transformer.drift_metrics import DriftCollector
from vision.drift import (
    CLASS_SIGNAL,
    CONTINUOUS_SIGNALS,
    PROFILE_FILENAME,
    SIGNALS,
    THRESHOLDS,
    DriftMonitor,
    DriftProfileError,
    ReferenceProfile,
    js_distance,
    psi,
)

# --- arithmetic ---------------------------------------------------------------------------


def rows(rng: np.random.Generator, count: int, shift: float = 0.0) -> np.ndarray:
    return rng.normal(shift, 1.0, (count, len(CONTINUOUS_SIGNALS)))


def test_psi_and_js_are_zero_for_identical_and_grow_with_difference() -> None:
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(p, p) == 0 and js_distance(p, p) == 0
    q = np.array([0.7, 0.1, 0.1, 0.1])
    r = np.array([0.97, 0.01, 0.01, 0.01])
    assert 0 < psi(p, q) < psi(p, r)
    assert 0 < js_distance(p, q) < js_distance(p, r) <= 1


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    profile = ReferenceProfile.build(rows(rng, 200), rng.integers(0, 5, 200), "test")
    path = tmp_path / PROFILE_FILENAME
    profile.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded.count == 200 and loaded.source == "test"
    for name in CONTINUOUS_SIGNALS:
        np.testing.assert_allclose(
            loaded.continuous[name].edges, profile.continuous[name].edges, atol=1e-5
        )
    assert sorted(loaded.classes.classes.tolist()) == [0, 1, 2, 3, 4]


def test_a_broken_profile_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / PROFILE_FILENAME
    path.write_text('{"version": 1, "signals": {}}')
    with pytest.raises(DriftProfileError, match="not a drift reference profile"):
        ReferenceProfile.load(path)
    with pytest.raises(DriftProfileError, match="at least 10 images"):
        ReferenceProfile.build(np.zeros((3, len(CONTINUOUS_SIGNALS))), np.zeros(3), "x")


def test_monitor_waits_for_min_count_then_scores_the_last_window() -> None:
    rng = np.random.default_rng(1)
    profile = ReferenceProfile.build(rows(rng, 500), rng.integers(0, 5, 500), "test")
    monitor = DriftMonitor(profile, window=100, min_count=50)
    monitor.record(rows(rng, 49), rng.integers(0, 5, 49))
    report = monitor.report()
    assert not report["ready"] and report["signals"]["brightness"]["score"] is None
    time.sleep(1.01)  # scores are recomputed at most once a second
    monitor.record(rows(rng, 100), rng.integers(0, 5, 100))
    time.sleep(1.01)
    report = monitor.report()
    assert report["ready"] and report["window"]["count"] == 100 and not report["drifted"]
    # A whole window of shifted values and unseen classes pushes every signal over.
    monitor.record(rows(rng, 100, shift=3.0), np.full(100, 999))
    time.sleep(1.01)
    assert monitor.report()["drifted"] == sorted(SIGNALS)


def test_monitor_can_learn_its_reference_from_the_first_images() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(None, window=50, min_count=20, learn_first=30)
    assert monitor.enabled and monitor.report()["learning"] == {"images": 0, "of": 30}
    monitor.record(rows(rng, 40), rng.integers(0, 3, 40))
    assert monitor.profile is not None and monitor.profile.count == 30
    with pytest.raises(DriftProfileError):
        DriftMonitor(None, window=50, min_count=20, learn_first=5)


def test_collector_exports_scores_and_thresholds() -> None:
    rng = np.random.default_rng(3)
    profile = ReferenceProfile.build(rows(rng, 100), rng.integers(0, 5, 100), "test")
    assert list(DriftCollector(None).collect()) == []  # no monitor: nothing to export
    monitor = DriftMonitor(profile, window=20, min_count=10)
    monitor.record(rows(rng, 20), rng.integers(0, 5, 20))
    collector = DriftCollector(monitor)
    families = {f.name: f for f in collector.collect()}
    scores = {s.labels["signal"]: s.value for s in families["transformer_drift_score"].samples}
    assert set(scores) == set(SIGNALS) and all(not math.isnan(v) for v in scores.values())
    thresholds = families["transformer_drift_threshold"].samples
    # The thresholds README.md documents (its Drift signals table), not the code's constants.
    documented = {name: 0.25 for name in SIGNALS if name != "class"} | {"class": 0.35}
    assert {s.labels["signal"]: s.value for s in thresholds} == documented


# --- real photos through the real servers --------------------------------------------------

# Which signals each shift must push over their threshold (others may move too).
MUST_CROSS = {
    "darker": {"brightness"},
    "blurred": {"contrast", "encoded_size"},
    "noisy": {"encoded_size"},
    "greyscale": {"saturation"},
    "thumbnail": {"area", "encoded_size"},
}
PER_REQUEST = 8


def send_window(server: Server, images: list[bytes]) -> None:
    """Classify `images` through the transformer's V1 API, 8 per request, 4 requests at once."""

    def post(chunk: list[bytes]) -> int:
        instances = [{"image": {"b64": base64.b64encode(i).decode()}} for i in chunk]
        return httpx.post(
            f"{server.url}/v1/models/{MODEL_NAME}:predict",
            json={"instances": instances},
            timeout=60,
        ).status_code

    chunks = [images[i : i + PER_REQUEST] for i in range(0, len(images), PER_REQUEST)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert set(pool.map(post, chunks)) == {200}


def drift_report(server: Server) -> dict[str, Any]:
    time.sleep(1.05)  # the report is cached for a second
    response = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/drift", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_drift_reference_written_beside_config(drift_repository: Path) -> None:
    document = json.loads((drift_repository / MODEL_NAME / PROFILE_FILENAME).read_text())
    assert document["count"] == 120 and set(document["signals"]) == set(SIGNALS)


def test_in_distribution_stays_under_and_shifts_cross_the_thresholds(
    drift_transformer: Server,
) -> None:
    photos = load_photos()
    report = drift_report(drift_transformer)
    assert report["enabled"] and report["reference"]["count"] == 120
    assert not report["ready"]  # an empty window reports no scores
    phases: dict[str, dict[str, Any]] = {}
    send_window(drift_transformer, image_set(photos, DRIFT_WINDOW, seed=2))
    phases["in-distribution"] = drift_report(drift_transformer)
    for seed, (name, shift) in enumerate(SHIFTS.items(), start=10):
        send_window(drift_transformer, image_set(photos, DRIFT_WINDOW, seed=seed, shift=shift))
        phases[name] = drift_report(drift_transformer)
    scores = {
        name: {signal: s["score"] for signal, s in report["signals"].items()}
        for name, report in phases.items()
    }
    out = os.environ.get("DRIFT_SCORES_OUT")  # scripts/plot_drift.py draws the README's plot
    if out:
        Path(out).write_text(json.dumps({"thresholds": THRESHOLDS, "phases": scores}, indent=1))
    report = phases["in-distribution"]
    assert report["ready"] and report["window"]["count"] == DRIFT_WINDOW
    assert report["drifted"] == [], scores["in-distribution"]
    for name, signals in MUST_CROSS.items():
        assert signals <= set(phases[name]["drifted"]), (name, scores[name])
    # The model notices too: blurred and tiny images lower its confidence and change its
    # classes, even where the input statistics alone would not tell.
    assert {"confidence", CLASS_SIGNAL} <= set(phases["blurred"]["drifted"]), scores["blurred"]
    samples = httpx.get(f"{drift_transformer.url}/metrics", timeout=10).text
    assert 'transformer_drift_score{signal="saturation"}' in samples
    other = httpx.get(f"{drift_transformer.url}/v2/models/no-such-model/drift", timeout=10)
    assert other.status_code == 404, other.text


LEARN_IMAGES = 40  # the learning test's --drift_reference_images, window and minimum count


def test_a_running_transformer_learns_its_reference_from_the_first_images_it_serves(
    predictor: Server, model_repository: Path, tmp_path: Path
) -> None:
    """--drift_reference_images: no profile in the repository, so the transformer says it will
    learn one, learns it from the first N images served, and then scores against it."""
    assert not (model_repository / MODEL_NAME / PROFILE_FILENAME).exists()
    learn = str(LEARN_IMAGES)
    log = tmp_path / "transformer-learning.log"
    server = start_transformer(
        predictor,
        model_repository,
        log,
        *("--drift_reference_images", learn, "--drift_window", learn, "--drift_min_count", learn),
    )
    try:
        photos = load_photos()
        report = drift_report(server)
        assert report["enabled"] and report["reference"] is None, report
        assert report["learning"] == {"images": 0, "of": LEARN_IMAGES}, report
        assert f"learning it from the first {LEARN_IMAGES} images served" in log.read_text()
        send_window(server, image_set(photos, LEARN_IMAGES // 2, seed=1))
        halfway = drift_report(server)
        assert halfway["learning"] == {"images": LEARN_IMAGES // 2, "of": LEARN_IMAGES}, halfway
        assert halfway["reference"] is None and not halfway["ready"]
        send_window(server, image_set(photos, LEARN_IMAGES // 2, seed=2))
        learned = drift_report(server)
        assert learned["learning"] is None, learned
        assert learned["reference"]["count"] == LEARN_IMAGES, learned
        assert "drift reference learned" in log.read_text()
        # The learned reference is the one scored against: greyscale photos, next to the
        # colour ones it learned from, cross the saturation threshold.
        greyscale = image_set(photos, LEARN_IMAGES, seed=3, shift=SHIFTS["greyscale"])
        send_window(server, greyscale)
        shifted = drift_report(server)
        assert shifted["ready"] and "saturation" in shifted["drifted"], shifted["signals"]
    finally:
        server.stop()
