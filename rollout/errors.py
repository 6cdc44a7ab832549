"""Exit codes and the errors that carry them: the only place a failure becomes a number."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of `image-classifier-rollout`; documented in `--help` and docs/rollout.md."""

    OK = 0
    ROLLOUT_FAILED = 1
    USAGE = 2  # argparse's own code for bad arguments, kept for our usage errors too
    UNREACHABLE = 3
    CRD_MISSING = 4
    NOT_FOUND = 5
    TIMEOUT = 6
    UNSUPPORTED = 7
    REJECTED = 8
    ANALYSIS_FAILED = 9
    INCONCLUSIVE = 10


EXIT_CODE_HELP = """\
exit codes:
  0  success
  1  rollout failed: the new revision or canary did not become ready (reason printed)
  2  usage error: bad arguments, or nothing to do (e.g. no canary in progress)
  3  unreachable: no kubeconfig / in-cluster config, the cluster, the model registry or
     Prometheus refused the connection (or failed during a canary analysis: rolled back)
  4  CRD missing: the API server does not serve inferenceservices.serving.kserve.io
  5  not found: the InferenceService, or the registry's model, version or alias
  6  timeout: the controller did not reach the expected state within --timeout
  7  not supported in this deployment mode (or kind not supported by apply)
  8  rejected: the API server, kustomize or Prometheus refused the request (validation,
     conflict, a --match that does not parse)
  9  canary analysis failed: a check failed; the canary was rolled back (`analyze`: it failed)
  10  canary analysis inconclusive: too little traffic to judge; the canary was rolled back
      (`analyze`: too little traffic)
"""


class RolloutError(Exception):
    """A failure the CLI reports with a message and a distinct exit code."""

    exit_code: ExitCode = ExitCode.ROLLOUT_FAILED


class RolloutFailed(RolloutError):
    """The controller reported the new revision or canary as failed."""

    exit_code = ExitCode.ROLLOUT_FAILED


class UsageError(RolloutError):
    """The request makes no sense for the current state (nothing to promote, no change given)."""

    exit_code = ExitCode.USAGE


class ClusterUnreachable(RolloutError):
    """No cluster configuration could be loaded, or the API server did not answer."""

    exit_code = ExitCode.UNREACHABLE


class CrdMissing(RolloutError):
    """The API server does not know the KServe resource type."""

    exit_code = ExitCode.CRD_MISSING


class NotFound(RolloutError):
    """The named InferenceService does not exist."""

    exit_code = ExitCode.NOT_FOUND


class WaitTimeout(RolloutError):
    """The observed state did not reach the expected one before the deadline."""

    exit_code = ExitCode.TIMEOUT


class Unsupported(RolloutError):
    """The command has no meaning in the InferenceService's deployment mode."""

    exit_code = ExitCode.UNSUPPORTED


class Rejected(RolloutError):
    """The API server (or kustomize) refused the request."""

    exit_code = ExitCode.REJECTED
