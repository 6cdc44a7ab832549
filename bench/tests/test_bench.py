"""The benchmark's pure parts: statistics, ratios, targets, the image set, report formatting.

No servers and no timing assertions. Only modules that import neither kserve nor
tritonclient.grpc are imported here (pytest shares its process with kserve-importing tests).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.batch import BatchResult, BatchRun, Pair, median_pair
from bench.engines import (
    ONNX_FP32,
    OPENVINO_FP32,
    OPENVINO_INT8,
    TORCHSCRIPT,
    EngineRun,
    default_engine_targets,
)
from bench.images import (
    ORIGINAL,
    PHONE,
    PHONE_LONG_SIDE,
    PHONE_SHORT_SIDE,
    BenchImage,
    build_image_set,
    crop_to_aspect,
    describe,
    mean_size_bytes,
    phone_size,
    write_image_set,
)
from bench.observe import cpu_shares, histogram_totals, mean_between
from bench.report import Report
from bench.stats import (
    HOP_BYTES_MAX,
    PEER,
    SERVED,
    V1_JSON,
    V2_GRPC,
    CellResult,
    HopResult,
    LimitPoint,
    LimitResult,
    Target,
    compute_ratios,
    evaluate_targets,
    median_by_kind,
    percentile,
    ratio,
    summarize,
)
from harness.servers import ROOT

DATA = ROOT / "tests" / "data"  # the photos the test suite shares


# --- statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q: float) -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_of_two() -> None:
    assert percentile([4.0], 99) == 4.0
    assert percentile([10.0, 20.0], 50) == 15.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_empty_input_and_bad_q(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summarize_reports_milliseconds() -> None:
    summary = summarize([0.010, 0.020, 0.030, 0.040])
    assert summary.count == 4
    assert summary.p50_ms == pytest.approx(25.0)
    assert summary.mean_ms == pytest.approx(25.0)
    assert summary.p99_ms == pytest.approx(39.7)


def test_summarize_of_nothing_is_nan() -> None:
    summary = summarize([])
    assert summary.count == 0 and math.isnan(summary.p50_ms)


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(float("nan"), 1.0) is None


def test_median_by_kind_groups_in_first_seen_order() -> None:
    medians = median_by_kind([("phone", 30.0), ("original", 10.0), ("phone", 40.0)])
    assert list(medians) == ["phone", "original"]
    assert medians == {"phone": 35.0, "original": 10.0}


# --- ratios and targets -------------------------------------------------------------------


def limit_result(best_ips: float = 50.0, single_ms: float = 30.0) -> LimitResult:
    points = (
        LimitPoint(1, 30, 1.0, 30.0, single_ms),
        LimitPoint(8, 400, 400 / best_ips, best_ips, 160.0),
    )
    return LimitResult(points, single_ms, 8.0, 22.0, 2)


def cell(
    pipeline: str, protocol: str, concurrency: int, ips: float, p50: float, errors: int = 0
) -> CellResult:
    latency = summarize([p50 / 1000])
    return CellResult(pipeline, protocol, concurrency, 8.0, int(ips * 8), errors, ips, latency)


def cells(served_c16: float, peer_c16: float, p50_c1: float, errors: int = 0) -> list[CellResult]:
    result = []
    for protocol in (V1_JSON, V2_GRPC):
        result += [
            cell(SERVED, protocol, 1, 30.0, p50_c1),
            cell(SERVED, protocol, 16, served_c16, 300.0, errors),
            cell(PEER, protocol, 1, 8.0, 120.0),
            cell(PEER, protocol, 16, peer_c16, 2000.0),
        ]
    return result


HOP = HopResult(150_642, 602_223, 150_528, 602_112)


def test_ratios_use_highest_and_lowest_concurrency() -> None:
    ratios = compute_ratios(cells(60.0, 10.0, 33.0), limit_result(50.0, 30.0), HOP)
    assert (ratios.high_concurrency, ratios.low_concurrency) == (16, 1)
    assert ratios.served_over_limit[V1_JSON] == pytest.approx(1.2)
    assert ratios.served_over_peer[V2_GRPC] == pytest.approx(6.0)
    assert ratios.p50_over_single[V1_JSON] == pytest.approx(1.1)
    assert ratios.hop_peer_over_served == pytest.approx(602_223 / 150_642)


def test_ratios_of_an_unmeasured_cell_are_none() -> None:
    only_served = [c for c in cells(60.0, 10.0, 33.0) if c.pipeline == SERVED]
    ratios = compute_ratios(only_served, limit_result(), None)
    assert ratios.served_over_peer[V1_JSON] is None
    assert ratios.hop_served_bytes is None


def test_ratios_need_cells() -> None:
    with pytest.raises(ValueError):
        compute_ratios([], limit_result(), HOP)


def test_targets_pass_at_their_thresholds() -> None:
    measured = cells(served_c16=60.0, peer_c16=30.0, p50_c1=33.0)
    targets = evaluate_targets(compute_ratios(measured, limit_result(50.0, 30.0), HOP), measured)
    assert len(targets) == 8
    assert all(t.passed for t in targets), [t for t in targets if not t.passed]


def test_targets_fail_below_thresholds_and_on_errors() -> None:
    measured = cells(served_c16=40.0, peer_c16=30.0, p50_c1=40.0, errors=2)
    hop = HopResult(HOP_BYTES_MAX + 1, 602_223, 150_528, 602_112)
    targets = evaluate_targets(compute_ratios(measured, limit_result(50.0, 30.0), hop), measured)
    assert not any(t.passed for t in targets)
    errors = next(t for t in targets if t.unit == "count")
    assert errors.value == 4.0  # two per protocol


def test_a_missing_value_fails_its_target() -> None:
    assert not Target("x", None, 1.0, at_least=True).passed
    assert not Target("x", float("nan"), 1.0, at_least=False).passed
    assert Target("x", 1.0, 1.0, at_least=False).passed


# --- the image set ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_set() -> list[BenchImage]:
    return build_image_set(DATA)


def test_image_set_has_an_original_and_a_phone_version_of_every_photo(
    image_set: list[BenchImage],
) -> None:
    sources = sorted(p for p in DATA.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(image_set) == 2 * len(sources)
    assert sum(i.kind == ORIGINAL for i in image_set) == len(sources)
    assert sum(i.kind == PHONE for i in image_set) == len(sources)
    for image in image_set:
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert decoded.format == "JPEG"
            assert decoded.mode == "RGB"
            assert decoded.size == (image.width, image.height)
        if image.kind == PHONE:
            assert sorted((image.width, image.height)) == [PHONE_SHORT_SIDE, PHONE_LONG_SIDE]


def test_phone_images_are_the_larger_half(image_set: list[BenchImage]) -> None:
    originals = [i.size_bytes for i in image_set if i.kind == ORIGINAL]
    phones = [i.size_bytes for i in image_set if i.kind == PHONE]
    assert max(originals) < min(phones)
    assert min(originals) <= mean_size_bytes(image_set) <= max(phones)


def test_image_set_is_deterministic_and_written_as_files(
    image_set: list[BenchImage],
    tmp_path: Path,
) -> None:
    again = build_image_set(DATA)
    assert [i.data for i in again] == [i.data for i in image_set]
    paths = write_image_set(image_set, tmp_path / "images")
    assert [p.read_bytes() for p in paths] == [i.data for i in image_set]
    summary = describe(image_set)
    assert summary["count"] == len(image_set)
    assert summary["mean_bytes"] == round(mean_size_bytes(image_set))


def test_phone_size_follows_orientation() -> None:
    assert phone_size(640, 427) == (PHONE_LONG_SIDE, PHONE_SHORT_SIDE)
    assert phone_size(300, 451) == (PHONE_SHORT_SIDE, PHONE_LONG_SIDE)
    assert phone_size(512, 512) == (PHONE_LONG_SIDE, PHONE_SHORT_SIDE)


def test_crop_to_aspect_keeps_the_centre_at_the_target_ratio() -> None:
    wide = Image.new("RGB", (451, 300))
    assert crop_to_aspect(wide, 4, 3).size == (400, 300)
    square = Image.new("RGB", (512, 512))
    assert crop_to_aspect(square, 4, 3).size == (512, 384)
    assert crop_to_aspect(square, 3, 4).size == (384, 512)


def test_build_image_set_without_images_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_image_set(tmp_path)


def test_mean_size_of_nothing_raises() -> None:
    with pytest.raises(ValueError):
        mean_size_bytes([])


# --- Prometheus scrapes -------------------------------------------------------------------

SCRAPE_BEFORE = """# HELP request_predict_seconds predict request latency
# TYPE request_predict_seconds histogram
request_predict_seconds_bucket{le="0.005",model_name="m"} 1.0
request_predict_seconds_count{model_name="m"} 10.0
request_predict_seconds_sum{model_name="m"} 0.5
request_predict_seconds_count{model_name="other"} 2.0
request_predict_seconds_sum{model_name="other"} 0.1
"""
SCRAPE_AFTER = SCRAPE_BEFORE.replace("} 10.0", "} 30.0").replace("} 0.5", "} 1.5")


def test_histogram_totals_sum_over_label_sets() -> None:
    total, count = histogram_totals(SCRAPE_BEFORE, "request_predict_seconds")
    assert (total, count) == (pytest.approx(0.6), 12.0)
    assert histogram_totals(SCRAPE_BEFORE, "absent") == (0.0, 0.0)


def test_mean_between_two_scrapes() -> None:
    mean = mean_between(SCRAPE_BEFORE, SCRAPE_AFTER, "request_predict_seconds")
    assert mean == pytest.approx(0.05)  # 1.0 s over 20 new observations
    assert mean_between(SCRAPE_BEFORE, SCRAPE_BEFORE, "request_predict_seconds") is None
    assert mean_between("", "", "request_predict_seconds") is None


def test_cpu_shares_between_two_proc_stat_samples() -> None:
    shares = cpu_shares((100, 10, 1000), (250, 20, 1200))
    assert shares == {"busy_pct": pytest.approx(75.0), "steal_pct": pytest.approx(5.0)}
    assert cpu_shares(None, (1, 1, 1)) == {"busy_pct": None, "steal_pct": None}
    assert cpu_shares((1, 1, 5), (1, 1, 5))["busy_pct"] is None


# --- the report ---------------------------------------------------------------------------


def test_report_formats_writes_json_without_nan_and_plots(
    image_set: list[BenchImage],
    tmp_path: Path,
) -> None:
    measured = cells(served_c16=60.0, peer_c16=30.0, p50_c1=33.0)
    measured.append(cell(SERVED, V1_JSON, 4, 0.0, float("nan")))
    limit = limit_result()
    ratios = compute_ratios(measured, limit, HOP)
    report = Report(
        environment={"available_cpus": 2, "torch": "x"},
        image_set=describe(image_set),
        settings={"duration_s": 8.0, "warmup_s": 2.0},
        limit=limit,
        cells=measured,
        hop=HOP,
        ratios=ratios,
        targets=evaluate_targets(ratios, measured),
    )
    table = report.format_table()
    assert "PASS" in table and "served" in table and "peer" in table
    report.write_json(tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())  # strict JSON: no NaN
    assert data["limit"]["best_batch_size"] == 8
    assert len(data["targets"]) == 8
    report.plot(tmp_path / "bench.png")
    with Image.open(tmp_path / "bench.png") as png:
        assert png.format == "PNG"


def batch_pair(images_per_s: float, yardstick: float, engine: str = "model_dir") -> Pair:
    run = BatchRun(engine, None, 300, 300, 0, images_per_s, 300 / images_per_s, 0.01)
    return Pair(run, yardstick)


def test_batch_ratio_is_the_median_pair_not_the_best() -> None:
    pairs = (batch_pair(60, 50), batch_pair(70, 50), batch_pair(55, 50))  # 1.2, 1.4, 1.1
    assert median_pair(pairs) == pairs[0]
    assert median_pair(pairs[:2]) == pairs[0]  # even: the lower middle
    assert median_pair(()) is None
    result = BatchResult(pairs, (batch_pair(45, 50, "url"),), "repo")
    assert result.in_process_over_limit == pytest.approx(1.2)
    assert result.url_over_served == pytest.approx(0.9)
    text = "\n".join(result.format_lines())
    assert "median of the runs: 1.20x (target >= 1.2x)" in text
    assert "median of the runs: 0.90x (target >= 0.9x)" in text
    assert json.loads(json.dumps(result.to_json()))["in_process"][1]["ratio"] == pytest.approx(1.4)


def test_batch_ratio_without_url_runs_or_yardstick() -> None:
    result = BatchResult((batch_pair(60, 0),), ())
    assert result.in_process_over_limit == 0.0
    assert result.url_over_served is None
    assert "median of the runs: n/a" in "\n".join(result.format_lines())


def engine_run(engine: str, b8_forward_ms: float, served_c16: float, p50_c1: float) -> EngineRun:
    points = (
        LimitPoint(1, 30, 1.0, 30.0, 20.0, forward_p50_ms=b8_forward_ms / 4),
        LimitPoint(8, 400, 4.0, 100.0, 80.0, forward_p50_ms=b8_forward_ms),
    )
    limit = LimitResult(points, 20.0, 12.0, b8_forward_ms / 4, 2)
    return EngineRun(engine, limit, cells(served_c16, 10.0, p50_c1))


def test_default_engine_targets_are_against_its_own_limit_and_onnx_fp32() -> None:
    """Issue 21's targets: served c16 >= 0.95x and p50 c1 <= 1.25x of the default engine's own
    in-process figures (100 images/s, 20 ms single); forward speed-ups only on INT8 CPUs."""
    runs = [
        engine_run(ONNX_FP32, 44.0, 70.0, 30.0),
        engine_run(OPENVINO_FP32, 48.0, 66.0, 30.0),
        engine_run(OPENVINO_INT8, 20.0, 95.0, 25.0),
    ]
    targets = {t.name: t for t in default_engine_targets(runs, OPENVINO_INT8, "avx512_vnni")}
    served = targets["served c16 V2 gRPC / in-process limit, OpenVINO INT8"]
    assert served.value == pytest.approx(0.95) and served.passed
    c1 = targets["p50 c1 V2 gRPC / in-process single image, OpenVINO INT8"]
    assert c1.value == pytest.approx(1.25) and c1.passed and not c1.at_least
    forward = targets["forward batch 8: OpenVINO INT8 speed-up over ONNX FP32 (avx512_vnni)"]
    assert forward.value == pytest.approx(2.2) and forward.passed
    own = targets["forward batch 8: OpenVINO INT8 speed-up over OpenVINO FP32 (avx512_vnni)"]
    assert own.value == pytest.approx(2.4) and own.passed
    slower = [engine_run(ONNX_FP32, 44.0, 70.0, 30.0), engine_run(OPENVINO_INT8, 23.0, 90.0, 26.0)]
    assert not any(t.passed for t in default_engine_targets(slower, OPENVINO_INT8, "amx"))
    by_kind = engine_run(OPENVINO_INT8, 20.0, 95.0, 25.0)
    by_kind.limit.single_image_ms_by_kind.update(phone=30.0, original=10.0)
    for cell_result in by_kind.cells:
        cell_result.p50_ms_by_kind.update(original=14.0, phone=33.0)
    [_, worst] = default_engine_targets([by_kind], OPENVINO_INT8, "avx2")
    assert worst.value == pytest.approx(1.4) and not worst.passed
    assert worst.name == (
        "p50 c1 V2 gRPC / in-process single image, OpenVINO INT8, "
        "worst kind of: original 1.40x, phone 1.10x"
    )
    on_avx2 = default_engine_targets(runs, OPENVINO_INT8, "avx2")
    assert [t.name.split(",")[0] for t in on_avx2] == [
        "served c16 V2 gRPC / in-process limit",
        "p50 c1 V2 gRPC / in-process single image",
    ]
    assert default_engine_targets(runs, TORCHSCRIPT, "avx2") == []
