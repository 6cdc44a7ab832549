"""Logits to top-k classes: pure functions, and the two response shapes (V1 and V2)."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in FP32, stable for large logits."""
    shifted = logits.astype(np.float32, copy=False) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable classes per row: (class ids INT64 [N, k], scores FP32 [N, k]),
    sorted by descending score."""
    probabilities = softmax(logits)
    k = min(k, probabilities.shape[1])
    candidates = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(probabilities, candidates, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    class_ids = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    return class_ids, np.take_along_axis(scores, order, axis=1)


def v1_predictions(
    class_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> list[list[dict[str, Any]]]:
    """The V1 body's "predictions": per image, a list of {class_id, label, score}."""
    return [
        [
            {"class_id": int(c), "label": str(labels[c]), "score": float(s)}
            for c, s in zip(ids_row, score_row, strict=True)
        ]
        for ids_row, score_row in zip(class_ids, scores, strict=True)
    ]
