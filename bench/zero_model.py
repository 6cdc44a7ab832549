"""A zero-cost model with the real tensor contract, for measuring the request path alone.

    python -m bench.zero_model --source model_repository --target /tmp/zero [--model_name NAME]

Copies the real model's `config.pbtxt`, `labels.txt` and `preprocess.json` (so names, dtypes,
dims, batch limit and labels are the served model's) and writes a TorchScript module in place
of the network: `forward` takes UINT8 [N, H, W, 3] pixels, `forward_normalized` FP32
[N, 3, H, W], both answer FP32 [N, classes] logits that depend on one input value (top-k stays
meaningful) and cost a few microseconds. Served by the same predictor, it leaves nothing but
the predictor's own request path to measure, as a GPU fast enough to hide the model would.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from common.cli import DEFAULT_MODEL_NAME
from common.modelrepo import CONFIG_FILE, MODEL_FILE, resolve
from vision.preprocessing import PREPROCESS_FILE


class ZeroCostClassifier(nn.Module):
    """Logits [N, classes] = first pixel value x a fixed ramp: one read, one small write."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.ramp: torch.Tensor
        self.register_buffer("ramp", torch.linspace(0.0, 1.0, classes).view(1, classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, 0, 0, 0:1].to(torch.float32) * self.ramp

    @torch.jit.export
    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0:1].to(torch.float32) * self.ramp


def export_zero_cost(source: Path, target: Path, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """Write `target/<model_name>` from the real model's contract; returns the model directory.

    Raises ModelRepositoryError when `source` holds no valid model of that name.
    """
    version = resolve(source, model_name)
    classes = version.config.outputs[0].dims[-1]
    model_dir = target / model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, PREPROCESS_FILE, version.config.label_filename):
        if name:
            shutil.copyfile(version.model_dir / name, model_dir / name)
    module = torch.jit.script(ZeroCostClassifier(classes).eval())
    module.save(str(model_dir / "1" / MODEL_FILE))
    return model_dir


def main(argv: list[str] | None = None) -> int:
    """Command line: export the zero-cost model and print where it went."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--source", type=Path, required=True, help="The real model repository.")
    p.add_argument("--target", type=Path, required=True, help="Repository to write.")
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    args = p.parse_args(argv)
    print(export_zero_cost(args.source, args.target, args.model_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
