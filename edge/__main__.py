"""Command line: `python -m edge IMAGE... [--model_dir model_repository-onnx] [--top_k 5]`.

Prints the top-k classes of each image; an image that cannot be read or decoded is reported
and skipped. Exit status 0 when every image was classified, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import DEFAULT_MODEL_NAME, positive_int
from common.modelrepo import ModelRepositoryError

DEFAULT_MODEL_DIR = "model_repository-onnx"


def main(argv: list[str] | None = None) -> int:
    """Classify the images named on the command line."""
    p = argparse.ArgumentParser(prog="python -m edge", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, ...)")
    p.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="model repository (ONNX)")
    p.add_argument("--model_name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--top_k", type=positive_int, default=5)
    p.add_argument("--num_threads", type=positive_int, default=None, help="default: CPUs available")
    args = p.parse_args(argv)

    from . import Classifier  # after parsing: --help needs no model

    try:
        classifier = Classifier(args.model_dir, args.model_name, num_threads=args.num_threads)
    except (ModelRepositoryError, OSError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.images:
        try:
            predictions = classifier.classify(path.read_bytes(), args.top_k)
        except (OSError, ValueError) as exc:
            print(f"{path}: error: {exc}")
            failed += 1
            continue
        print(f"{path}:")
        for prediction in predictions:
            print(f"  {prediction.score:6.3f}  {prediction.class_id:4d}  {prediction.label}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
