"""INT8 export: static quantisation of the FP32 ONNX model, gated by its fidelity to FP32.

The settings are the ones that measured well for EfficientNet-Lite0 here (the issue notes
have the numbers): QDQ format, per-channel Int8 weights (per-tensor leaves batch-norm-folded
depthwise channels near zero: 40% top-1 agreement), UInt8 activations (Int8 activations leave
the residual adds in float and give almost no speedup), MinMax calibration after
`quant_pre_process` and no excluded nodes. `reduce_range` (7-bit weights) cost 20 points of
agreement on a CPU with VNNI; on x86 CPUs without VNNI (AVX2 only) onnxruntime's UInt8 x Int8
kernels sum pairs of products in 16 bits, which saturate with 8-bit weights (measured here:
agreement where FP32 is confident 90% without, 96% with), so `auto` turns it on exactly there.
Export on the kind of CPU that will serve the model: the gate measures this machine's kernels.

The quantised model is compared with the FP32 one on a held-out set (`fidelity.py`) and written
only when its top-1 agreement where FP32 is confident reaches the gate, unless forced. With a
labelled directory the report adds both models' accuracy.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from common.cpus import available_cpus
from runtime.onnx_engine import OnnxEngine
from runtime.tensors import Contract, run_one

from . import fidelity, imagesets
from .export import INPUT, OUTPUT, PREPROCESSING, imagenet_labels
from .export_onnx import ONNX_FILE, export_fp32, write_onnx_model

DEFAULT_GATE = 0.95  # top-1 agreement with FP32 where FP32's top-1 probability >= 0.5
CALIBRATION_BATCH = 8
EVALUATION_BATCH = 16


def saturating_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on x86 CPUs without VNNI, where UInt8 x Int8 kernels saturate 16-bit sums."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in cpuinfo.open() if line.startswith("flags")),
            [],
        )
    except OSError:
        return True  # unknown x86: assume the older kernels
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def resolve_reduce_range(choice: str) -> bool:
    """The --reduce_range flag: auto (on where kernels saturate), on or off."""
    return saturating_cpu() if choice == "auto" else choice == "on"


class BelowGate(RuntimeError):
    """The INT8 model's fidelity is below the gate (nothing was written)."""


@dataclass(frozen=True)
class Report:
    """What the INT8 export measured."""

    calibration_images: int
    reduce_range: bool
    fidelity: fidelity.Fidelity
    accuracy: dict[str, tuple[float, float]] | None  # engine -> (top-1, top-5)
    labelled_images: int
    fp32_bytes: int
    int8_bytes: int

    def lines(self) -> list[str]:
        """The printed report."""
        lines = [
            f"calibrated on {self.calibration_images} images, "
            f"{'7' if self.reduce_range else '8'}-bit weights; "
            f"model {self.int8_bytes / 1e6:.1f} MB (FP32 {self.fp32_bytes / 1e6:.1f} MB)",
            *self.fidelity.lines(),
        ]
        if self.accuracy is not None:
            lines.append(f"accuracy on {self.labelled_images} labelled images (top-1 / top-5):")
            lines += [f"  {k:5} {a1:.1%} / {a5:.1%}" for k, (a1, a5) in self.accuracy.items()]
        return lines


class PixelReader(CalibrationDataReader):
    """Feeds calibration pixels to onnxruntime's calibrator in batches."""

    def __init__(self, pixels: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH) -> None:
        self._batches = iter(
            [{input_name: pixels[i : i + batch]} for i in range(0, len(pixels), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when done."""
        return next(self._batches, None)


def quantize_int8(
    fp32: Path, target: Path, calibration: np.ndarray, reduce_range: bool = False
) -> None:
    """Write the INT8 (QDQ) version of `fp32` to `target`, calibrated on UINT8 pixels."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            PixelReader(calibration, INPUT.name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The model's logits for UINT8 pixels [N, H, W, 3], in batches."""
    contract = Contract((INPUT,), (OUTPUT,), EVALUATION_BATCH)
    runner = OnnxEngine(path, contract, available_cpus())
    return np.concatenate(
        [
            run_one(runner, pixels[i : i + EVALUATION_BATCH])
            for i in range(0, len(pixels), EVALUATION_BATCH)
        ]
    )


def quantize_checked(
    fp32: Path,
    target: Path,
    calibration: imagesets.ImageSet,
    holdout: imagesets.ImageSet,
    labelled: tuple[imagesets.ImageSet, np.ndarray] | None = None,
    gate: float = DEFAULT_GATE,
    confident: float = fidelity.CONFIDENT_PROBABILITY,
    force: bool = False,
    reduce_range: bool = False,
) -> Report:
    """Quantise `fp32`, measure it, and move it to `target` if it passes the gate (or `force`).

    Raises BelowGate (carrying the report in its message) when it does not; `target` is then
    left as it was.
    """
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "int8.onnx"
        quantize_int8(fp32, candidate, calibration.pixels, reduce_range)
        measured = fidelity.compare(
            logits(fp32, holdout.pixels), logits(candidate, holdout.pixels), confident
        )
        accuracy = None
        if labelled is not None:
            images, truth = labelled
            accuracy = {
                "FP32": fidelity.accuracy(logits(fp32, images.pixels), truth),
                "INT8": fidelity.accuracy(logits(candidate, images.pixels), truth),
            }
        report = Report(
            calibration_images=len(calibration.pixels),
            reduce_range=reduce_range,
            fidelity=measured,
            accuracy=accuracy,
            labelled_images=0 if labelled is None else len(labelled[1]),
            fp32_bytes=fp32.stat().st_size,
            int8_bytes=candidate.stat().st_size,
        )
        if measured.gated_agreement() < gate and not force:
            raise BelowGate(
                "\n".join(report.lines())
                + f"\nINT8 agreement {measured.gated_agreement():.1%} is below the gate "
                f"{gate:.1%}: not written (--force_int8 writes it anyway)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(candidate.read_bytes())
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The INT8 flags of `python -m modelbuild onnx`."""
    group = parser.add_argument_group("INT8 (opt-in)")
    group.add_argument("--int8", action="store_true", help="write the INT8 (QDQ) model")
    group.add_argument(
        "--fp32_model",
        type=Path,
        default=None,
        help="an FP32 model.onnx to quantise (default: export one from the PyTorch model)",
    )
    group.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="directory of calibration images; every third is held out for the fidelity "
        "report unless --holdout is given (default: variations of the photos in tests/data)",
    )
    group.add_argument("--holdout", type=Path, default=None, help="held-out images directory")
    group.add_argument(
        "--labelled",
        type=Path,
        default=None,
        help="ImageNet-style directory (one folder per class) to report accuracy on",
    )
    group.add_argument(
        "--min_agreement",
        type=float,
        default=DEFAULT_GATE,
        help="gate: least top-1 agreement with FP32 where FP32 is confident (default 0.95)",
    )
    group.add_argument(
        "--confident_probability",
        type=float,
        default=fidelity.CONFIDENT_PROBABILITY,
        help="FP32 top-1 probability from which an image counts as confident (default 0.5)",
    )
    group.add_argument(
        "--reduce_range",
        choices=["auto", "on", "off"],
        default="auto",
        help="7-bit weights; auto: on for x86 CPUs without VNNI, where 8-bit ones saturate",
    )
    group.add_argument(
        "--force_int8", action="store_true", help="write the INT8 model even below the gate"
    )


def image_sets(
    args: argparse.Namespace,
) -> tuple[imagesets.ImageSet, imagesets.ImageSet, tuple[imagesets.ImageSet, np.ndarray] | None]:
    """Calibration, held-out and labelled sets from the command line's directories."""
    if args.calibration is None:
        calibration, holdout = imagesets.default_sets(PREPROCESSING)
    elif args.holdout is None:
        calibration, holdout = imagesets.split(
            imagesets.from_directory(args.calibration, PREPROCESSING)
        )
    else:
        calibration = imagesets.from_directory(args.calibration, PREPROCESSING)
    if args.holdout is not None:
        holdout = imagesets.from_directory(args.holdout, PREPROCESSING)
    labelled = (
        None
        if args.labelled is None
        else imagesets.labelled(args.labelled, PREPROCESSING, imagenet_labels())
    )
    return calibration, holdout, labelled


def run_cli(args: argparse.Namespace, model_dir: Path) -> int:
    """The --int8 path of the command line: 0 written, 1 below the gate, 2 bad input."""
    try:
        calibration, holdout, labelled = image_sets(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"modelbuild onnx: {exc}")
        return 2
    for skipped in calibration.skipped + holdout.skipped:
        print(f"skipped {skipped}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = args.fp32_model
        if fp32 is None:
            fp32 = Path(tmp) / "fp32.onnx"
            export_fp32(fp32)
        int8 = Path(tmp) / ONNX_FILE
        try:
            report = quantize_checked(
                fp32,
                int8,
                calibration,
                holdout,
                labelled,
                gate=args.min_agreement,
                confident=args.confident_probability,
                force=args.force_int8,
                reduce_range=resolve_reduce_range(args.reduce_range),
            )
        except BelowGate as exc:
            print(exc)
            return 1
        print("\n".join(report.lines()))
        write_onnx_model(model_dir.parent, model_dir.name, args.version, int8)
    print(f"exported {model_dir.name} version {args.version} (ONNX INT8) to {model_dir}")
    return 0
