"""Command line: `python -m transformer --model_dir REPO --predictor_host HOST:PORT ...`."""

from __future__ import annotations

import sys

from common.server import run_server

from . import settings as settings_module
from .model import ImageClassifierTransformer


def main(argv: list[str] | None = None) -> int:
    """Parse flags, read the model repository, then serve until SIGINT/SIGTERM."""
    settings = settings_module.parse(argv)
    model = ImageClassifierTransformer(settings)
    model.load()
    run_server(model, settings.server_args, settings.max_request_bytes, settings.predictor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
