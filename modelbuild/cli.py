"""The one command line for building models: `python -m modelbuild COMMAND [flags]`.

    torchscript      export the default model as TorchScript (`make model-repo`)
    onnx             export it as ONNX: FP32, or INT8 behind a fidelity gate with --int8
    openvino         convert an ONNX repository (FP32 or INT8) to OpenVINO IR (backend openvino)
    drift-reference  write a model's drift reference profile from a directory of images

`python -m modelbuild COMMAND --help` lists a command's flags. Each command imports what it
needs when it runs, so `--help` is quick and needs no torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from common.cli import DEFAULT_MODEL_NAME

PROG = "python -m modelbuild"


def torchscript(argv: list[str]) -> int:
    """The `torchscript` command (modelbuild.export)."""
    from . import export

    return export.main(argv, prog=f"{PROG} torchscript")


def onnx(argv: list[str]) -> int:
    """The `onnx` command: FP32 (or INT8 with --int8) unless already there (or --force)."""
    from . import export_onnx, quantize

    parser = argparse.ArgumentParser(
        prog=f"{PROG} onnx", description=(export_onnx.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository-onnx"))
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--version", default="1")
    parser.add_argument("--force", action="store_true", help="export even if present")
    quantize.add_arguments(parser)
    args = parser.parse_args(argv)
    target = args.repository / args.model_name
    if (target / args.version / export_onnx.ONNX_FILE).is_file() and not args.force:
        print(f"ONNX model already at {target} (use --force to re-export)")
        return 0
    if not args.int8:
        model_dir = export_onnx.export(args.repository, args.model_name, args.version)
        print(f"exported {args.model_name} version {args.version} (ONNX FP32) to {model_dir}")
        return 0
    return quantize.run_cli(args, target)


def openvino(argv: list[str]) -> int:
    """The `openvino` command (modelbuild.export_openvino): 0 written, 1 a mismatch."""
    from . import export_openvino

    parser = argparse.ArgumentParser(
        prog=f"{PROG} openvino", description=(export_openvino.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--source", type=Path, default=Path("model_repository-onnx"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository-openvino"))
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--force", action="store_true", help="convert even if present")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="what OpenVINO serves the model in: bf16 (a CPU with native BF16 only) is gated "
        "against --reference and written as HINT_BF16; an INT8 source runs in INT8 either way",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("model_repository-onnx"),
        help="the FP32 ONNX repository a model served below FP32 (INT8, BF16) is gated against",
    )
    args = parser.parse_args(argv)
    target = args.repository / args.model_name
    if any(target.glob(f"*/{export_openvino.IR_FILE}")) and not args.force:
        print(f"OpenVINO model already at {target} (use --force to convert again)")
        return 0
    try:
        model_dir = export_openvino.convert(
            args.source,
            args.repository,
            args.model_name,
            precision=args.precision,
            reference=args.reference,
        )
    except export_openvino.ConversionError as exc:
        print(f"{PROG} openvino: {exc}")
        return 1
    except ValueError as exc:  # not an ONNX repository, or not a repository at all
        print(f"{PROG} openvino: {exc}")
        return 2
    print(f"converted {args.source / args.model_name} to OpenVINO IR in {model_dir}")
    return 0


def drift_reference(argv: list[str]) -> int:
    """The `drift-reference` command (modelbuild.drift_reference)."""
    from . import drift_reference

    return drift_reference.main(argv, prog=f"{PROG} drift-reference")


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "torchscript": torchscript,
    "onnx": onnx,
    "openvino": openvino,
    "drift-reference": drift_reference,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; 2 (with the usage) for a missing or unknown one."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command"
        print(f"{PROG}: {given}; expected one of {', '.join(COMMANDS)}\n{__doc__}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
