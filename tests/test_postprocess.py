"""Top-k postprocessing as pure functions."""

from __future__ import annotations

import numpy as np

from vision.postprocess import softmax, top_k, v1_predictions


def test_softmax_is_stable_and_normalised() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]], atol=1e-6)


def test_top_k_sorted_by_score_per_row() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 1000)).astype(np.float32)
    ids, scores = top_k(logits, 5)
    full = softmax(logits)
    for row in range(4):
        expected = np.argsort(-full[row])[:5]
        assert ids[row].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[row], full[row][expected], rtol=1e-6)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_k_larger_than_classes_is_capped() -> None:
    ids, scores = top_k(np.array([[0.0, 1.0, 2.0]], dtype=np.float32), 10)
    assert ids.tolist() == [[2, 1, 0]]
    assert scores.sum() == np.float32(1.0) or abs(float(scores.sum()) - 1) < 1e-6


def test_v1_shape() -> None:
    labels = np.array(["a", "b", "c"], dtype=np.object_)
    predictions = v1_predictions(np.array([[2, 0]]), np.array([[0.7, 0.2]], np.float32), labels)
    assert predictions == [
        [
            {"class_id": 2, "label": "c", "score": predictions[0][0]["score"]},
            {"class_id": 0, "label": "a", "score": predictions[0][1]["score"]},
        ]
    ]
    assert abs(predictions[0][0]["score"] - 0.7) < 1e-6
