"""`python -m batch`: both engines into real SQLite and PostgreSQL, kills, bad files, versions.

Every run is the real command in a process of its own (the --url engine imports
tritonclient.grpc, which cannot share this process with kserve), on the real model; the
in-process engine's rows are checked against the independent reference, the --url engine's
against the in-process engine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference
from batch_db import DATABASES, fresh_database, query
from conftest import DATA, MODEL_NAME, ROOT, Server, start_server

from batch.outcomes import Failure, Prediction
from batch.settings import Shard, parse, parse_shard
from batch.sources import Work, list_source, select, shard_of
from batch.store import Store
from common.modelrepo import resolve

GOOD = {
    "photos/coffee.jpg": "coffee.jpg",
    "photos/chelsea.jpg": "chelsea.jpg",
    "photos/deeper/rocket.jpg": "rocket.jpg",
    "astronaut.jpg": "astronaut.jpg",
    "camera.png": "camera.png",
}
BAD = {
    "broken.jpg": "truncated or corrupt",  # half a JPEG
    "notes.txt": "not a supported image",
}
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five photos (nested), a truncated JPEG, a text file and a dot file to ignore."""
    root = tmp_path_factory.mktemp("source")
    for key, name in GOOD.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / name, root / key)
    coffee = (DATA / "coffee.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(coffee[: len(coffee) // 2])
    (root / "notes.txt").write_text("a shopping list, not an image\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    """The reference probabilities of every good image, by key."""
    return {key: reference.probabilities((DATA / name).read_bytes()) for key, name in GOOD.items()}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX", "BATCH_DB_URL")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def batch(
    *args: str, timeout: float = RUN_TIMEOUT_S, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run `python -m batch ... --json`; returns (exit status, summary or {}, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "batch", *args, "--json", "--progress", "plain"],
        cwd=ROOT,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return done.returncode, summary, done.stderr


def local_args(source: Path, db: str, repo: Path, *extra: str) -> list[str]:
    return [str(source), "--db", db, "--model_dir", str(repo), "--model_name", MODEL_NAME, *extra]


def url_args(source: Path, db: str, target: str, model: str = MODEL_NAME, *extra: str) -> list[str]:
    return [
        str(source),
        "--db",
        db,
        "--url",
        target,
        "--model_name",
        model,
        "--model_version",
        "1",
        *extra,
    ]


def stored(db: str, version: str = "1") -> dict[str, tuple[Any, ...]]:
    rows = query(
        db,
        "SELECT image_key, sha256, class_id, label, score, top_k FROM predictions "
        "WHERE model_version = :version",
        version=version,
    )
    return {row[0]: row[1:] for row in rows}


def top_k_of(value: Any) -> list[dict[str, Any]]:
    """The top_k JSON column (a string on SQLite with raw SQL, a list on PostgreSQL)."""
    return json.loads(value) if isinstance(value, str) else list(value)


def assert_errors(db: str) -> None:
    errors = dict(query(db, "SELECT image_key, reason FROM batch_errors"))
    assert sorted(errors) == sorted(BAD)
    for key, fragment in BAD.items():
        assert fragment in errors[key], errors[key]


# ------------------------------------------------------------------------ pure parts


def test_shard_flags_and_job_index(source: Path) -> None:
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(Exception, match="INDEX/COUNT"):
            parse_shard(bad)
    base = [str(source), "--model_dir", "repo"]
    assert parse(base, environ={}).shard == Shard(0, 1)
    assert parse([*base, "--shard_count", "3"], {"JOB_COMPLETION_INDEX": "2"}).shard == Shard(2, 3)
    assert parse([*base, "--shard", "1/2"], {"JOB_COMPLETION_INDEX": "0"}).shard == Shard(1, 2)
    with pytest.raises(SystemExit):
        parse([*base, "--shard_count", "3"], {"JOB_COMPLETION_INDEX": "3"})
    settings = parse(base, environ={"BATCH_DB_URL": "sqlite:///x.db"})
    assert settings.db_url == "sqlite:///x.db"


def test_shards_partition_the_keys_stably(source: Path) -> None:
    keys = {f"dir{i % 7}/image{i}.jpg": Path("/dev/null") for i in range(1000)}
    parts = [select(keys, Shard(i, 4)) for i in range(4)]
    assert sum(len(p) for p in parts) == len(keys)
    assert set().union(*parts) == set(keys)
    assert min(len(p) for p in parts) > 200  # a hash, not a range: roughly even
    # Pinned: the same in every process and release (not Python's salted hash()); a change
    # would move keys between the shards of Jobs already running.
    assert [shard_of(f"k{i}", 3) for i in range(6)] == [0, 1, 2, 1, 2, 2]


def test_sources_from_directory_and_list(source: Path, tmp_path: Path) -> None:
    found = list_source(source)
    assert sorted(found.images) == sorted([*GOOD, *BAD])  # the dot file is ignored
    assert found.left_out == {}
    listing = tmp_path / "images.txt"
    listing.write_text(f"# photos\n{source / 'camera.png'}\n\nrelative/a.jpg\n")
    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "a.jpg").write_bytes(b"x")
    listed = list_source(listing)
    assert listed.left_out == {}
    assert listed.images == {
        (source / "camera.png").as_posix(): source / "camera.png",
        "relative/a.jpg": tmp_path / "relative" / "a.jpg",
    }


@pytest.mark.parametrize("kind", DATABASES)
def test_store_upserts_are_idempotent(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as db:
        store = Store(db)
        run = store.start_run("src", "m", "1", "model_dir", "0/1")
        good = Prediction("a.jpg", "f" * 64, (3, 1), ("three", "one"), (0.75, 0.25))
        bad = Failure("b.jpg", None, "not a supported image")
        for _ in range(2):
            store.write(run, "m", "1", [good], [bad])
        assert store.stored_hashes("m", "1", ["a.jpg", "b.jpg"]) == {"a.jpg": "f" * 64}
        assert store.stored_hashes("m", "2", ["a.jpg"]) == {}
        # The image is fixed and predicted: its error row goes, its prediction is replaced.
        fixed = Prediction("b.jpg", "e" * 64, (5,), ("five",), (1.0,))
        store.write(run, "m", "1", [fixed], [])
        store.close()
        assert query(db, "SELECT count(*) FROM predictions") == [(2,)]
        assert query(db, "SELECT count(*) FROM batch_errors") == [(0,)]
        (row,) = query(
            db, "SELECT class_id, label, score, top_k FROM predictions WHERE image_key = 'a.jpg'"
        )
        assert row[:3] == (3, "three", 0.75)
        assert top_k_of(row[3])[1] == {"class_id": 1, "label": "one", "score": 0.25}


# ------------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def first_run(
    source: Path, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, int, dict[str, Any], str]:
    """One in-process run into a new SQLite file: (URL, exit status, summary, stderr)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('first') / 'predictions.db'}"
    return (db, *batch(*local_args(source, db, model_repository)))


def check_in_process_run(
    db: str,
    source: Path,
    model_repository: Path,
    expected: dict[str, np.ndarray],
    status: int,
    summary: dict[str, Any],
    stderr: str,
) -> None:
    """Every photo predicted as the reference does, bad files recorded; a re-run skips."""
    labels = (model_repository / MODEL_NAME / "labels.txt").read_text().splitlines()
    assert status == 1, stderr  # 1: some images failed
    assert (summary["images"], summary["predicted"], summary["failed"]) == (7, 5, 2)
    rows = stored(db)
    assert sorted(rows) == sorted(GOOD)
    for key, (sha256, class_id, label, score, top_k) in rows.items():
        entries = top_k_of(top_k)
        assert len(entries) == 5
        reference.assert_matches(
            [e["class_id"] for e in entries], [e["score"] for e in entries], expected[key]
        )
        assert (class_id, label, score) == (
            entries[0]["class_id"],
            labels[class_id],
            entries[0]["score"],
        )
        assert sha256 == hashlib.sha256((source / key).read_bytes()).hexdigest()
    assert_errors(db)

    status, summary, stderr = batch(*local_args(source, db, model_repository))
    assert status == 1, stderr
    assert (summary["predicted"], summary["skipped"], summary["failed"]) == (0, 5, 2)
    assert stored(db) == rows
    runs = query(
        db,
        "SELECT status, engine, model_version, images, predicted, skipped, "
        "failed FROM batch_runs ORDER BY id",
    )
    assert runs == [
        ("finished", "model_dir", "1", 7, 5, 0, 2),
        ("finished", "model_dir", "1", 7, 0, 5, 2),
    ]


def test_model_dir_engine_sqlite(
    first_run: tuple[str, int, dict[str, Any], str],
    source: Path,
    model_repository: Path,
    expected: dict[str, np.ndarray],
) -> None:
    check_in_process_run(first_run[0], source, model_repository, expected, *first_run[1:])


def test_model_dir_engine_postgresql(
    source: Path, model_repository: Path, expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    with fresh_database("postgresql", tmp_path) as db:
        status, summary, stderr = batch(*local_args(source, db, model_repository))
        check_in_process_run(db, source, model_repository, expected, status, summary, stderr)


@pytest.mark.parametrize("kind", DATABASES)
def test_url_engine_matches_in_process(
    kind: str,
    source: Path,
    first_run: tuple[str, int, dict[str, Any], str],
    transformer: Server,
    tmp_path: Path,
) -> None:
    """The --url engine through the real transformer stores what the in-process engine does."""
    local_db = first_run[0]
    with fresh_database(kind, tmp_path) as db:
        status, summary, stderr = batch(
            *url_args(source, db, transformer.grpc_target, MODEL_NAME, "--concurrency", "4")
        )
        assert status == 1, stderr
        assert (summary["engine"], summary["predicted"], summary["failed"]) == ("url", 5, 2)
        remote, local = stored(db), stored(local_db)
        assert sorted(remote) == sorted(local) == sorted(GOOD)
        for key in GOOD:
            ours, theirs = remote[key], local[key]
            assert ours[:3] == theirs[:3]  # sha256, class_id, label
            assert ours[3] == pytest.approx(theirs[3], abs=2e-3)
        assert_errors(db)
        assert dict(query(db, "SELECT image_key, reason FROM batch_errors")) == dict(
            query(local_db, "SELECT image_key, reason FROM batch_errors")
        )


def test_url_engine_retries_then_stops(source: Path, tmp_path: Path) -> None:
    """Nothing listening: UNAVAILABLE is retried with backoff, then the job stops with 3."""
    import socket

    with socket.socket() as sock:  # a free port with nothing behind it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    status, _, stderr = batch(
        str(source),
        "--db",
        f"sqlite:///{tmp_path / 'p.db'}",
        "--url",
        f"127.0.0.1:{port}",
        "--model_version",
        "1",
        "--retries",
        "2",
        "--timeout",
        "2",
        timeout=60,
    )
    assert status == 3, stderr
    assert "UNAVAILABLE after 3 attempts" in stderr
    assert time.monotonic() - started < 30


def test_an_unreachable_database_stops_the_job_with_3(source: Path, model_repository: Path) -> None:
    """README: exit 3 when the database is unreachable (run it again to resume)."""
    import socket

    with socket.socket() as sock:  # a free port with no PostgreSQL behind it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = f"postgresql+psycopg://nobody:secret@127.0.0.1:{port}/predictions"
    started = time.monotonic()
    status, _, stderr = batch(*local_args(source, db, model_repository), timeout=120)
    assert status == 3, stderr[-2000:]
    assert f"127.0.0.1:{port}" in stderr or "connect" in stderr.lower(), stderr[-2000:]
    assert "secret" not in stderr  # the password is not logged
    assert time.monotonic() - started < 60


def interrupt(args: list[str], db: str, sig: signal.Signals, rows: int) -> int | None:
    """Start `args`, send `sig` once `rows` predictions are stored; returns the exit status."""
    job = subprocess.Popen(
        args, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    count = 0
    try:
        while count < rows and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                count = query(db, "SELECT count(*) FROM predictions")[0][0]
            except Exception:  # the schema may not exist yet
                count = 0
    finally:
        job.send_signal(sig)
        job.wait(60)
    return job.returncode


@pytest.mark.parametrize("kind", DATABASES)
def test_killed_run_resumes_exactly(
    kind: str, model_repository: Path, expected: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """SIGKILL mid-way (SIGTERM before it on SQLite), then run again: every image once, none
    missing, the content right."""
    copies = 16
    root = tmp_path / "many"
    for i in range(copies):
        for key, name in GOOD.items():
            target = root / f"copy{i:02d}" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / name, target)
    total = copies * len(GOOD)
    with fresh_database(kind, tmp_path) as db:
        args = [
            sys.executable,
            "-m",
            "batch",
            *local_args(
                root,
                db,
                model_repository,
                "--chunk_size",
                "8",
                "--batch_size",
                "4",
            ),
            "--progress",
            "plain",
        ]
        # SQLite also gets a SIGTERM first (Kubernetes deleting the pod): a clean stop.
        signals = (signal.SIGTERM, signal.SIGKILL) if kind == "sqlite" else (signal.SIGKILL,)
        before = 0
        for sig in signals:
            status = interrupt(args, db, sig, before + 8)
            count = query(db, "SELECT count(*) FROM predictions")[0][0]
            assert before < count < total, f"the {sig.name} was not mid-way: {count} of {total}"
            before = count
            last_run = query(db, "SELECT status, finished_at FROM batch_runs ORDER BY id")[-1]
            if sig == signal.SIGTERM:
                assert status == 3
                assert last_run[0] == "stopped" and last_run[1] is not None
            else:
                assert last_run == ("running", None)

        status, summary, stderr = batch(
            *local_args(root, db, model_repository, "--chunk_size", "8", "--batch_size", "4")
        )
        assert status == 0, stderr
        assert summary["skipped"] == before
        assert summary["predicted"] == total - before
        rows = query(db, "SELECT image_key, class_id, top_k FROM predictions")
        assert len(rows) == total
        assert len({row[0] for row in rows}) == total
        for key, _, top_k in rows:
            entries = top_k_of(top_k)
            base = key.split("/", 1)[1]
            reference.assert_matches(
                [e["class_id"] for e in entries], [e["score"] for e in entries], expected[base]
            )


def test_new_model_version_writes_beside_the_old(
    source: Path, model_repository: Path, tmp_path: Path
) -> None:
    """Version 2 appears in the repository: its rows go beside version 1's, which stay."""
    repo = tmp_path / "repository"
    shutil.copytree(
        model_repository / MODEL_NAME,
        repo / MODEL_NAME,
        symlinks=True,
        ignore=shutil.ignore_patterns("[0-9]*"),
    )
    for version in ("1", "2"):
        (repo / MODEL_NAME / version).mkdir()
        (repo / MODEL_NAME / version / "model.pt").symlink_to(
            model_repository / MODEL_NAME / "1" / "model.pt"
        )
    db = f"sqlite:///{tmp_path / 'p.db'}"
    status, summary, stderr = batch(*local_args(source, db, repo, "--model_version", "1"))
    assert status == 1, stderr
    v1 = query(db, "SELECT image_key, created_at FROM predictions WHERE model_version = '1'")
    status, summary, stderr = batch(*local_args(source, db, repo))  # the newest: 2
    assert status == 1, stderr
    assert (summary["model_version"], summary["predicted"]) == ("2", 5)
    assert (
        query(db, "SELECT image_key, created_at FROM predictions WHERE model_version = '1'") == v1
    )
    assert sorted(stored(db, "2")) == sorted(GOOD)
    assert query(
        db,
        "SELECT model_version, count(*) FROM predictions GROUP BY model_version "
        "ORDER BY model_version",
    ) == [("1", 5), ("2", 5)]


def test_model_dir_engine_runs_one_single_thread_instance_per_cpu(model_repository: Path) -> None:
    """On the CPU: one single-thread instance per CPU, at most 8 (then more threads each);
    the flags win where given."""
    from batch.runner import plan_runner  # imports torch

    version = resolve(model_repository, MODEL_NAME)
    expected = {  # (CPUs, --instances, --num_threads): (instances, threads each)
        (2, None, None): (2, 1),
        (64, None, None): (8, 8),
        (2, 3, None): (3, 1),
        (16, None, 4): (8, 4),
    }
    plans = {flags: plan_runner(version, *flags) for flags in expected}
    assert {key: (p.instances, p.execution.num_threads) for key, p in plans.items()} == expected
    assert all(p.on_cpu for p in plans.values())  # no GPU here


def test_model_dir_engine_reads_a_bounded_way_ahead(model_repository: Path, tmp_path: Path) -> None:
    """One single-thread TorchScript instance is several times slower than decoding small
    photos, yet the engine never holds more than `decode_ahead` images read ahead of the
    batches it runs: a job over a million images keeps the memory of a few batches."""
    from batch.local import LocalClassifier  # imports torch: only this test needs it

    photo = DATA / "chelsea.jpg"
    items = []
    for i in range(48):
        (tmp_path / f"{i:02d}.jpg").symlink_to(photo)
        items.append(Work(f"{i:02d}.jpg", tmp_path / f"{i:02d}.jpg", None))
    flags = ["--instances", "1", "--num_threads", "1", "--batch_size", "2", "--decode_workers", "2"]
    settings = parse(local_args(tmp_path, "sqlite://", model_repository, *flags))
    engine = LocalClassifier(settings)
    pulled = 0

    def work() -> Iterator[Work]:
        nonlocal pulled
        for item in items:
            pulled += 1
            yield item

    try:
        ahead = []
        outcomes = []
        for outcome in engine.classify(work()):
            outcomes.append(outcome)
            ahead.append(pulled - len(outcomes))
    finally:
        engine.close()
    assert sorted(o.key for o in outcomes) == sorted(i.key for i in items)
    assert all(isinstance(o, Prediction) for o in outcomes), outcomes
    # Decoding or decoded and waiting, plus the batches sent to the forward pass.
    bound = engine.decode_ahead + engine.forward_queue * engine.batch_size
    assert max(ahead) <= bound, (max(ahead), bound, ahead)


def test_url_engine_needs_neither_kserve_nor_torch() -> None:
    """The --url engine's modules load with torch blocked, and never pull kserve in (its
    protobuf package clashes with tritonclient.grpc's)."""
    code = (
        "import sys, batch.job, batch.remote, batch.store\n"
        "assert 'kserve' not in sys.modules, 'kserve was imported'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("without_torch.py")), "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_url_engine_stops_on_a_wrong_model_or_key(
    source: Path,
    model_repository: Path,
    predictor: Server,
    transformer: Server,
    tmp_path: Path,
) -> None:
    """What no image can get past stops the job with 2 (not one error row per image); the
    API key from $BATCH_API_KEY opens a transformer that requires one."""
    db = f"sqlite:///{tmp_path / 'p.db'}"
    status, _, stderr = batch(*url_args(source, db, transformer.grpc_target, "no-such-model"))
    assert status == 2, stderr
    assert "no-such-model" in stderr and "NOT_FOUND" in stderr

    key = "batch-test-key-0123456789"
    key_file = tmp_path / "keys.txt"
    key_file.write_text(key + "\n")
    keyed = start_server(
        "transformer",
        [
            *("--model_dir", str(model_repository), "--model_name", MODEL_NAME),
            *("--predictor_host", predictor.grpc_target, "--api_key_file", str(key_file)),
        ],
        tmp_path / "transformer-keyed.log",
        without_torch=True,
    )
    try:
        args = [str(source), "--db", db, "--url", keyed.grpc_target, "--model_version", "1"]
        status, _, stderr = batch(*args, env={"BATCH_API_KEY": "wrong-wrong-wrong-wrong"})
        assert status == 2, stderr
        assert "UNAUTHENTICATED" in stderr and "wrong-wrong" not in stderr
        status, summary, stderr = batch(*args, env={"BATCH_API_KEY": key})
        assert status == 1, stderr
        assert (summary["predicted"], summary["failed"]) == (5, 2)
    finally:
        keyed.stop()
