"""Command line: `python -m predictor --model_dir REPO [--model_name image-classifier] ...`."""

from __future__ import annotations

import logging
import sys

from runtime.tuning import keep_freed_memory, prepare_environment

prepare_environment()  # before torch is imported anywhere below

from common import logs  # noqa: E402
from common.exposure import ExposurePolicy  # noqa: E402
from common.lifecycle import Lifecycle  # noqa: E402
from common.server import run_server  # noqa: E402
from runtime.tensors import EngineLoadError  # noqa: E402

from . import settings as settings_module  # noqa: E402
from .model import RepositoryModel  # noqa: E402

logger = logging.getLogger("predictor")
EXIT_USAGE = 2  # bad flags or model repository (argparse exits 2 too)
EXIT_LOAD_FAILED = 1  # the engine could not be built or failed its self-check


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load and warm the model, then serve until SIGINT/SIGTERM."""
    settings = settings_module.parse(argv)
    logs.configure(settings.server_args.log_format)
    keep_freed_memory()
    model = RepositoryModel(settings)
    try:
        model.load()
    except ValueError as exc:  # the flags or the repository: a usage error, as argparse's
        logger.error("predictor: cannot serve: %s", exc)
        return EXIT_USAGE
    except EngineLoadError as exc:
        logger.error("predictor: cannot serve: %s", exc)
        return EXIT_LOAD_FAILED
    policy = ExposurePolicy(control_plane=settings.model_repository_api)
    run_server(
        model,
        settings.server_args,
        settings.max_request_bytes,
        policy=policy,
        life=Lifecycle(settings.lifecycle, refusals=(model.overloaded,)),
        component="predictor",
        # The version served labels the request series: canary analysis tells versions apart
        # by it (docs/rollout.md).
        metric_labels={"model_version": model.versions[0]},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
