"""Canary analysis end to end: a real Prometheus (Debian's package) scraping two real
predictor + transformer pairs on loopback, "stable" (version 1 of the model repository) and
"canary" (version 2 of it), steady V1 traffic through both transformers, labels posted by
content into the shared prediction log (PostgreSQL), and `canary --analysis` stepping the
InferenceService through the fake Kubernetes API and deciding from Prometheus' answers.

Each scenario makes its own condition, whatever this CPU's speed: the faulty canary's every
20th forward pass raises, the slow one's passes take twice as long and at least 150 ms more, the
less accurate one is the same network with its classes shifted by one (tests/off_by_one.py),
and "no traffic" sends none. Every scenario gets its own Prometheus, so no canary's series
outlive it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import batch_db
import held_forward
import httpx
import pytest
from conftest import MODEL_NAME, start_server, start_transformer
from fakes.kube_api import FakeKube
from test_rollout import fake, knative_isvc, predictor_env, run  # noqa: F401

from common.modelrepo import MODEL_FILE
from harness.drift_images import photo_files
from harness.prometheus import PrometheusProcess, Target, start_prometheus
from harness.repositories import version_repository
from harness.servers import ServerProcess as Server
from rollout.cli import main

STABLE, CANARY = "1", "2"
CANARY_URI = "gs://models/image-classifier/2"
# Two windows of 5 s per step at most; each side sends about 16 requests a second.
WINDOW = [
    "--interval", "6s",
    "--stable-version", STABLE,
    "--min-requests", "30",
    "--min-labels", "20",
]  # fmt: skip
ANALYZE = [*WINDOW, "--canary-version", CANARY]  # `analyze`: one window judged
STEPPED = ["--analysis", "--steps", "25,50", "--waits", "3"]
ANALYSIS = [*STEPPED, *ANALYZE]
# Where latency is not what a scenario tests, a p99 is about the slowest request or two of a
# window on this busy machine (4 servers, Prometheus, PostgreSQL on 2 CPUs): only a difference
# far past that noise fails. The slow canary is judged with the defaults.
LATENCY_NOISE = ["--max-latency-ratio", "3", "--latency-slack", "0.25"]
CLIENTS_PER_PAIR, PACE_S = 2, 0.125
# Nothing waits for endpoints to move on loopback: the servers stop at once.
NO_DRAIN = ("--drain_seconds", "0")
# 10% of forward passes. At 5% the few requests a slow CI machine sends in one window were not
# always a significant difference: one clean-clone CI run promoted that canary.
FAIL_EVERY = 10
SLOW_DOWN_S = 0.15


@pytest.fixture(scope="module")
def log_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL database for both transformers' prediction logs, as replicas share it."""
    with batch_db.fresh_database("postgresql", tmp_path_factory.mktemp("canary-db")) as url:
        yield url


Pair = tuple[Server, Server]


@contextmanager
def pair(
    repository: Path,
    log_dir: Path,
    log_db: str,
    env: dict[str, str] | None = None,
    transformer_repository: Path | None = None,
) -> Iterator[Pair]:
    """A real predictor (`env`: its environment) and a transformer in front of it that logs
    predictions to `log_db`, reading `transformer_repository` (default: the predictor's)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    predictor = start_server(
        "predictor",
        ["--model_dir", str(repository), "--model_name", MODEL_NAME, *NO_DRAIN],
        log_dir / "predictor.log",
        env=env,
    )
    try:
        transformer = start_transformer(
            predictor,
            transformer_repository or repository,
            log_dir / "transformer.log",
            *NO_DRAIN,
            env={**os.environ, "PREDICTION_LOG_DB_URL": log_db},
        )
    except Exception:
        predictor.stop()
        raise
    try:
        yield predictor, transformer
    finally:
        transformer.stop()
        predictor.stop()


@pytest.fixture(scope="module")
def model_file(model_repository: Path) -> Path:
    return model_repository / MODEL_NAME / "1" / MODEL_FILE


@pytest.fixture(scope="module")
def stable_repository(
    model_repository: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("stable-repo")
    return version_repository(model_repository, root, STABLE, model_file)


@pytest.fixture(scope="module")
def stable(
    stable_repository: Path, log_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    with pair(stable_repository, tmp_path_factory.mktemp("stable-logs"), log_db) as servers:
        yield servers


@contextmanager
def canary_pair(
    model: Path,
    model_repository: Path,
    stable_repository: Path,
    log_db: str,
    directory: Path,
    env: dict[str, str] | None = None,
) -> Iterator[Pair]:
    """A predictor serving `model` as version 2, behind a transformer that still reads the
    stable repository (version 1), as KServe's transformer does until the canary is promoted:
    the versions it logs are the ones that answered."""
    repository = version_repository(model_repository, directory / "repo", CANARY, model)
    with pair(
        repository, directory / "logs", log_db, env, transformer_repository=stable_repository
    ) as servers:
        yield servers


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in photo_files()]


@pytest.fixture(scope="module")
def labelled(stable: Pair, photos: list[bytes]) -> dict[str, int]:
    """Each photo labelled, by content, with the stable version's top-1 (the reference answer):
    every later prediction of it, by either version, is joined when it is logged."""
    truth = {}
    for image in photos:
        top = predict(stable[1], image).json()["predictions"][0]
        truth[hashlib.sha256(image).hexdigest()] = int(top[0]["class_id"])
    body = [{"sha256": digest, "label": label} for digest, label in truth.items()]
    response = httpx.post(f"{stable[1].url}/v2/models/{MODEL_NAME}/labels", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return truth


def predict(server: Server, image: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]},
        timeout=30,
    )


@contextmanager
def traffic(
    transformers: list[Server], photos: list[bytes], clients: tuple[int, ...] = ()
) -> Iterator[Counter[str]]:
    """Steady V1 traffic through each transformer (`clients` for each, CLIENTS_PER_PAIR by
    default; one request per PACE_S each) until the block ends; yields the answers' status
    codes by transformer port."""
    stop = threading.Event()
    codes: Counter[str] = Counter()

    def client(server: Server, offset: int) -> None:
        n = offset
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                image = photos[n % len(photos)]
                body = {"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]}
                response = http.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json=body)
                codes[f"{server.http_port}:{response.status_code}"] += 1
                n += 1
                stop.wait(max(0.0, PACE_S - (time.monotonic() - started)))

    threads = [
        threading.Thread(target=client, args=(server, i), daemon=True)
        for server, count in zip(
            transformers, clients or (CLIENTS_PER_PAIR,) * len(transformers), strict=True
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        yield codes
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


@contextmanager
def scraped(stable: Pair, canary: Pair, directory: Path) -> Iterator[PrometheusProcess]:
    """A Prometheus of its own scraping both pairs; the `track` label stands for what a
    PodMonitor's relabelling adds (the queries select by the servers' own model_version)."""
    jobs = {
        component: [
            Target(servers[i].url.removeprefix("http://"), {"track": track})
            for track, servers in (("stable", stable), ("canary", canary))
        ]
        for i, component in enumerate(("predictor", "transformer"))
    }
    server = start_prometheus(jobs, directory)
    try:
        server.wait_for('up{job="predictor"} == 1')
        yield server
    finally:
        server.stop()


def flowing(prometheus: PrometheusProcess) -> None:
    """Return once Prometheus has seen both versions' request counts grow: the analysis starts
    on a canary already in traffic, as it does after `canary` in a cluster."""
    for version in (STABLE, CANARY):
        prometheus.wait_for(
            f'sum(increase(predictor_requests_total{{model_version="{version}"}}[3s])) > 0'
        )


def canary_args(prometheus: PrometheusProcess, *extra: str) -> list[str]:
    """`canary` of CANARY_URI with the scenarios' analysis flags, judged by `prometheus`."""
    return [
        "canary",
        "--storage-uri",
        CANARY_URI,
        *ANALYSIS,
        "--prometheus",
        prometheus.url,
        *extra,
    ]


def analyse(
    run: Any,  # noqa: F811
    prometheus: PrometheusProcess,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, list[dict[str, Any]]]:
    """`canary --storage-uri ... --analysis --json` against the fake; (exit code, JSON lines)."""
    capsys.readouterr()
    code = run(*canary_args(prometheus, "--json", *extra))
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def checks(evaluation: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["outcome"] for c in evaluation["checks"]}


def canary_percent(fake: FakeKube) -> int | None:  # noqa: F811
    return fake.isvc()["spec"]["predictor"].get("canaryTrafficPercent")


@pytest.fixture
def healthy_canary(
    model_repository: Path,
    stable_repository: Path,
    model_file: Path,
    log_db: str,
    tmp_path: Path,
) -> Iterator[Pair]:
    with canary_pair(model_file, model_repository, stable_repository, log_db, tmp_path) as pair:
        yield pair


def test_a_healthy_canary_is_stepped_through_and_promoted(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    stable: Pair,
    healthy_canary: Pair,
    labelled: dict[str, int],
    photos: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.seed(knative_isvc())
    with (
        scraped(stable, healthy_canary, tmp_path / "prometheus") as prometheus,
        traffic([stable[1], healthy_canary[1]], photos) as codes,
    ):
        flowing(prometheus)
        capsys.readouterr()
        code = run(*canary_args(prometheus, *LATENCY_NOISE))
        printed = capsys.readouterr()
        # `analyze` judges the last window once and changes nothing (no cluster call is needed
        # when both versions are given).
        judged = main(
            ["analyze", *ANALYZE, *LATENCY_NOISE, "--prometheus", prometheus.url, "--json"]
        )
        analyzed = json.loads(capsys.readouterr().out)
    assert code == 0, printed.out + printed.err
    assert all(key.endswith(":200") for key in codes), codes
    # Both steps passed on every check (accuracy from the labels too: the one transformer in
    # front of the canary logged its answers as version 2), then promoted.
    assert "step 1/2: canary at 25%" in printed.out and "step 2/2: canary at 50%" in printed.out
    assert printed.out.count("=> pass") == 2, printed.out
    for name in ("error ratio", "p99 latency", "top-1 accuracy"):
        assert re.search(rf"^  {name} +pass  ", printed.out, re.MULTILINE), printed.out
    assert "skip" not in printed.out and "fail" not in printed.out, printed.out
    assert "decision: promote: every step passed (25%, 50%)" in printed.out
    percents = [
        w.body["spec"]["predictor"].get("canaryTrafficPercent", "unset")
        for w in fake.writes()
        if w.method == "PATCH" and "predictor" in (w.body.get("spec") or {})
    ]
    assert percents == [25, 50, None], percents  # the canary, its second step, the promote
    isvc = fake.isvc()
    assert canary_percent(fake) is None and predictor_env(isvc) == CANARY_URI
    assert judged == 0 and analyzed["outcome"] == "pass", analyzed
    assert analyzed["canary"]["version"] == CANARY and analyzed["canary"]["requests"] >= 30


def test_a_canary_without_traffic_is_inconclusive_and_rolled_back(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    stable: Pair,
    healthy_canary: Pair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.seed(knative_isvc())
    with scraped(stable, healthy_canary, tmp_path / "prometheus") as prometheus:
        code, lines = analyse(run, prometheus, capsys, "--interval", "2s")
    assert code == 10, lines
    evaluations = [line for line in lines if line["event"] == "evaluation"]
    assert len(evaluations) == 3  # --waits 3 at the first step, then it gives up
    assert all(checks(e)["error ratio"] == "wait" for e in evaluations)
    assert lines[-1]["decision"] == "inconclusive" and lines[-1]["step"] == 1
    assert canary_percent(fake) == 0  # rolled back: all traffic on the stable revision


def failing_scenario(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    stable: Pair,
    canary: Pair,
    photos: list[bytes],
    tmp_path: Path,
    clients: tuple[int, ...] = (),
    extra: tuple[str, ...] = tuple(LATENCY_NOISE),
) -> tuple[dict[str, str], dict[str, Any]]:
    """Run the analysis on a canary that must fail; (its checks' outcomes, the failing
    evaluation)."""
    fake.seed(knative_isvc())
    with (
        scraped(stable, canary, tmp_path / "prometheus") as prometheus,
        traffic([stable[1], canary[1]], photos, clients),
    ):
        flowing(prometheus)
        code, lines = analyse(run, prometheus, capsys, *extra)
    assert code == 9, lines
    evaluation = [line for line in lines if line["event"] == "evaluation"][-1]
    assert evaluation["outcome"] == "fail"
    assert lines[-1]["decision"] == "rollback" and lines[-1]["step"] == evaluation["step"]
    assert canary_percent(fake) == 0
    return checks(evaluation), evaluation


def test_a_canary_failing_ten_percent_of_requests_is_rolled_back(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    stable: Pair,
    labelled: dict[str, int],
    model_repository: Path,
    stable_repository: Path,
    model_file: Path,
    log_db: str,
    photos: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    faulty = held_forward.faulty_env(fail_every=FAIL_EVERY)
    with canary_pair(
        model_file, model_repository, stable_repository, log_db, tmp_path, faulty
    ) as canary:
        outcomes, evaluation = failing_scenario(fake, run, capsys, stable, canary, photos, tmp_path)
    assert outcomes["error ratio"] == "fail", evaluation
    assert evaluation["canary"]["errors"] >= 1 and evaluation["stable"]["errors"] == 0
    assert outcomes["p99 latency"] != "fail" and outcomes["top-1 accuracy"] != "fail"


def test_a_canary_twice_as_slow_is_rolled_back(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    stable: Pair,
    labelled: dict[str, int],
    model_repository: Path,
    stable_repository: Path,
    model_file: Path,
    log_db: str,
    photos: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slow = held_forward.faulty_env(slow_down_s=SLOW_DOWN_S)
    with canary_pair(
        model_file, model_repository, stable_repository, log_db, tmp_path, slow
    ) as canary:
        # More clients on the slow canary: its passes batch them, so it sees enough requests.
        outcomes, evaluation = failing_scenario(
            fake,
            run,
            capsys,
            stable,
            canary,
            photos,
            tmp_path,
            clients=(CLIENTS_PER_PAIR, 4),
            extra=(),  # the default latency thresholds
        )
    assert outcomes == {"error ratio": "pass", "p99 latency": "fail", "top-1 accuracy": "pass"}
    assert evaluation["canary"]["p99_s"] > 1.5 * evaluation["stable"]["p99_s"]


def test_a_less_accurate_canary_is_rolled_back_on_its_labels(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    stable: Pair,
    labelled: dict[str, int],
    model_repository: Path,
    stable_repository: Path,
    model_file: Path,
    log_db: str,
    photos: list[bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import off_by_one

    shifted = tmp_path / "off-by-one.pt"
    off_by_one.write(model_file, shifted)
    with canary_pair(shifted, model_repository, stable_repository, log_db, tmp_path) as canary:
        outcomes, evaluation = failing_scenario(fake, run, capsys, stable, canary, photos, tmp_path)
    assert outcomes == {"error ratio": "pass", "p99 latency": "pass", "top-1 accuracy": "fail"}
    assert evaluation["stable"]["top1"] == evaluation["stable"]["labelled"] > 0
    assert evaluation["canary"]["top1"] == 0


# -- refusals before anything changes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--percent", "10"], "--analysis sets the canary's traffic from --steps"),
        (["--prometheus", ""], "canary analysis needs --prometheus URL"),
        (["--canary-version", "1"], "both serve model_version '1'"),
        (["--steps", "50,10"], "steps must increase"),
        (["--max-latency-ratio", "0.5"], "max_latency_ratio must be a finite number >= 1"),
    ],
)
def test_analysis_flags_that_make_no_sense_change_nothing(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    fake.seed(knative_isvc())
    with start_prometheus({}, tmp_path / "prometheus") as prometheus:
        code = run(
            "canary", "--storage-uri", CANARY_URI, *ANALYSIS, "--prometheus", prometheus.url, *args
        )
    assert code == 2
    assert message in capsys.readouterr().err
    assert fake.writes() == []


def test_a_missing_canary_version_and_an_unreachable_prometheus_change_nothing(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.seed(knative_isvc())
    stripped = [*STEPPED, *WINDOW]
    code = run(
        "canary", "--storage-uri", CANARY_URI, *stripped, "--prometheus", "http://127.0.0.1:1"
    )
    assert code == 2 and "give --canary-version" in capsys.readouterr().err
    code = run(
        "canary", "--storage-uri", CANARY_URI, *ANALYSIS, "--prometheus", "http://127.0.0.1:1"
    )
    assert code == 3 and "Prometheus http://127.0.0.1:1 unreachable" in capsys.readouterr().err
    assert fake.writes() == []


@pytest.mark.parametrize("when", ["patch in flight", "canary in place"])
def test_sigterm_during_the_analysis_rolls_the_canary_back(
    fake: FakeKube,  # noqa: F811
    run: Any,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A cancelled CI job stops `canary --analysis` with SIGTERM: the canary it put in place is
    rolled back before it exits 143. "patch in flight": the signal comes while the fake API
    server has stored the canary but not yet answered the PATCH (the CLI holds the signal until
    it knows the patch took); "canary in place": once the canary is stored, while the analysis
    waits for its first window. Prometheus is real and reachable; what it would answer does
    not matter here."""
    fake.seed(knative_isvc())
    caught: list[int] = []
    # Ours while the CLI's is not installed: a stray signal must not end pytest itself.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    done = threading.Event()
    killer: threading.Thread | None = None
    if when == "patch in flight":
        handle = fake.handle

        def answer_after_sigterm(
            method: str, raw_path: str, content_type: str, raw_body: bytes
        ) -> tuple[int, Any]:
            answer = handle(method, raw_path, content_type, raw_body)
            if method == "PATCH" and canary_percent(fake) == 25 and not done.is_set():
                done.set()  # once: the rollback's PATCH is answered normally
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the CLI is still waiting for this answer
            return answer

        monkeypatch.setattr(fake, "handle", answer_after_sigterm)
    else:

        def terminate_once_the_canary_is_in() -> None:
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                if canary_percent(fake) is not None:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=terminate_once_the_canary_is_in)
        killer.start()
    prometheus = start_prometheus({}, tmp_path / "prometheus")
    try:
        code = run(*canary_args(prometheus), timeout=60)
    finally:
        done.set()
        if killer is not None:
            killer.join()
        prometheus.stop()
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert code == 143, err
    assert caught == [], "SIGTERM arrived while the CLI was not listening for it"
    assert "terminated by SIGTERM" in err and "rolling back the canary" in err, err
    percents = [
        w.body["spec"]["predictor"].get("canaryTrafficPercent", "unset")
        for w in fake.writes()
        if w.method == "PATCH" and "predictor" in (w.body.get("spec") or {})
    ]
    # The canary's first step was in place, then the rollback: all traffic on the stable
    # revision, as after a failed analysis.
    assert percents == [25, 0], percents
    assert canary_percent(fake) == 0
