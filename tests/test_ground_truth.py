"""Ground truth end to end: real photos through real transformers with the prediction log on a
real SQLite file or PostgreSQL, labels posted later (or first), accuracy read back from the
metrics and the accuracy endpoint, two replicas on one database, a restart, the database
stopped under load, and bad label bodies.

The true classes are chosen from what the model answered: a label equal to the answer's top-1
is right, a class outside the answer's top 5 is deliberately wrong, so the expected accuracy is
known exactly without a labelled dataset.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import batch_db
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import MODEL_NAME, start_transformer
from test_observability import scrape, total
from test_serve_script import wait_until

from common.modelrepo import resolve
from harness.drift_images import encode, load_photos, variant
from harness.servers import ServerProcess as Server

PHOTOS = 60
LABELLED, WRONG = 50, 10
BASE = f"/v2/models/{MODEL_NAME}"
WRITTEN = "transformer_prediction_log_rows_written_total"
DROPPED = "transformer_prediction_log_rows_dropped_total"
LABELLED_TOTAL = "transformer_labelled_predictions_total"
WRITE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """60 distinct JPEGs: random crops and flips of the real photos (harness/drift_images)."""
    rng = np.random.default_rng(22)
    sources = load_photos()
    images = [encode(variant(sources[i % len(sources)], rng), rng) for i in range(PHOTOS)]
    assert len({hashlib.sha256(i).hexdigest() for i in images}) == PHOTOS
    return images


@pytest.fixture(params=batch_db.DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with batch_db.fresh_database(request.param, tmp_path) as url:
        yield url


def log_transformer(predictor: Server, repository: Path, log: Path, url: str) -> Server:
    """A transformer with the prediction log on `url`, handed over as the manifests do: in
    $PREDICTION_LOG_DB_URL (a Secret's key), never on the command line."""
    return start_transformer(
        predictor, repository, log, env={**os.environ, "PREDICTION_LOG_DB_URL": url}
    )


def predict_v1(server: Server, image: bytes, request_id: str | None = None) -> tuple[str, list]:
    """One V1 request: (the request id the transformer answered with, the top-k list)."""
    headers = {"x-request-id": request_id} if request_id else {}
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"image": {"b64": base64.b64encode(image).decode()}}]},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.json()["predictions"][0]


def predict_v2(server: Server, images: list[bytes], request_id: str) -> np.ndarray:
    """One V2 request of several images (tritonclient over HTTP); the top-k class ids."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    result = client.infer(MODEL_NAME, [tensor], request_id=request_id)
    assert result.get_response()["id"] == request_id
    return result.as_numpy("class_id")


def post_labels(server: Server, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{BASE}/labels", json=body, timeout=60)


def accuracy(server: Server, since: str = "1h") -> dict[str, Any]:
    response = httpx.get(f"{server.url}{BASE}/accuracy", params={"since": since}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def counted(server: Server) -> dict[str, float]:
    """transformer_labelled_predictions_total by outcome (model version 1)."""
    samples = scrape(server)
    return {
        outcome: samples.get((LABELLED_TOTAL, (("model_version", "1"), ("outcome", outcome))), 0.0)
        for outcome in ("top1", "top5", "wrong")
    }


def wait_written(server: Server, rows: float) -> None:
    wait_until(
        lambda: total(scrape(server), WRITTEN) >= rows,
        WRITE_TIMEOUT_S,
        f"{rows} predictions were not written to the log",
    )


def wrong_class(top: list[int], classes: int = 1000) -> int:
    """A class the answer did not rank in its top 5."""
    return next(c for c in range(classes) if c not in top[:5])


def test_sixty_photos_fifty_labels_ten_wrong_give_exact_counts_and_accuracy(
    predictor: Server, model_repository: Path, tmp_path: Path, photos: list[bytes], database: str
) -> None:
    server = log_transformer(predictor, model_repository, tmp_path / "transformer.log", database)
    try:
        answers: list[tuple[str, int, list[int]]] = []  # (request id, index, top-k ids)
        for image in photos[:40]:
            request_id, top = predict_v1(server, image)
            answers.append((request_id, 0, [entry["class_id"] for entry in top]))
        class_names = resolve(model_repository, MODEL_NAME).labels()
        for batch in range(4):  # 20 more in V2 requests of five images
            request_id = f"gt-v2-{batch}"
            ids = predict_v2(server, photos[40 + 5 * batch : 45 + 5 * batch], request_id)
            answers += [(request_id, i, [int(c) for c in row]) for i, row in enumerate(ids)]
        wait_written(server, PHOTOS)
        assert total(scrape(server), DROPPED) == 0

        right = answers[: LABELLED - WRONG]
        wrong = answers[LABELLED - WRONG : LABELLED]
        body: list[dict[str, Any]] = []
        by_name = 0
        for n, (request_id, index, top) in enumerate(right):
            # Every other label by class name (where labels.txt has it once), else by id.
            name = class_names[top[0]]
            label: int | str = top[0]
            if n % 2 and class_names.count(name) == 1:
                label, by_name = name, by_name + 1
            body.append({"id": request_id, "index": index, "label": label})
        assert by_name >= 5
        body += [{"id": r, "index": i, "label": wrong_class(top)} for r, i, top in wrong]
        response = post_labels(server, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["received"], answer["matched"], answer["pending"]) == (50, 50, 0)
        assert answer["replaced"] == 0
        assert all(item["status"] == "matched" for item in answer["labels"])

        assert counted(server) == {"top1": 40.0, "top5": 0.0, "wrong": 10.0}
        samples = scrape(server)
        delay_count = samples[("transformer_label_delay_seconds_count", (("model_version", "1"),))]
        assert delay_count == 50

        report = accuracy(server)
        [version] = report["versions"]
        assert (version["model_version"], version["labelled"]) == ("1", 50)
        assert version["outcomes"] == {"top1": 40, "top5": 0, "wrong": 10}
        assert version["top1"]["correct"] == 40 and version["top1"]["accuracy"] == 0.8
        # Wilson 95% for 40 of 50, worked by hand: centre 0.7786, half-width 0.1090.
        assert version["top1"]["ci95"] == pytest.approx([0.6696, 0.8876], abs=2e-4)
        assert version["top5"]["correct"] == 40  # the wrong ones are outside the top 5
        confusions = {
            (c["true"]["class_id"], c["predicted"]["class_id"]): c["count"]
            for c in version["confusions"]
        }
        assert confusions == Counter((wrong_class(top), top[0]) for _, _, top in wrong)
        bands = version["calibration"]
        assert sum(b["predictions"] for b in bands) == 50
        top1_in_bands = sum(round(b["top1_accuracy"] * b["predictions"]) for b in bands)
        assert top1_in_bands == 40

        rows = batch_db.query(
            database,
            "SELECT count(*), count(label_class_id) FROM served_predictions WHERE model_name = :m",
            m=MODEL_NAME,
        )
        assert rows == [(60, 50)]
        assert server.alive()
    finally:
        server.stop()


def test_labels_that_arrive_first_are_joined_when_the_prediction_is_logged(
    predictor: Server, model_repository: Path, tmp_path: Path, photos: list[bytes]
) -> None:
    with batch_db.fresh_database("sqlite", tmp_path) as url:
        server = log_transformer(predictor, model_repository, tmp_path / "t.log", url)
        try:
            early = post_labels(server, [{"id": "gt-early-1", "label": 1}])
            assert early.status_code == 200, early.text
            assert early.json()["labels"] == [
                {
                    "id": "gt-early-1",
                    "index": 0,
                    "status": "pending",
                    "predictions": 0,
                    "replaced": False,
                }
            ]
            digest = hashlib.sha256(photos[1]).hexdigest()
            by_content = post_labels(server, [{"sha256": digest, "label": 2}])
            assert by_content.json()["pending"] == 1
            assert counted(server) == {"top1": 0.0, "top5": 0.0, "wrong": 0.0}

            _, top_a = predict_v1(server, photos[0], request_id="gt-early-1")
            _, top_b = predict_v1(server, photos[1])
            wait_written(server, 2)
            expected = {"top1": 0.0, "top5": 0.0, "wrong": 0.0}
            for top, label in ((top_a, 1), (top_b, 2)):
                ids = [e["class_id"] for e in top]
                kind = "top1" if ids[0] == label else "top5" if label in ids[:5] else "wrong"
                expected[kind] += 1
            wait_until(
                lambda: sum(counted(server).values()) == 2,
                WRITE_TIMEOUT_S,
                "the early labels were not joined",
            )
            assert counted(server) == expected
            [version] = accuracy(server)["versions"]
            assert version["labelled"] == 2

            # A second label for the same prediction replaces the first, and says so.
            again = post_labels(server, [{"id": "gt-early-1", "label": top_a[0]["class_id"]}])
            assert again.json()["replaced"] == 1 and again.json()["matched"] == 1
            [version] = accuracy(server)["versions"]
            assert version["labelled"] == 2 and version["outcomes"]["top1"] >= 1
            # Counted once: the correction has its own counter.
            assert sum(counted(server).values()) == 2
        finally:
            server.stop()


def test_two_replicas_share_one_postgresql_count_each_label_once_and_survive_a_restart(
    predictor: Server, model_repository: Path, tmp_path: Path, photos: list[bytes]
) -> None:
    with batch_db.fresh_database("postgresql", tmp_path) as url:
        first = log_transformer(predictor, model_repository, tmp_path / "a.log", url)
        second = log_transformer(predictor, model_repository, tmp_path / "b.log", url)
        try:
            served = [predict_v1(first, image) for image in photos[:20]]
            wait_written(first, 20)
            body = [{"id": r, "label": top[0]["class_id"]} for r, top in served]
            answer = post_labels(second, body).json()
            assert answer["matched"] == 20
            # Labels first, at the first replica; predictions through the second.
            early = [{"id": f"gt-pair-{n}", "label": 0} for n in range(10)]
            assert post_labels(first, early).json()["pending"] == 10
            for n, image in enumerate(photos[20:30]):
                predict_v1(second, image, request_id=f"gt-pair-{n}")
            wait_written(second, 10)
            wait_until(
                lambda: sum(counted(first).values()) + sum(counted(second).values()) == 30,
                WRITE_TIMEOUT_S,
                "30 labelled predictions were not counted",
            )
            assert counted(first) == {"top1": 0.0, "top5": 0.0, "wrong": 0.0}
            assert counted(second)["top1"] >= 20
            before = accuracy(first)["versions"]
            assert before == accuracy(second)["versions"]
            assert before[0]["labelled"] == 30

            first.stop()
            first = log_transformer(predictor, model_repository, tmp_path / "a2.log", url)
            assert accuracy(first)["versions"] == before
            assert batch_db.query(url, "SELECT count(*) FROM served_predictions") == [(30,)]
            # A client id longer than the log's column is kept as its SHA-256, and the log
            # goes on (PostgreSQL would refuse the row, and the writer would retry it for ever).
            long_id = "x" * 300
            predict_v1(first, photos[30], request_id=long_id)
            predict_v1(first, photos[31])
            wait_written(first, 2)
            digest = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
            assert batch_db.query(
                url, "SELECT count(*) FROM served_predictions WHERE request_id = :r", r=digest
            ) == [(1,)]
        finally:
            first.stop()
            second.stop()


def test_a_stopped_database_under_load_answers_everything_counts_drops_and_resumes(
    predictor: Server, model_repository: Path, tmp_path: Path, photos: list[bytes]
) -> None:
    capacity = 20  # small, so that the outage overflows the buffer and the drops show
    with batch_db.private_postgresql(tmp_path) as cluster:
        server = start_transformer(
            predictor,
            model_repository,
            tmp_path / "t.log",
            "--prediction_log_capacity",
            str(capacity),
            env={**os.environ, "PREDICTION_LOG_DB_URL": cluster.url},
        )
        try:
            for image in photos[:5]:
                predict_v1(server, image)
            wait_written(server, 5)

            cluster.stop()
            statuses: list[int] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(timeout=60) as client:
                    n = 0
                    while not stop.is_set():
                        image = base64.b64encode(photos[n % len(photos)]).decode()
                        response = client.post(
                            f"{server.url}/v1/models/{MODEL_NAME}:predict",
                            json={"instances": [{"image": {"b64": image}}]},
                        )
                        statuses.append(response.status_code)
                        n += 1

            workers = [threading.Thread(target=load) for _ in range(4)]
            for worker in workers:
                worker.start()
            try:
                wait_until(
                    lambda: len(statuses) >= 3 * capacity,
                    120,
                    f"{3 * capacity} requests were not answered",
                )
                # Labels cannot be stored now: a fast 503 that says why.
                refused = post_labels(server, [{"sha256": "0" * 64, "label": 1}])
                assert refused.status_code == 503, refused.text
                assert "unavailable" in refused.json()["error"]
            finally:
                stop.set()
                for worker in workers:
                    worker.join()
            assert set(statuses) == {200}, sorted(set(statuses))
            samples = scrape(server)
            assert total(samples, WRITTEN) == 5
            dropped = total(samples, DROPPED)
            assert dropped >= len(statuses) - capacity
            assert "prediction log: " in server.tail(50_000)

            cluster.start()
            served = 5 + len(statuses)
            wait_written(server, served - dropped)
            assert total(scrape(server), WRITTEN) + total(scrape(server), DROPPED) == served
            rows = batch_db.query(cluster.url, "SELECT count(*) FROM served_predictions")
            assert rows == [(served - dropped,)]
            assert predict_v1(server, photos[0])[0]
            wait_written(server, served - dropped + 1)
            assert server.alive()
        finally:
            server.stop()


BAD_BODIES = [
    ({"id": "x", "label": 1}, "expected a JSON list"),
    ([], "empty list"),
    ([{"id": "x"}], 'no "label"'),
    ([{"id": "x", "label": 1000}], "no such class id"),
    ([{"id": "x", "label": "not-a-class"}], "'not-a-class': no class of that name"),
    ([{"id": "x", "label": 1.5}], "expected a class id"),
    ([{"id": "x", "label": True}], "expected a class id"),
    ([{"id": 7, "label": 1}], "expected the request id"),
    ([{"id": "has space", "label": 1}], "expected the request id"),
    ([{"id": "x", "index": -1, "label": 1}], "index -1"),
    ([{"id": "x", "index": "0", "label": 1}], "index '0'"),
    ([{"sha256": "abc", "label": 1}], "64 hexadecimal digits"),
    ([{"sha256": "0" * 64, "index": 0, "label": 1}], '"index" goes with "id" only'),
    ([{"id": "x", "sha256": "0" * 64, "label": 1}], "exactly one of"),
    ([{"image_key": "a.jpg", "label": 1}], "unknown field(s) ['image_key']"),
    ([{"id": "x", "label": 1, "extra": 2}], "unknown field(s) ['extra']"),
    (["x"], "expected an object"),
    ([{"id": "ok", "label": 1}, {"id": "bad", "label": -3}], "1 of 2 labels refused"),
    ([{"id": f"r{n}", "label": 1} for n in range(10_001)], "at most 10000"),
]


def test_bad_label_bodies_get_a_clear_400_and_nothing_is_written(
    predictor: Server, model_repository: Path, tmp_path: Path
) -> None:
    with batch_db.fresh_database("sqlite", tmp_path) as url:
        server = log_transformer(predictor, model_repository, tmp_path / "t.log", url)
        try:
            for body, expected in BAD_BODIES:
                response = post_labels(server, body)
                assert response.status_code == 400, (body, response.text)
                assert expected in response.json()["error"], (expected, response.json())
            not_json = httpx.post(f"{server.url}{BASE}/labels", content=b"{not json", timeout=10)
            assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
            other = httpx.post(f"{server.url}/v2/models/other/labels", json=[], timeout=10)
            assert other.status_code == 404
            for since in ("soon", "0s", "400d", "-1h"):
                response = httpx.get(f"{server.url}{BASE}/accuracy", params={"since": since})
                assert response.status_code == 400 and "since=" in response.json()["error"]
            assert accuracy(server)["versions"] == []
            assert batch_db.query(url, "SELECT count(*) FROM labels") == [(0,)]
            assert server.alive()
        finally:
            server.stop()


def test_without_the_prediction_log_labels_and_accuracy_say_how_to_turn_it_on(
    transformer: Server,
) -> None:
    for method, path in (("POST", "/labels"), ("GET", "/accuracy")):
        response = httpx.request(method, f"{transformer.url}{BASE}{path}", json=[], timeout=10)
        assert response.status_code == 501
        assert "--prediction_log_db" in response.json()["error"]
