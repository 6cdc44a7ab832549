"""A model version that is wrong in a realistic way: the exported TorchScript with its classes
shifted by one (what a 1001-class checkpoint with a background slot does when it is served as
1000 classes). Same tensors, same speed, every top-1 wrong: the less accurate canary."""

from __future__ import annotations

from pathlib import Path

import torch


class OffByOne(torch.nn.Module):
    """The wrapped model's logits, rolled one class along."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.inner(pixels), 1, 1)

    @torch.jit.export
    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.inner.forward_normalized(x), 1, 1)  # type: ignore[operator]


def write(source: Path, target: Path) -> None:
    """Save the off-by-one version of the TorchScript at `source` to `target`."""
    inner = torch.jit.load(str(source), map_location="cpu")
    torch.jit.script(OffByOne(inner).eval()).save(str(target))
