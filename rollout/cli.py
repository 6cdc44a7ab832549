"""The `image-classifier-rollout` command line: argument parsing, settings, and the commands.

Each command reads the live InferenceService, asks `plans` for a merge patch, sends it (or
prints it under --dry-run), then waits on observed state with `wait`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from common.cli import DEFAULT_MODEL_NAME
from common.stats import DURATION_EXAMPLES, parse_duration
from rollout import analysis, plans, progressive, report, state
from rollout.errors import (
    EXIT_CODE_HELP,
    ExitCode,
    RolloutError,
    RolloutFailed,
    UsageError,
    WaitTimeout,
)
from rollout.kube import APPLIABLE, ISVC, KserveApi, Resource, connect
from rollout.plans import Change, Expectation, Plan
from rollout.prometheus import PROMETHEUS_ENV, Prometheus
from rollout.prometheus import TOKEN_ENV as PROMETHEUS_TOKEN_ENV
from rollout.registry import (
    ARTIFACT_ROOT_ENV,
    REGISTRY_ENV,
    TOKEN_ENV,
    MlflowRegistry,
    ModelUri,
    ResolvedModel,
)
from rollout.render import render
from rollout.state import Snapshot, snapshot
from rollout.wait import wait_for

DEFAULT_NAME = DEFAULT_MODEL_NAME  # the InferenceService is named after its model
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_POLL_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Settings:
    """Options every command shares, validated once from the command line."""

    name: str
    namespace: str
    kubeconfig: str | None
    context: str | None
    timeout_s: float
    poll_interval_s: float
    dry_run: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            name=args.name,
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            context=args.context,
            timeout_s=args.timeout,
            poll_interval_s=args.poll_interval,
            dry_run=getattr(args, "dry_run", False),
        )


@dataclass(frozen=True)
class Io:
    out: TextIO
    err: TextIO


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name", default=DEFAULT_NAME, help="InferenceService name (default %(default)s)"
    )
    common.add_argument(
        "-n", "--namespace", default=DEFAULT_NAMESPACE, help="namespace (default %(default)s)"
    )
    common.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)",
    )
    common.add_argument("--context", help="kubeconfig context (default: the current context)")
    common.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the rollout (default %(default)g)",
    )
    common.add_argument(
        "--poll-interval",
        type=_positive,
        default=DEFAULT_POLL_INTERVAL_S,
        help="seconds between status reads while waiting (default %(default)g)",
    )
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV),
        help=f"MLflow tracking server URL (default ${REGISTRY_ENV})",
    )
    registry.add_argument(
        "--artifact-root",
        default=os.environ.get(ARTIFACT_ROOT_ENV),
        help="where the tracking server's artifact proxy stores artifacts (its "
        f"--artifacts-destination, e.g. s3://bucket/mlflow; default ${ARTIFACT_ROOT_ENV}): "
        "mlflow-artifacts:/ sources resolve under it",
    )
    judged = _analysis_parser()
    mutating = argparse.ArgumentParser(add_help=False)
    mutating.add_argument(
        "--dry-run", action="store_true", help="print the change instead of applying it"
    )

    parser = argparse.ArgumentParser(
        prog="image-classifier-rollout",
        description="Apply, canary, promote and roll back the image-classifier InferenceService.",
        epilog=EXIT_CODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kw: dict[str, Any] = {
        "epilog": EXIT_CODE_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }

    p = sub.add_parser(
        "apply",
        parents=[common, mutating, registry],
        help="render a kustomize overlay, apply it, wait for Ready",
        **kw,
    )
    p.add_argument(
        "overlay", type=Path, help="kustomize directory (e.g. manifests/overlays/knative)"
    )
    p.add_argument(
        "--model",
        help="models:/NAME/VERSION or models:/NAME@ALIAS: the registry version to serve "
        "(its artifact location replaces the overlay's STORAGE_URI)",
    )

    p = sub.add_parser(
        "status", parents=[common], help="readiness, URL, traffic split, conditions not True", **kw
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")

    p = sub.add_parser(
        "canary",
        parents=[common, mutating, registry, judged, _steps_parser()],
        help="send N%% of traffic to a new predictor version (--analysis: step it, judged by "
        "Prometheus, then promote or roll back)",
        **kw,
    )
    p.add_argument(
        "--percent",
        type=int,
        help="traffic percent for the canary (0-100); with --analysis the steps set it",
    )
    p.add_argument(
        "--analysis",
        action="store_true",
        help="step the canary through --steps, judge each step against the stable version "
        "from Prometheus' series, then promote, or roll back at the first failing check",
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--storage-uri",
        help="new model storageUri (the transformer's STORAGE_URI follows at promote)",
    )
    model.add_argument(
        "--model",
        help="models:/NAME/VERSION or models:/NAME@ALIAS: the registry version to canary "
        "(resolved to its storageUri, recorded on the InferenceService)",
    )
    p.add_argument("--image", help="new predictor container image")
    p.add_argument(
        "--transformer-image", help="new transformer container image (Knative mode only)"
    )
    p.add_argument(
        "--canary-name",
        help="Standard mode: the canary predictor's name (default canary-<generation>)",
    )
    p.add_argument(
        "--auto-rollback", action="store_true", help="roll back if the canary fails or times out"
    )

    sub.add_parser(
        "promote", parents=[common, mutating], help="send all traffic to the canary", **kw
    )

    sub.add_parser(
        "analyze",
        parents=[common, judged],
        help="judge the canary in progress over the last --interval (changes nothing)",
        **kw,
    )

    p = sub.add_parser(
        "register",
        parents=[registry],
        help="upload a model repository to the registry as a new version (no cluster needed)",
        **kw,
    )
    p.add_argument("repository", type=Path, help="Triton-layout model repository (make model-repo)")
    p.add_argument(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        help="the model's directory in the repository (default %(default)s)",
    )
    p.add_argument("--registered-name", help="the registered model's name (default: --model-name)")
    p.add_argument("--alias", help="point this alias (e.g. challenger) at the new version")

    p = sub.add_parser(
        "rollback",
        parents=[common, mutating],
        help="send all traffic back to the previous version",
        **kw,
    )
    p.add_argument(
        "--restore-spec",
        action="store_true",
        help="also restore the spec recorded before the canary",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see `--help` for their meanings)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error (2)
        return int(exc.code or 0)
    io = Io(out=sys.stdout, err=sys.stderr)
    try:
        if args.command == "register":
            return _register(args, io)
        return _run(args, Settings.from_args(args), io)
    except RolloutError as exc:
        print(f"error: {exc}", file=io.err)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=io.err)
        return 130
    except Terminated as exc:  # before anything needed rolling back
        print(f"error: {exc}", file=io.err)
        return 143


def _run(args: argparse.Namespace, settings: Settings, io: Io) -> int:
    if args.command == "apply":
        docs = render(args.overlay)  # before connecting: a bad overlay needs no cluster
        if args.model:
            resolved = _resolve(args)
            for doc in docs:
                if doc.get("kind") == "InferenceService":
                    plans.set_model(doc, resolved.storage_uri)
                    doc.setdefault("metadata", {}).setdefault("annotations", {})[
                        state.MODEL_ANNOTATION
                    ] = json.dumps(resolved.record(), sort_keys=True)
            print(
                f"{args.model}: version {resolved.version} at {resolved.storage_uri}", file=io.err
            )
        return _apply(_api(settings), settings, docs, io, with_model=bool(args.model))
    if args.command == "canary":
        _check_percent(args)
    # The registry first: an unknown model version needs no cluster to be reported.
    canary_model = _resolve(args) if args.command == "canary" and args.model else None
    if args.command == "analyze":
        return _analyze(args, settings, io)
    api = _api(settings)
    if args.command == "status":
        snap = snapshot(api.get_required(ISVC, settings.namespace, settings.name))
        print(report.as_json(snap) if args.output == "json" else report.as_text(snap), file=io.out)
        return ExitCode.OK
    isvc = api.get_required(ISVC, settings.namespace, settings.name)
    recorded = (isvc.get("metadata") or {}).get("annotations") or {}
    if args.command == "canary":
        storage_uri = canary_model.storage_uri if canary_model else args.storage_uri
        change = Change(
            storage_uri=storage_uri, image=args.image, transformer_image=args.transformer_image
        )
        schedule = _schedule(args) if args.analysis else None  # before any call that changes
        percent = schedule.steps[0] if schedule else args.percent
        plan = plans.plan_canary(isvc, percent, change, args.canary_name)
        # A new rollout records the spec it replaces; a canary in progress only moves.
        patched = (plan.patch.get("metadata") or {}).get("annotations") or {}
        new_rollout = patched.get(plans.PREVIOUS_SPEC_ANNOTATION) is not None
        if canary_model is not None:
            print(f"{args.model}: version {canary_model.version} at {storage_uri}", file=io.err)
            annotations: dict[str, str | None] = {
                state.MODEL_ANNOTATION: json.dumps(canary_model.record(), sort_keys=True)
            }
            # The version this canary replaces: recorded for a new rollout, kept otherwise.
            if new_rollout:
                annotations[state.PREVIOUS_MODEL_ANNOTATION] = recorded.get(state.MODEL_ANNOTATION)
            plan = plans.annotated(plan, annotations)
        if schedule is None:
            return _canary(api, settings, plan, args.auto_rollback, io)
        current = _recorded_served(recorded, state.MODEL_ANNOTATION)
        previous = _recorded_served(recorded, state.PREVIOUS_MODEL_ANNOTATION)
        served = canary_model.served_version if canary_model else None
        judge = (
            _judge(args, current, served)
            if new_rollout
            else _judge(args, previous, served or current)
        )
        return _canary_with_analysis(api, settings, plan, judge, schedule, args, io)
    if args.command == "promote":
        # The previous version stays recorded beside the previous spec: a rollback after the
        # promote restores both.
        return _execute(api, settings, plans.plan_promote(isvc), io)
    if args.command == "rollback":
        return _execute(api, settings, _rollback_plan(isvc, restore_spec=args.restore_spec), io)
    raise AssertionError(f"unhandled command {args.command!r}")


@dataclass(frozen=True)
class Judge:
    """Canary analysis settings, validated once: which versions' series to compare, where
    Prometheus is, the thresholds (rollout.analysis)."""

    prometheus: Prometheus
    stable: str
    canary: str
    thresholds: analysis.Thresholds
    match: str
    interval_s: int
    as_json: bool

    def evaluate(self, window_s: int, accuracy_window_s: int) -> analysis.Verdict:
        """Measure both versions now and judge the canary; raises PrometheusError."""
        at = time.time()
        stable, canary = (
            analysis.measure(self.prometheus, v, at, window_s, accuracy_window_s, self.match)
            for v in (self.stable, self.canary)
        )
        return analysis.judge(stable, canary, self.thresholds)


def _steps_parser() -> argparse.ArgumentParser:
    """`canary --analysis`'s own flags: how the canary is stepped."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--steps",
        type=_steps,
        default=(10, 25, 50),
        help="--analysis: the canary's traffic percent at each step (default 10,25,50)",
    )
    p.add_argument(
        "--waits",
        type=int,
        default=3,
        help="--analysis: windows a step waits for enough traffic before it gives up as "
        "inconclusive (default %(default)s)",
    )
    return p


def _analysis_parser() -> argparse.ArgumentParser:
    """The flags `canary --analysis` and `analyze` share."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("canary analysis")
    g.add_argument(
        "--prometheus",
        default=os.environ.get(PROMETHEUS_ENV),
        help=f"Prometheus server URL (default ${PROMETHEUS_ENV}; a bearer token from "
        f"${PROMETHEUS_TOKEN_ENV})",
    )
    g.add_argument(
        "--interval",
        type=_duration,
        default=300,
        help=f"window judged at each evaluation ({DURATION_EXAMPLES}; default 5m)",
    )
    g.add_argument(
        "--stable-version",
        help="the stable version's model_version label (default: the servedVersion recorded "
        "with the model the InferenceService serves, from `register`)",
    )
    g.add_argument(
        "--canary-version",
        help="the canary's model_version label (default: the servedVersion of --model, or "
        "the one recorded with the canary in progress)",
    )
    g.add_argument(
        "--match",
        default="",
        help='more PromQL label matchers for every series, e.g. namespace="prod"',
    )
    defaults = analysis.Thresholds()
    g.add_argument(
        "--max-error-increase",
        type=float,
        default=defaults.max_error_increase,
        help="most the canary's server-error ratio may exceed the stable's (default %(default)g)",
    )
    g.add_argument(
        "--max-latency-ratio",
        type=float,
        default=defaults.max_latency_ratio,
        help="most the canary's p99 may be, as a multiple of the stable's (default %(default)g)",
    )
    g.add_argument(
        "--latency-slack",
        type=float,
        default=defaults.latency_slack_s,
        help="p99 differences under these seconds never fail (default %(default)g)",
    )
    g.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=defaults.max_accuracy_drop,
        help="most the canary's top-1 accuracy may be below the stable's (default %(default)g)",
    )
    g.add_argument(
        "--min-requests",
        type=int,
        default=defaults.min_requests,
        help="requests each side needs in a window to be judged (default %(default)s)",
    )
    g.add_argument(
        "--min-labels",
        type=int,
        default=defaults.min_labels,
        help="labelled predictions each side needs for the accuracy check (default %(default)s)",
    )
    g.add_argument(
        "--json", action="store_true", help="print each evaluation and the decision as JSON lines"
    )
    return p


def _judge(args: argparse.Namespace, stable: str | None, canary: str | None) -> Judge:
    """Validate the analysis flags and run every query once, before anything changes; raises
    UsageError, or PrometheusError (PrometheusRefused for a --match that does not parse)."""
    if not args.prometheus:
        raise UsageError(f"canary analysis needs --prometheus URL (or ${PROMETHEUS_ENV})")
    stable = args.stable_version or stable
    canary = args.canary_version or canary
    for side, value, flag in (
        ("stable", stable, "--stable-version"),
        ("canary", canary, "--canary-version"),
    ):
        if not value:
            raise UsageError(
                f"which model_version label do the {side} predictor's series carry? No "
                f"servedVersion is recorded for it (models registered by `register` have one): "
                f"give {flag}"
            )
    if stable == canary:
        raise UsageError(
            f"stable and canary both serve model_version {stable!r}: their series cannot be "
            "told apart; export the new model as a new version directory (docs/rollout.md)"
        )
    try:
        thresholds = analysis.Thresholds(
            max_error_increase=args.max_error_increase,
            max_latency_ratio=args.max_latency_ratio,
            latency_slack_s=args.latency_slack,
            max_accuracy_drop=args.max_accuracy_drop,
            min_requests=args.min_requests,
            min_labels=args.min_labels,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    assert stable is not None and canary is not None
    judge = Judge(
        Prometheus(args.prometheus, os.environ.get(PROMETHEUS_TOKEN_ENV)),
        stable,
        canary,
        thresholds,
        args.match,
        args.interval,
        args.json,
    )
    try:
        judge.evaluate(args.interval, args.interval)  # every query once: reachable, parses
    except RolloutError:
        judge.prometheus.close()
        raise
    return judge


def _recorded_served(annotations: dict[str, str], key: str) -> str | None:
    """The servedVersion of the registry model recorded under `key`, if any."""
    raw = annotations.get(key)
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return (
        str(value["servedVersion"])
        if isinstance(value, dict) and value.get("servedVersion")
        else None
    )


def _analyze(args: argparse.Namespace, settings: Settings, io: Io) -> int:
    """One evaluation of the canary in progress over the last --interval."""
    stable, canary = args.stable_version, args.canary_version
    if not (stable and canary):  # the cluster only when a version must be read from it
        isvc = _api(settings).get_required(ISVC, settings.namespace, settings.name)
        if not plans.canary_in_progress(isvc):
            raise UsageError(
                f"{settings.namespace}/{settings.name}: no canary in progress to judge "
                "(give --stable-version and --canary-version to compare any two versions)"
            )
        recorded = (isvc.get("metadata") or {}).get("annotations") or {}
        stable = stable or _recorded_served(recorded, state.PREVIOUS_MODEL_ANNOTATION)
        canary = canary or _recorded_served(recorded, state.MODEL_ANNOTATION)
    judge = _judge(args, stable, canary)
    try:
        verdict = judge.evaluate(judge.interval_s, judge.interval_s)
    finally:
        judge.prometheus.close()
    progressive.Reporter(io.out, judge.as_json).verdict(judge.interval_s, time.time(), verdict)
    return {
        analysis.Outcome.PASS: ExitCode.OK,
        analysis.Outcome.FAIL: ExitCode.ANALYSIS_FAILED,
        analysis.Outcome.WAIT: ExitCode.INCONCLUSIVE,
    }[verdict.outcome]


def _canary_with_analysis(
    api: KserveApi,
    settings: Settings,
    plan: Plan,
    judge: Judge,
    schedule: progressive.Schedule,
    args: argparse.Namespace,
    io: Io,
) -> int:
    """Start the canary at the first step, step it while the analysis passes, then promote;
    roll back at a failing check, when it stays inconclusive, or when the analysis cannot go
    on (Prometheus or the cluster failing, SIGTERM) once this run's canary is in place."""
    # Under --json, stdout carries only the analysis' JSON lines.
    kube_io = Io(out=io.err, err=io.err) if judge.as_json else io
    reporter = progressive.Reporter(io.out, judge.as_json)
    if settings.dry_run:
        _execute(api, settings, plan, kube_io)
        reporter.dry_run(schedule, judge.canary, judge.stable, judge.prometheus.url)
        judge.prometheus.close()
        return ExitCode.OK

    def isvc() -> dict[str, Any]:
        return api.get_required(ISVC, settings.namespace, settings.name)

    def set_percent(percent: int) -> None:
        step = plans.plan_canary(isvc(), percent, Change(), args.canary_name)
        _execute(api, settings, step, kube_io)

    started = False  # whether this run's canary patch was applied: only then is it rolled back
    try:
        with _sigterm_raises() as held:
            with held():  # whether the patch took is known only once its answer is read
                updated = _send(api, settings, plan, kube_io)
                started = True
            snap = _wait(api, settings, updated, plan.expect, kube_io)
            print(report.as_text(snap), file=kube_io.out)
            result = progressive.run(schedule, set_percent, judge.evaluate, reporter)
    except (RolloutError, Terminated) as exc:
        if not started:
            raise
        code = exc.exit_code if isinstance(exc, RolloutError) else 143
        print(f"error: {exc}", file=io.err)
        print("canary analysis stopped: rolling back the canary", file=io.err)
        try:
            failed = isinstance(exc, RolloutFailed | WaitTimeout)
            _execute(api, settings, _rollback_plan(isvc(), failed=failed), kube_io)
        except RolloutError as rollback_exc:
            print(f"error: the rollback failed too: {rollback_exc}", file=io.err)
        return int(code)
    finally:
        judge.prometheus.close()
    reporter.decision(result)
    if result.decision is progressive.Decision.PROMOTE:
        _execute(api, settings, plans.plan_promote(isvc()), kube_io)
        return ExitCode.OK
    _execute(api, settings, _rollback_plan(isvc()), kube_io)
    if result.decision is progressive.Decision.ROLLBACK:
        return ExitCode.ANALYSIS_FAILED
    return ExitCode.INCONCLUSIVE


class Terminated(Exception):
    """SIGTERM arrived during a canary analysis (a cancelled CI job, say)."""


@contextmanager
def _sigterm_raises() -> Iterator[Callable[[], AbstractContextManager[None]]]:
    """Turn SIGTERM into Terminated inside the block (so the canary is rolled back). Yields
    `held`: a block run under `with held():` is not interrupted; a SIGTERM that arrives during
    it raises Terminated as it ends (a patch in flight: cut off, nobody would know whether
    the canary was applied, so nothing would roll it back)."""
    holding, pending = [False], [False]

    def raise_terminated(signum: int, frame: object) -> None:
        if holding[0]:
            pending[0] = True
            return
        raise Terminated("terminated by SIGTERM")

    @contextmanager
    def held() -> Iterator[None]:
        holding[0] = True
        try:
            yield
        finally:
            holding[0] = False
        if pending[0]:
            raise Terminated("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield nullcontext
        return
    try:
        yield held
    finally:
        signal.signal(signal.SIGTERM, previous)


def _schedule(args: argparse.Namespace) -> progressive.Schedule:
    try:
        return progressive.Schedule(tuple(args.steps), args.interval, args.waits)
    except ValueError as exc:
        raise UsageError(f"--steps/--interval/--waits: {exc}") from None


def _check_percent(args: argparse.Namespace) -> None:
    """--percent without --analysis, --steps with it, and no analysis flag without it (it
    would be ignored); raises UsageError."""
    if args.analysis and args.percent is not None:
        raise UsageError("--analysis sets the canary's traffic from --steps: drop --percent")
    if not args.analysis and args.percent is None:
        raise UsageError("give --percent N (or --analysis to step through --steps)")
    if not args.analysis and (ignored := _analysis_flags_set(args)):
        verb = "applies" if len(ignored) == 1 else "apply"
        raise UsageError(f"{', '.join(ignored)} only {verb} with --analysis: add it, or drop it")


def _analysis_flags_set(args: argparse.Namespace) -> list[str]:
    """The `canary` flags that only --analysis reads, set to other than their defaults (a
    default given explicitly changes nothing either way)."""
    analysis_only = [*_analysis_parser()._actions, *_steps_parser()._actions]
    return [
        action.option_strings[0]
        for action in analysis_only
        if action.option_strings and getattr(args, action.dest) != action.default
    ]


def _registry(args: argparse.Namespace) -> MlflowRegistry:
    if not args.registry:
        raise UsageError(f"no registry: give --registry URL or set ${REGISTRY_ENV}")
    return MlflowRegistry(args.registry, args.artifact_root, os.environ.get(TOKEN_ENV))


def _resolve(args: argparse.Namespace) -> ResolvedModel:
    """The --model version and its storage URI (before any cluster call)."""
    uri = ModelUri.parse(args.model)
    registry = _registry(args)
    try:
        return registry.resolve(uri)
    finally:
        registry.close()


def _register(args: argparse.Namespace, io: Io) -> int:
    registry = _registry(args)
    try:
        resolved = registry.register(
            args.repository, args.model_name, args.registered_name or args.model_name, args.alias
        )
    finally:
        registry.close()
    alias = f", alias {resolved.alias}" if resolved.alias else ""
    print(
        f"registered models:/{resolved.name}/{resolved.version}{alias}: {resolved.source}"
        + (
            f" (storageUri {resolved.storage_uri})"
            if resolved.storage_uri != resolved.source
            else ""
        ),
        file=io.err,
    )
    print(json.dumps({**resolved.record(), "source": resolved.source}), file=io.out)
    return ExitCode.OK


def _rollback_plan(isvc: dict[str, Any], restore_spec: bool = False, failed: bool = False) -> Plan:
    """plans.plan_rollback, and the registry version recorded before the rollout back as the
    model served (rollout.registry)."""
    plan = plans.plan_rollback(isvc, restore_spec=restore_spec, failed=failed)
    recorded = (isvc.get("metadata") or {}).get("annotations") or {}
    if state.PREVIOUS_MODEL_ANNOTATION not in recorded:
        return plan
    return plans.annotated(
        plan,
        {
            state.MODEL_ANNOTATION: recorded[state.PREVIOUS_MODEL_ANNOTATION],
            state.PREVIOUS_MODEL_ANNOTATION: None,
        },
    )


def _api(settings: Settings) -> KserveApi:
    return KserveApi(connect(settings.kubeconfig, settings.context))


def _canary(api: KserveApi, settings: Settings, plan: Plan, auto_rollback: bool, io: Io) -> int:
    try:
        return _execute(api, settings, plan, io)
    except (RolloutFailed, WaitTimeout) as exc:
        if not auto_rollback or settings.dry_run:
            raise
        print(f"error: {exc}", file=io.err)
        print("auto-rollback: rolling back the canary", file=io.err)
        try:
            isvc = api.get_required(ISVC, settings.namespace, settings.name)
            _execute(api, settings, _rollback_plan(isvc, failed=True), io)
        except RolloutError as rollback_exc:
            # The canary's failure stays the exit code: it is what the operator must act on.
            print(f"error: auto-rollback failed too: {rollback_exc}", file=io.err)
            return int(exc.exit_code)
        print(f"canary rolled back after: {exc}", file=io.err)
        return int(exc.exit_code)


def _execute(api: KserveApi, settings: Settings, plan: Plan, io: Io) -> int:
    """Send `plan` (or print it under --dry-run) and wait for its expectation."""
    for warning in plan.warnings:
        print(f"warning: {warning}", file=io.err)
    if settings.dry_run:
        print(f"dry run: would {plan.summary} with this merge patch:", file=io.out)
        print(json.dumps(plan.patch, indent=2, sort_keys=True), file=io.out)
        return ExitCode.OK
    snap = _wait(api, settings, _send(api, settings, plan, io), plan.expect, io)
    print(report.as_text(snap), file=io.out)
    return ExitCode.OK


def _send(api: KserveApi, settings: Settings, plan: Plan, io: Io) -> dict[str, Any]:
    """Send `plan`'s patch (none when there is nothing to change); returns the object."""
    print(f"{settings.namespace}/{settings.name}: {plan.summary}", file=io.err)
    if plan.patch:
        return api.merge_patch(ISVC, settings.namespace, settings.name, plan.patch)
    print("the spec already says so: nothing to patch", file=io.err)
    return api.get_required(ISVC, settings.namespace, settings.name)


def _wait(
    api: KserveApi, settings: Settings, obj: dict[str, Any], expect: Expectation, io: Io
) -> Snapshot:
    meta = obj["metadata"]
    return wait_for(
        api,
        meta.get("namespace") or settings.namespace,
        meta["name"],
        int(meta.get("generation", 0)),
        expect,
        settings.timeout_s,
        settings.poll_interval_s,
        io.err,
    )


def _apply(
    api: KserveApi,
    settings: Settings,
    docs: list[dict[str, Any]],
    io: Io,
    with_model: bool = False,
) -> int:
    """Create or server-side apply each document (ServingRuntimes first), then wait for Ready.
    `with_model`: the documents carry a registry version (--model) to keep recorded."""
    applied = []
    for doc in sorted(docs, key=lambda d: d["kind"] != "ServingRuntime"):
        meta = doc.setdefault("metadata", {})
        meta.setdefault("namespace", settings.namespace)
        res, ns, name = APPLIABLE[doc["apiVersion"], doc["kind"]], meta["namespace"], meta["name"]
        live = api.get(res, ns, name)
        if live is None:
            result = api.create(res, ns, doc, dry_run=settings.dry_run)
        else:
            result = api.apply(res, ns, doc, dry_run=settings.dry_run)
        label = f"{doc['kind']}/{name}"
        if settings.dry_run:
            print(
                _diff(live or {}, result, f"{ns}/{label}") or f"# {ns}/{label}: no change",
                file=io.out,
            )
            continue
        print(f"{ns}/{label} {'created' if live is None else 'configured'}", file=io.err)
        result = _forget_recorded_spec(api, res, result, with_model)
        if doc["kind"] == "InferenceService":
            applied.append(result)
    for obj in applied:
        print(report.as_text(_wait(api, settings, obj, Expectation(), io)), file=io.out)
    return ExitCode.OK


def _forget_recorded_spec(
    api: KserveApi, res: Resource, obj: dict[str, Any], with_model: bool
) -> dict[str, Any]:
    """Drop a canary's recorded spec and versions: after `apply`, the overlay is the baseline
    (and the registry version it was given with --model, if any, the model served)."""
    meta = obj["metadata"]
    stale = [plans.PREVIOUS_SPEC_ANNOTATION, state.PREVIOUS_MODEL_ANNOTATION]
    if not with_model:
        stale.append(state.MODEL_ANNOTATION)
    present = [key for key in stale if key in (meta.get("annotations") or {})]
    if not present:
        return obj
    patch = {"metadata": {"annotations": dict.fromkeys(present)}}
    return api.merge_patch(res, meta["namespace"], meta["name"], patch)


def _diff(live: dict[str, Any], applied: dict[str, Any], label: str) -> str:
    """Unified diff of labels, annotations and spec between the live and the dry-run object."""

    def view(obj: dict[str, Any]) -> list[str]:
        meta = obj.get("metadata") or {}
        shown = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
        text = (
            yaml.safe_dump({"metadata": shown, "spec": obj.get("spec")}, sort_keys=True)
            if obj
            else ""
        )
        return text.splitlines()

    lines = difflib.unified_diff(
        view(live), view(applied), f"live/{label}", f"applied/{label}", lineterm=""
    )
    return "\n".join(lines)


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percents separated by commas, e.g. 10,25,50, got {text!r}"
        ) from None


def _duration(text: str) -> int:
    window = parse_duration(text)
    if window is None or window.total_seconds() < 1:
        raise argparse.ArgumentTypeError(
            f"expected a duration of at least 1 s such as {DURATION_EXAMPLES}, got {text!r}"
        )
    return int(window.total_seconds())


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
