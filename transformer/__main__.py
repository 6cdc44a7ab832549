"""Command line: `python -m transformer --model_dir REPO --predictor_host HOST:PORT ...`."""

from __future__ import annotations

import sys

from common import kserve_compat, logs, memory, pacing
from common.database import DatabaseError
from common.exposure import ExposurePolicy
from common.lifecycle import Lifecycle
from common.server import run_server

from . import demo, ground_truth
from . import settings as settings_module
from .auth import ApiKeyFileError, ApiKeys
from .model import ImageClassifierTransformer


def main(argv: list[str] | None = None) -> int:
    """Parse flags, read the model repository, then serve until SIGINT/SIGTERM."""
    settings = settings_module.parse(argv)
    logs.configure(settings.server_args.log_format)
    memory.return_freed_memory()  # a burst of large requests leaves no memory behind
    try:
        keys = ApiKeys(settings.api_key_file) if settings.api_key_file else None
    except ApiKeyFileError as exc:
        raise SystemExit(f"--api_key_file: {exc}") from None
    model = ImageClassifierTransformer(settings)
    model.load()
    if settings.prediction_log_url:
        try:
            model.ground_truth = ground_truth.GroundTruth(
                settings.prediction_log_url,
                settings.model_name,
                model.repository_version,
                list(model.labels),
                settings.prediction_log_capacity,
            )
        except DatabaseError as exc:
            raise SystemExit(str(exc)) from None
    if settings.demo:
        page = demo.load(
            settings.model_name, model.repository_version, settings.default_top_k, len(model.labels)
        )
        demo.install(kserve_compat.rest_app(), page)
    # The model repository API is never served here: the transformer is the public entry point.
    policy = ExposurePolicy(control_plane=False, api_keys=keys)
    kserve_compat.rest_app().add_api_route(
        "/v2/models/{model_name}/drift", model.drift_report, methods=["GET"]
    )
    ground_truth.register(kserve_compat.rest_app(), model.ground_truth)
    run_server(
        model,
        settings.server_args,
        settings.max_request_bytes,
        settings.predictor,
        policy,
        life=Lifecycle(
            settings.lifecycle,
            checks=(model.predictor.ready,),
            max_inflight_requests=settings.max_inflight_requests,
            max_wait=pacing.target(settings.max_expected_wait_s, "requests"),
        ),
        component="transformer",
        cloudevents=True,  # Knative Eventing talks to the public entry point
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
