"""How far a quantised model's answers are from the FP32 model's: pure functions over logits.

Measured on the same preprocessed images: top-1 agreement overall and where the FP32 model is
confident (its top-1 probability at least a threshold), how many disagreements are FP32's
second choice, and how far the probability of FP32's top-1 class moves. With labels, accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vision.postprocess import softmax

CONFIDENT_PROBABILITY = 0.5


@dataclass(frozen=True)
class Fidelity:
    """The candidate's agreement with the reference on one image set."""

    images: int
    agreement: float  # top-1 equal, fraction of all images
    confident_threshold: float
    confident_images: int  # images where the reference's top-1 probability >= threshold
    confident_agreement: float | None  # None when no image is confident
    second_choice: int  # disagreements where the candidate picked the reference's second class
    mean_probability_shift: float  # mean |p_candidate - p_reference| of the reference's top-1
    max_probability_shift: float

    def gated_agreement(self) -> float:
        """The figure the gate checks: confident agreement, or overall when none is confident."""
        return self.agreement if self.confident_agreement is None else self.confident_agreement

    def lines(self, label: str = "INT8 vs FP32") -> list[str]:
        """A human-readable report."""
        disagreements = round(self.images * (1 - self.agreement))
        confident = (
            "n/a (no image)"
            if self.confident_agreement is None
            else f"{self.confident_agreement:.1%} of {self.confident_images}"
        )
        return [
            f"{label} on {self.images} held-out images:",
            f"  top-1 agreement                 {self.agreement:.1%}",
            f"  where FP32 top-1 p >= {self.confident_threshold:.2f}      {confident}",
            f"  disagreements on FP32's 2nd     {self.second_choice} of {disagreements}",
            f"  mean |shift| of FP32 top-1 p    {self.mean_probability_shift:.4f}"
            f" (max {self.max_probability_shift:.3f})",
        ]


def compare(
    reference: np.ndarray, candidate: np.ndarray, confident: float = CONFIDENT_PROBABILITY
) -> Fidelity:
    """Compare two models' logits [N, classes] on the same images; raises ValueError on
    mismatched or empty input."""
    if reference.shape != candidate.shape or reference.ndim != 2 or not len(reference):
        raise ValueError(
            f"logits of shapes {reference.shape} and {candidate.shape}, expected equal [N, classes]"
        )
    p_ref, p_cand = softmax(reference), softmax(candidate)
    rows = np.arange(len(reference))
    ref_order = np.argsort(-p_ref, axis=1)
    ref_top, ref_second = ref_order[:, 0], ref_order[:, 1]
    cand_top = p_cand.argmax(axis=1)
    agree = cand_top == ref_top
    sure = p_ref[rows, ref_top] >= confident
    shift = np.abs(p_cand[rows, ref_top] - p_ref[rows, ref_top])
    return Fidelity(
        images=len(reference),
        agreement=float(agree.mean()),
        confident_threshold=confident,
        confident_images=int(sure.sum()),
        confident_agreement=float(agree[sure].mean()) if sure.any() else None,
        second_choice=int((~agree & (cand_top == ref_second)).sum()),
        mean_probability_shift=float(shift.mean()),
        max_probability_shift=float(shift.max()),
    )


def accuracy(logits: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of logits [N, classes] against class ids [N]."""
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return float((top5[:, 0] == truth).mean()), float((top5 == truth[:, None]).any(axis=1).mean())
