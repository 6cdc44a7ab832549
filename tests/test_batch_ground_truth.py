"""`python -m batch labels` and `python -m batch evaluate` on real databases: labels in bulk for
batch predictions (by image key and by content) and for the online log (by request id), loaded
twice without changing anything, the report's counts, and bad files refused whole."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from batch_db import DATABASES, fresh_database, query
from conftest import DATA, MODEL_NAME, ROOT
from test_batch import GOOD, batch, clean_env, local_args, stored, top_k_of

from common.database import Database
from groundtruth.store import GroundTruthStore, ServedPrediction


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five good photos of the batch tests, nested as there."""
    root = tmp_path_factory.mktemp("photos")
    for key, name in GOOD.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes((DATA / name).read_bytes())
    return root


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def ground_truth(*args: str) -> tuple[int, str, str]:
    """Run `python -m batch <args>`; (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "batch", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_labels_load_idempotently_and_evaluate_counts_batch_and_online(
    photos: Path, model_repository: Path, database: str, tmp_path: Path
) -> None:
    status, summary, stderr = batch(*local_args(photos, database, model_repository))
    assert summary["predicted"] == 5
    assert status == 0, stderr
    predicted = stored(database)
    assert len(predicted) == 5
    # One online prediction, written by the prediction log's own code, to label by request id.
    store = GroundTruthStore(Database(database))
    store.write_predictions(
        [
            ServedPrediction(
                MODEL_NAME,
                "1",
                "req-1",
                0,
                "f" * 64,
                (3, 4, 5, 6, 7),
                (0.9, 0.04, 0.03, 0.02, 0.01),
                ("a", "b", "c", "d", "e"),
                datetime.now(UTC),
            )
        ]
    )
    store.db.close()

    keys = sorted(predicted)
    right_key, wrong_key, by_content, top5_key = keys[0], keys[1], keys[2], keys[3]
    wrong = next(
        c
        for c in range(1000)
        if c not in [e["class_id"] for e in top_k_of(predicted[wrong_key][4])]
    )
    second = top_k_of(predicted[top5_key][4])[1]["class_id"]
    content = hashlib.sha256((photos / by_content).read_bytes()).hexdigest()
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image_key,sha256,id,index,label\n"
        f"{right_key},,,,{predicted[right_key][1]}\n"
        f"{wrong_key},,,,{wrong}\n"
        f",{content},,,{predicted[by_content][1]}\n"
        f"{top5_key},,,,{second}\n"
        ",,req-1,0,3\n"
        ",,req-missing,0,5\n"
    )
    args = ["--db", database, "--model_dir", str(model_repository)]
    status, out, err = ground_truth("labels", str(csv), *args)
    assert status == 0, err
    first = json.loads(out)
    # Batch predictions by key and content, the online one by id; req-missing waits.
    assert (first["received"], first["matched"], first["pending"]) == (6, 5, 1)
    status, out, err = ground_truth("labels", str(csv), *args)
    again = json.loads(out)
    assert (again["received"], again["unchanged"], again["replaced"]) == (6, 6, 0)
    assert query(database, "SELECT count(*) FROM labels") == [(6,)]

    status, out, err = ground_truth("evaluate", *args, "--json")
    assert status == 0, err
    report = json.loads(out)
    by_source = {v["source"]: v for v in report["versions"]}
    batch_version = by_source["batch"]
    assert batch_version["labelled"] == 4
    assert batch_version["outcomes"] == {"top1": 2, "top5": 1, "wrong": 1}
    assert batch_version["top5"]["correct"] == 3
    assert by_source["online"]["outcomes"] == {"top1": 1, "top5": 0, "wrong": 0}
    [confusion] = batch_version["confusions"][:1]
    assert confusion["count"] == 1

    status, out, err = ground_truth("evaluate", *args)  # the table for people
    assert status == 0 and "top-1 0.500 (2; 95% CI" in out, out
    assert ground_truth("evaluate", *args, "--since", "1h", "--json")[0] == 0


def test_a_bad_labels_file_is_refused_whole_with_the_lines_named(
    model_repository: Path, tmp_path: Path
) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        csv = tmp_path / "labels.csv"
        csv.write_text("image_key,label\na.jpg,1\nb.jpg,no-such-class\nc.jpg,1001\n")
        status, out, err = ground_truth(
            "labels", str(csv), "--db", url, "--model_dir", str(model_repository)
        )
        assert status == 2, (out, err)
        assert "2 rows refused, none stored" in err
        assert "line 3:" in err and "'no-such-class'" in err and "line 4:" in err
        assert query(url, "SELECT count(*) FROM sqlite_master WHERE name = 'labels'") == [(0,)]

        csv.write_text("path,label\na.jpg,1\n")
        status, _, err = ground_truth(
            "labels", str(csv), "--db", url, "--model_dir", str(model_repository)
        )
        assert status == 2 and "expected a label column" in err
        status, _, err = ground_truth("labels", str(csv), "--db", url)
        assert status == 2 and "--model_dir is needed" in err
        status, _, err = ground_truth("evaluate", "--db", url, "--since", "soon")
        assert status == 2 and "expected a duration" in err
        status, _, err = ground_truth("evaluate", "--db", "mysql://x/y")
        assert status == 2 and ("not supported" in err or "not a usable" in err), err
