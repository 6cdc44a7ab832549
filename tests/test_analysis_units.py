"""Canary analysis without servers: the checks' verdicts at and around their thresholds, the
PromQL they send, the step loop's decisions, and the Prometheus client's errors (against a
small HTTP server on loopback)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fakes.kube_api import FakeKube
from test_rollout import V2, fake, knative_isvc, predictor_env, run  # noqa: F401

from common.stats import two_proportion_z
from harness.servers import free_port
from rollout import analysis, progressive, prometheus
from rollout.analysis import Measurement, Outcome, Thresholds, judge
from rollout.errors import ExitCode
from rollout.prometheus import Prometheus, PrometheusError

T = Thresholds(min_requests=100, min_labels=100)


def m(
    version: str = "1",
    requests: float = 1000,
    errors: float = 0,
    p99_s: float | None = 0.05,
    labelled: float = 500,
    top1: float = 400,
) -> Measurement:
    return Measurement(version, requests, errors, p99_s, labelled, top1)


def outcomes(stable: Measurement, canary: Measurement, t: Thresholds = T) -> dict[str, Outcome]:
    return {c.name: c.outcome for c in judge(stable, canary, t).checks}


def test_a_canary_like_the_stable_passes_every_check() -> None:
    verdict = judge(m(), m("2"), T)
    assert verdict.outcome is Outcome.PASS
    assert [c.outcome for c in verdict.checks] == [Outcome.PASS] * 3


def test_a_few_errors_on_few_requests_are_not_yet_evidence() -> None:
    stable, canary = m(requests=100, errors=0), m("2", requests=100, errors=2)
    assert outcomes(stable, canary)["error ratio"] is Outcome.PASS  # 2% vs 0%: z = 1.4
    assert outcomes(stable, m("2", requests=100, errors=5))["error ratio"] is Outcome.FAIL


@pytest.mark.parametrize(
    ("canary_errors", "expected"),
    [(20, Outcome.PASS), (21, Outcome.FAIL), (50, Outcome.FAIL)],
)
def test_the_error_ratio_may_exceed_the_stable_by_one_point(
    canary_errors: float, expected: Outcome
) -> None:
    stable = m(errors=10)  # 1%
    assert outcomes(stable, m("2", errors=canary_errors))["error ratio"] is expected


@pytest.mark.parametrize(
    ("stable_p99", "canary_p99", "expected"),
    [
        (0.05, 0.075, Outcome.PASS),  # 1.5x: at the limit
        (0.05, 0.1, Outcome.FAIL),  # 2x and 50 ms more
        (0.01, 0.03, Outcome.PASS),  # 3x, but only 20 ms more: within the slack
        (0.01, 0.04, Outcome.FAIL),  # 4x and 30 ms more
        (0.5, 0.7, Outcome.PASS),  # 1.4x
    ],
)
def test_p99_fails_only_past_both_the_ratio_and_the_slack(
    stable_p99: float, canary_p99: float, expected: Outcome
) -> None:
    assert outcomes(m(p99_s=stable_p99), m("2", p99_s=canary_p99))["p99 latency"] is expected


def test_too_few_requests_on_either_side_waits_and_names_them() -> None:
    verdict = judge(m(requests=99, errors=50), m("2", requests=5000, errors=4000), T)
    assert verdict.outcome is Outcome.WAIT  # not FAIL: 99 requests judge nothing
    errors = verdict.checks[0]
    assert errors.outcome is Outcome.WAIT and "stable 99 requests < 100" in errors.detail
    assert judge(m(), m("2", p99_s=None), T).checks[1].outcome is Outcome.WAIT


def test_accuracy_fails_on_a_significant_drop_beyond_the_limit_and_skips_without_labels() -> None:
    stable = m(labelled=1000, top1=800)  # 80%
    assert outcomes(stable, m("2", labelled=1000, top1=700))["top-1 accuracy"] is Outcome.FAIL
    # 1 point lower: within the 2-point limit.
    assert outcomes(stable, m("2", labelled=1000, top1=790))["top-1 accuracy"] is Outcome.PASS
    # 6 points lower on 100 labels: beyond the limit but not significant (z < 1.96).
    small = m("2", labelled=100, top1=74)
    assert two_proportion_z(800, 1000, 74, 100) < 1.96
    assert outcomes(stable, small)["top-1 accuracy"] is Outcome.PASS
    skipped = judge(stable, m("2", labelled=99, top1=0), T)
    assert skipped.checks[2].outcome is Outcome.SKIP and skipped.outcome is Outcome.PASS
    assert "canary 99 < 100" in skipped.checks[2].detail


def test_a_failure_outweighs_a_wait() -> None:
    verdict = judge(m(requests=50), m("2", labelled=1000, top1=0), T)
    assert [c.outcome for c in verdict.checks] == [Outcome.WAIT, Outcome.WAIT, Outcome.FAIL]
    assert verdict.outcome is Outcome.FAIL


def test_the_queries_select_the_version_and_aggregate_to_one_series() -> None:
    q = analysis.queries('2"x', 300, 900, 'namespace="prod"')
    assert q["requests"] == (
        'sum(increase(predictor_requests_total{model_version="2\\"x",namespace="prod"}[300s]))'
    )
    assert 'code=~"5..|INTERNAL|' in q["errors"]
    assert q["p99_s"].startswith("histogram_quantile(0.99, sum by (le) (rate(")
    assert "[900s]" in q["labelled"] and 'outcome="top1"' in q["top1"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_error_increase": 1.5},
        {"max_latency_ratio": 0.9},
        {"min_requests": 0},
        {"latency_slack_s": -1},
        {"max_latency_ratio": float("nan")},
        {"latency_slack_s": float("nan")},
        {"max_accuracy_drop": float("inf")},
    ],
)
def test_thresholds_refuse_what_cannot_be_meant(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**kwargs)


# -- the step loop -------------------------------------------------------------------------------


def verdict_of(outcome: Outcome) -> analysis.Verdict:
    canary = {
        Outcome.PASS: m("2"),
        Outcome.FAIL: m("2", errors=500),
        Outcome.WAIT: m("2", requests=3),
    }[outcome]
    return judge(m(), canary, T)


def drive(
    schedule: progressive.Schedule, script: list[Outcome]
) -> tuple[progressive.Result, list[int], list[tuple[int, int]], str]:
    """Run the loop on scripted verdicts with a fake clock; (result, percents set, the
    (window, accuracy window) of each evaluation, the text printed)."""
    now = [1000.0]
    percents: list[int] = []
    windows: list[tuple[int, int]] = []
    pending = list(script)

    def evaluate(window: int, since: int) -> analysis.Verdict:
        windows.append((window, since))
        return verdict_of(pending.pop(0))

    def sleep(seconds: float) -> None:
        now[0] += seconds

    out = StringIO()
    result = progressive.run(
        schedule,
        percents.append,
        evaluate,
        progressive.Reporter(out, as_json=False),
        sleep=sleep,
        clock=lambda: now[0],
    )
    assert not pending, "the loop stopped before the script ended"
    return result, percents, windows, out.getvalue()


def test_every_step_passing_promotes_after_setting_each_later_step() -> None:
    schedule = progressive.Schedule((10, 25, 50), 60)
    result, percents, windows, text = drive(schedule, [Outcome.PASS] * 3)
    assert result.decision is progressive.Decision.PROMOTE and result.step == 3
    assert percents == [25, 50]  # the first step's traffic is the canary's own
    assert windows == [(60, 60), (60, 120), (60, 180)]  # accuracy over the whole analysis
    assert text.count("=> pass") == 3 and "step 3/3: canary at 50%" in text
    assert result.reason == "every step passed (10%, 25%, 50%)"


def test_a_promotion_names_the_checks_that_never_had_enough_samples() -> None:
    schedule = progressive.Schedule((10,), 60)
    now = [0.0]
    unlabelled = judge(m(labelled=0), m("2", labelled=0), T)
    result = progressive.run(
        schedule,
        lambda percent: None,
        lambda window, since: unlabelled,
        progressive.Reporter(StringIO(), as_json=False),
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        clock=lambda: now[0],
    )
    assert result.decision is progressive.Decision.PROMOTE
    assert result.reason.endswith("; never judged (too few samples): top-1 accuracy")


def test_a_wait_then_a_pass_moves_on_and_a_failure_stops_at_once() -> None:
    schedule = progressive.Schedule((10, 50), 30, waits=3)
    result, percents, windows, _ = drive(schedule, [Outcome.WAIT, Outcome.PASS, Outcome.FAIL])
    assert result.decision is progressive.Decision.ROLLBACK and result.step == 2
    assert percents == [50]
    assert result.reason.startswith("error ratio failed at step 2 (50%): canary 50.00%")
    # A step that waits judges all of itself again: more traffic, not the same amount.
    assert windows == [(30, 30), (60, 60), (30, 90)]


def test_waiting_past_the_allowed_windows_is_inconclusive() -> None:
    schedule = progressive.Schedule((10, 50), 30, waits=2)
    result, percents, _, _ = drive(schedule, [Outcome.WAIT, Outcome.WAIT])
    assert result.decision is progressive.Decision.INCONCLUSIVE and result.step == 1
    assert percents == [] and "after 2 windows of 30 s" in result.reason


def test_json_lines_carry_each_evaluation_and_the_decision() -> None:
    out = StringIO()
    reporter = progressive.Reporter(out, as_json=True)
    schedule = progressive.Schedule((10,), 5)
    reporter.evaluation(schedule, 1, 1, 1234.5, verdict_of(Outcome.FAIL))
    reporter.decision(progressive.Result(progressive.Decision.ROLLBACK, 1, "why"))
    first, last = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "evaluation" and first["outcome"] == "fail"
    assert first["canary"]["errors"] == 500 and first["checks"][0]["outcome"] == "fail"
    assert last == {"event": "decision", "decision": "rollback", "step": 1, "reason": "why"}


@pytest.mark.parametrize(
    ("steps", "message"),
    [((), "1 to 20 steps"), ((10, 100), "between 1 and 99"), ((50, 25), "must increase")],
)
def test_schedules_that_make_no_sense_are_refused(steps: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        progressive.Schedule(steps, 60)


# -- the Prometheus client -----------------------------------------------------------------------


@pytest.fixture
def prometheus_double() -> Iterator[tuple[str, dict[str, Any]]]:
    """An HTTP server answering /api/v1/query with whatever `answers[query]` (else
    `answers["*"]`) says."""
    answers: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)["query"][0]
            answer: Any = answers.get(query, answers.get("*"))
            assert answer is not None, f"no answer for {query}"
            # A list answers in turn (its last answer repeats); a callable decides each time.
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            status, body = answer() if callable(answer) else answer
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()


def vector(*values: str) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {}, "value": [0, v]} for v in values],
        },
    }


def test_the_client_reads_one_value_nothing_or_nan_as_none(
    prometheus_double: tuple[str, dict[str, Any]],
) -> None:
    url, answers = prometheus_double
    answers.update(
        {"one": (200, vector("2.5")), "none": (200, vector()), "nan": (200, vector("NaN"))}
    )
    answers["two"] = (200, vector("1", "2"))
    answers["bad"] = (400, {"status": "error", "errorType": "bad_data", "error": "parse error"})
    pauses: list[float] = []
    client = Prometheus(url, sleep=pauses.append)
    try:
        assert client.value("one", 0) == 2.5
        assert client.value("none", 0) is None and client.value("nan", 0) is None
        with pytest.raises(PrometheusError, match=r"expected one number, got .*2 series"):
            client.value("two", 0)
        answers["odd"] = (200, {"status": "success", "data": {"resultType": "matrix"}})
        with pytest.raises(PrometheusError, match="expected one number"):
            client.value("odd", 0)
        with pytest.raises(PrometheusError, match=r"refused 'bad': HTTP 400: bad_data parse error"):
            client.value("bad", 0)
    finally:
        client.close()
    assert pauses == []  # a refusal is final
    down = Prometheus(f"http://127.0.0.1:{free_port()}", sleep=pauses.append)
    with pytest.raises(PrometheusError, match=r"unreachable .* check --prometheus") as caught:
        down.value("up", 0)
    assert caught.value.exit_code == 3
    assert pauses == [1.0, 2.0, 4.0]  # tried four times


def test_the_client_tries_again_after_a_server_error(
    prometheus_double: tuple[str, dict[str, Any]],
) -> None:
    url, answers = prometheus_double
    answers["flaky"] = [(503, {"status": "error", "error": "restarting"}), (200, vector("7"))]
    client = Prometheus(url, sleep=lambda s: None)
    try:
        assert client.value("flaky", 0) == 7.0
    finally:
        client.close()


# -- the CLI when the analysis cannot go on ------------------------------------------------------

V3 = "gs://models/image-classifier/3"
STEADY = ["--analysis", "--steps", "50", "--interval", "1s", "--waits", "1"]
VERSIONS = ["--stable-version", "1", "--canary-version", "2"]


def test_prometheus_failing_mid_analysis_rolls_the_canary_back(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    prometheus_double: tuple[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, answers = prometheus_double
    monkeypatch.setattr(prometheus, "RETRY_PAUSES_S", (0.01, 0.01))
    queries = [0]

    def answer() -> tuple[int, dict[str, Any]]:
        queries[0] += 1  # the checks' first round (before any change) answers; then it dies
        if queries[0] <= 10:
            return 200, vector("1000")
        return 500, {"status": "error", "error": "out of memory"}

    answers["*"] = answer
    fake.seed(knative_isvc())
    code = run("canary", "--storage-uri", V2, *STEADY, *VERSIONS, "--prometheus", url)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "canary analysis stopped: rolling back the canary" in err
    assert fake.isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_a_canary_that_never_started_is_not_rolled_back_past_the_last_promote(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    prometheus_double: tuple[str, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, answers = prometheus_double
    answers["*"] = (200, vector("1000"))
    fake.seed(knative_isvc())
    assert run("canary", "--percent", "10", "--storage-uri", V2) == 0
    assert run("promote") == 0  # V2 in production; V1's spec stays recorded
    before = fake.isvc()

    def someone_else_writes(plural: str, namespace: str, name: str) -> None:
        fake.objects[(plural, namespace, name)]["metadata"]["resourceVersion"] = "9999"

    fake.before_patch = someone_else_writes
    capsys.readouterr()
    code = run("canary", "--storage-uri", V3, *STEADY, *VERSIONS, "--prometheus", url)
    assert code == ExitCode.REJECTED, capsys.readouterr().err
    assert fake.isvc()["spec"] == before["spec"]  # nothing sent, nothing "rolled back"
    assert predictor_env(fake.isvc()) == V2


def test_analyze_without_a_canary_in_progress_says_so(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.seed(knative_isvc())
    assert run("analyze", "--prometheus", "http://127.0.0.1:1") == 2
    assert "no canary in progress to judge" in capsys.readouterr().err
