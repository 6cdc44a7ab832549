"""The ceiling benchmark: h2load's output, the report's ratios, the zero-cost model, and h2load
for real against the bare grpc.aio server and the real predictor (short windows, no timing
assertions). h2load comes from Debian's nghttp2-client (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import h2load
from bench.ceiling import (
    CeilingSettings,
    check_answer,
    image_request,
    measure_cell,
    pixels_request,
    wait_grpc_ready,
)
from bench.ceiling_report import BARE, PREDICTOR, CeilingCell, CeilingReport, DecodeRate
from bench.zero_model import export_zero_cost
from common.cli import DEFAULT_MODEL_NAME as MODEL_NAME
from common.modelrepo import resolve
from harness import needs
from harness.servers import ServerProcess, start

H2LOAD_OUTPUT = """starting benchmark...
Application protocol: h2c
finished in 2.48s, 732.50 req/s, 2.86MB/s
requests: 1465 total, 1465 started, 1465 done, 1465 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 1465 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 5.72MB (6003006) total, 5.48KB (5616) headers (space savings 96.09%), 6.83MB (7162424) data
"""


def test_grpc_frame_prefixes_flag_and_big_endian_length() -> None:
    assert h2load.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_parse_output_reads_the_summary() -> None:
    result = h2load.parse_output(H2LOAD_OUTPUT)
    assert result.requests_per_s == 732.5
    assert (result.done, result.succeeded, result.failed) == (1465, 1465, 0)
    assert result.total_bytes == 6003006
    assert result.short_answers(4005) == 0  # every answer carried a 4 KB logits frame
    assert result.short_answers(8005) == 1465 - 6003006 // 8005


def test_parse_output_says_what_it_got_when_the_summary_is_missing() -> None:
    with pytest.raises(ValueError, match="no summary"):
        h2load.parse_output("connect error\n")


@pytest.mark.parametrize(
    ("in_flight", "connections", "expected"), [(4, 4, (4, 1)), (64, 4, (4, 16)), (2, 4, (2, 1))]
)
def test_split_in_flight(in_flight: int, connections: int, expected: tuple[int, int]) -> None:
    assert h2load.split_in_flight(in_flight, connections) == expected


def test_split_in_flight_refuses_uneven_splits() -> None:
    with pytest.raises(ValueError, match="do not split evenly"):
        h2load.split_in_flight(6, 4)


def _cell(server: str, size: int, in_flight: int, rps: float, cpu: float) -> CeilingCell:
    return CeilingCell(server, size, in_flight, rps, 0, 0, cpu, 0.1, {server: cpu})


def test_report_ratios_targets_json_and_plot(tmp_path: Path) -> None:
    report = CeilingReport(
        environment={"available_cpus": 2},
        settings={},
        cells=[
            _cell(BARE, 1, 64, 3000.0, 0.5),
            _cell(PREDICTOR, 1, 64, 1500.0, 1.0),
            _cell(BARE, 8, 64, 1000.0, 1.0),
            _cell(PREDICTOR, 8, 64, 900.0, 1.5),
            _cell("transformer", 1, 64, 450.0, 4.0),
        ],
        decode=DecodeRate(500.0, 3.0, 2, 4.0, "a.jpg", 60_000),
        transformers=["transformer"],
    )
    assert report.predictor_over_bare(1, 64) == 0.5
    assert report.predictor_cpu_over_bare(1, 64) == 2.0
    assert report.find(PREDICTOR, 8, 64) is not None
    assert report.find(PREDICTOR, 8, 64).images_per_s == 7200.0  # type: ignore[union-attr]
    assert report.transformer_over_decode("transformer", 64) == 0.9
    assert report.transformer_cpu_over_decode("transformer", 64) == 0.75
    targets = {t.name: t for t in report.targets()}
    assert targets["predictor / bare, 1-image requests, 64 in flight"].met is False
    assert targets["transformer / decode-only rate (best)"].met is True
    table = report.format_table()
    assert "0.50x" in table and "0.90x" in table and "NOT met" in table
    report.write_json(tmp_path / "ceiling.json")
    data = json.loads((tmp_path / "ceiling.json").read_text())
    assert data["ratios"]["predictor_over_bare"]["1x64"] == 0.5
    assert data["cells"][1]["images_per_s"] == 1500.0
    report.plot(tmp_path / "ceiling.png")
    assert (tmp_path / "ceiling.png").read_bytes()[:4] == b"\x89PNG"


def test_zero_cost_model_keeps_the_contract(model_repository: Path, tmp_path: Path) -> None:
    from runtime.engines import build_engine
    from runtime.plan import NO_CUDA, plan_execution
    from runtime.tensors import run_one

    model_dir = export_zero_cost(model_repository, tmp_path, MODEL_NAME)
    real, zero = resolve(model_repository, MODEL_NAME), resolve(tmp_path, MODEL_NAME)
    assert zero.config == real.config
    assert zero.labels() == real.labels()
    assert (model_dir / "1" / "model.pt").is_file()
    runner = build_engine(zero, plan_execution("cpu", "auto", "auto", 1, NO_CUDA), 8)
    pixels = np.zeros((3, *real.config.inputs[0].dims), dtype=np.uint8)
    pixels[1, 0, 0, 0] = 200
    logits = run_one(runner, pixels)
    assert logits.shape == (3, real.config.outputs[0].dims[-1])
    assert logits.dtype == np.float32
    assert int(np.argmax(logits[1])) == logits.shape[1] - 1 and not logits[0].any()
    normalised = run_one(runner, np.ones((2, 3, 224, 224), dtype=np.float32))
    assert normalised.shape == (2, 1000)


@pytest.fixture(scope="module")
def h2load_path() -> str:
    found = shutil.which("h2load")
    if found is None:
        needs.missing(f"h2load is not installed: {h2load.INSTALL_HINT}")
    return found


def _settings(tmp_path: Path) -> CeilingSettings:
    return CeilingSettings(
        model_dir=tmp_path,
        model_name=MODEL_NAME,
        out=tmp_path,
        images_from=tmp_path,
        image_kind="original",
        in_flight=(4,),
        sizes=(1,),
        connections=2,
        warmup_s=0.3,
        duration_s=1.0,
        predictor_args=(),
        transformers=(),
    )


def test_h2load_against_the_bare_server(h2load_path: str, tmp_path: Path) -> None:
    bare = start("bare", "bench.bare_grpc", ["--classes", "1000"], tmp_path)
    try:
        wait_grpc_ready(bare)
        message = pixels_request(MODEL_NAME, "pixels__0", (224, 224, 3), 2)
        body = tmp_path / "pixels.grpc"
        body.write_bytes(h2load.grpc_frame(message))
        frame = check_answer(bare.grpc_target, message, "logits__0", 2)
        assert frame > 2 * 1000 * 4
        cell = measure_cell(BARE, [bare], bare.grpc_target, body, frame, 2, 4, _settings(tmp_path))
    finally:
        bare.stop()
    assert cell.requests_per_s > 0
    assert cell.images_per_s == 2 * cell.requests_per_s
    assert cell.errors == 0
    assert cell.server_cpu_ms_per_request is not None and cell.server_cpu_ms_per_request > 0


def test_h2load_failures_are_counted_from_the_bytes(
    h2load_path: str, predictor: ServerProcess, tmp_path: Path
) -> None:
    """A call the predictor refuses (an unknown model) is an HTTP/2 success for h2load; the
    cell must still count it as an error."""
    good = pixels_request(MODEL_NAME, "pixels__0", (224, 224, 3), 1)
    frame = check_answer(predictor.grpc_target, good, "logits__0", 1)
    bad = pixels_request("no-such-model", "pixels__0", (224, 224, 3), 1)
    with pytest.raises(RuntimeError, match="refused"):
        check_answer(predictor.grpc_target, bad, "logits__0", 1)
    body = tmp_path / "bad.grpc"
    body.write_bytes(h2load.grpc_frame(bad))
    cell = measure_cell(
        PREDICTOR, [predictor], predictor.grpc_target, body, frame, 1, 4, _settings(tmp_path)
    )
    assert cell.requests_per_s > 0
    assert cell.errors >= 0.9 * cell.requests_per_s * 1.0


def test_image_request_carries_one_length_prefixed_image() -> None:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest.FromString(image_request(MODEL_NAME, b"\xff\xd8jpeg"))
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("image", "BYTES", [1])
    ]
    assert request.raw_input_contents[0] == b"\x06\x00\x00\x00\xff\xd8jpeg"
