"""The c1 floor benchmark: the bare relay really forwards, and a short real run of bench.floor
(every server, every cell, the report's shape; no timing assertions)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import grpc
import pytest

from bench import floor
from bench.ceiling import pixels_request, wait_grpc_ready
from bench.h2load import MODEL_INFER_PATH
from common.cli import DEFAULT_MODEL_NAME as MODEL_NAME
from harness.servers import free_ports, start


def test_the_bare_relay_answers_only_through_its_upstream(tmp_path: Path) -> None:
    """A relay whose upstream answers, answers; one whose upstream is down fails every call
    with the upstream's connection error: each call really makes the second hop."""
    (nobody,) = free_ports(1)
    # Bound, never listening, for the whole test: no server started here can be given it.
    held = socket.socket()
    held.bind(("127.0.0.1", nobody))
    bare = start("bare", "bench.bare_grpc", [], tmp_path)
    relays = []
    try:
        wait_grpc_ready(bare)
        for name, upstream in (("relay", bare.grpc_target), ("orphan", f"127.0.0.1:{nobody}")):
            relays.append(start(name, "bench.bare_grpc", ["--relay_to", upstream], tmp_path))
        for relay in relays:
            wait_grpc_ready(relay)
        message = pixels_request(MODEL_NAME, "pixels__0", (224, 224, 3), 1)
        with grpc.insecure_channel(relays[0].grpc_target) as channel:
            answer = channel.unary_unary(MODEL_INFER_PATH)(message, timeout=10)
        assert len(answer) > 1000 * 4  # the FP32 [1, 1000] constant
        with grpc.insecure_channel(relays[1].grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(MODEL_INFER_PATH)(message, timeout=10)
        details = (refused.value.details() or "").lower()
        assert "failed to connect" in details and str(nobody) in details, details
    finally:
        for server in [*relays, bare]:
            server.stop()
        held.close()


def test_floor_measures_every_cell_and_writes_its_report(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--model_dir", str(model_repository), "--engine_dir", str(model_repository),
        "--rounds", "1", "--seconds", "0.3",
    ]  # fmt: skip
    assert floor.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "floor.json").read_text())
    cells = report["cells"]
    assert list(cells) == [
        "bare, one hop (pixels)",
        floor.BARE_TWO_HOPS,
        "our predictor (pixels)",
        "ours, two hops (original photo)",
        "ours, two hops (phone photo)",
    ]
    assert all(cell["p50_ms"] > 0 for cell in cells.values())
    assert set(cells[floor.BARE_TWO_HOPS]["cpu_ms_per_call"]) == {floor.RELAY, floor.BARE}
    ours = cells["ours, two hops (phone photo)"]["cpu_ms_per_call"]
    assert set(ours) == {floor.TRANSFORMER, floor.PREDICTOR}
    assert set(report["decode_ms"]) == set(report["hops_ms"]["ours"]) == {"original", "phone"}
    assert report["hops_ms"]["floor"] == cells[floor.BARE_TWO_HOPS]["p50_ms"]
    assert set(report["single_image_ms"]) == {"original", "phone"}
    ratios = report["p50_c1_over_single_image"]
    assert set(ratios) == {"original", "phone"}
    assert all(pair["floor"] > 1 for pair in ratios.values())
    printed = capsys.readouterr().out
    assert "two hops cost (ms): floor" in printed and "p50 c1 / single image, phone" in printed
