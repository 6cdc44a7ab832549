"""INT8 against FP32 on the built-in held-out set, printed as JSON (a child of the bench).

    python -m bench.fidelity --fp32 REPO --int8 REPO [--model_name image-classifier]

The same measurement the INT8 export gates on (`modelbuild.fidelity`, `modelbuild.imagesets`),
repeated at bench time so the report states it beside the speed it buys. A child process:
the decoding imports kserve, which cannot share a process with tritonclient.grpc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common.modelrepo import resolve
from modelbuild import fidelity, imagesets
from modelbuild.quantize import logits
from vision.preprocessing import Preprocessing


def main() -> int:
    """Print the Fidelity of the INT8 model against the FP32 one as a JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--int8", type=Path, required=True)
    p.add_argument("--model_name", default="image-classifier")
    args = p.parse_args()
    fp32, int8 = resolve(args.fp32, args.model_name), resolve(args.int8, args.model_name)
    _, holdout = imagesets.default_sets(Preprocessing.read(fp32.model_dir))
    result = fidelity.compare(
        logits(fp32.artifact, holdout.pixels), logits(int8.artifact, holdout.pixels)
    )
    json.dump(dataclasses.asdict(result), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
