"""The pure parts of how requests get in: the memory budget, its default, and the zero-copy
ModelInfer parser (the servers are exercised by tests/test_hostile.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from common import budget, grpc_intake, memory
from common.admission import Overloaded
from common.budget import RequestMemory

MiB = 1024 * 1024


def model_infer_request(raw: list[bytes], parameters: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="req-1")
    for index in range(parameters):
        request.parameters[f"p{index}"].int64_param = index
    for index, data in enumerate(raw):
        tensor = request.inputs.add(name=f"INPUT{index}", datatype="UINT8", shape=[len(data)])
        tensor.parameters["binary_data_size"].int64_param = len(data)
    request.outputs.add(name="OUTPUT0")
    request.raw_input_contents.extend(raw)
    return request


def test_split_model_infer_views_raw_contents_and_parses_the_rest() -> None:
    raw = [bytes(range(256)) * 40, b"", b"\x00" * 7]
    original = model_infer_request(raw)
    data = original.SerializeToString()
    split = grpc_intake.split_model_infer(data)
    assert [bytes(view) for view in split.raw] == raw
    assert all(view.obj is data for view in split.raw)  # views into what grpc handed over
    expected = pb.ModelInferRequest()
    expected.CopyFrom(original)
    del expected.raw_input_contents[:]
    assert split.message == expected
    assert split.whole() == original
    assert (split.id, split.model_name) == ("req-1", "m")
    split.validate()


def test_split_model_infer_falls_back_to_protobuf_past_many_fields() -> None:
    """A message of thousands of top-level fields is parsed by protobuf, not scanned in Python."""
    original = model_infer_request([b"abc"], parameters=grpc_intake._MAX_SCANNED_FIELDS + 10)
    split = grpc_intake.split_model_infer(original.SerializeToString())
    assert split.whole() == original
    assert [bytes(view) for view in split.raw] == [b"abc"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x3a\x10abc",  # raw_input_contents declares 16 bytes, 3 follow
        b"\x0a\xff\xff",  # a length varint that never ends
        b"\x0f",  # wire type 7 does not exist
        b"\x0a\x05ab",  # model_name runs past the end
    ],
)
def test_split_model_infer_refuses_unreadable_messages(data: bytes) -> None:
    with pytest.raises(DecodeError):
        grpc_intake.split_model_infer(data)


def test_split_model_infer_checks_raw_contents_against_inputs() -> None:
    request = model_infer_request([b"ab"])
    request.inputs.add(name="extra", datatype="UINT8", shape=[1])
    split = grpc_intake.split_model_infer(request.SerializeToString())
    with pytest.raises(Exception, match=r"number of inputs \(2\).*raw input contents \(1\)"):
        split.validate()


def test_memory_is_refused_past_the_budget_and_given_back() -> None:
    memory = RequestMemory(10 * MiB)
    assert memory.take(6 * MiB)
    assert not memory.take(5 * MiB)  # would pass the budget: nothing taken
    assert memory.held == 6 * MiB
    refusal = memory.refusal(5 * MiB)
    assert isinstance(refusal, Overloaded)  # answered 503 + Retry-After / RESOURCE_EXHAUSTED
    assert "needs 5242880 bytes of memory; 6291456 of the 10485760-byte budget" in str(refusal)
    assert memory.take(4 * MiB)  # exactly full
    memory.give_back(4 * MiB)
    memory.give_back(6 * MiB)
    assert memory.held == 0


def test_take_within_waits_for_memory_to_be_given_back() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        memory = RequestMemory(10 * MiB)
        assert memory.take(8 * MiB)
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, memory.give_back, 8 * MiB)
        started = loop.time()
        waited = await memory.take_within(8 * MiB, timeout_s=5.0)
        after = loop.time() - started
        refused = await memory.take_within(8 * MiB, timeout_s=0.1)  # held by the first now
        return waited, refused, after

    waited, refused, after = asyncio.run(scenario())
    assert waited and not refused
    assert 0.15 <= after < 2.0


def test_container_memory_limit_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    assert memory.container_memory_limit(tmp_path) is None  # no cgroup files at all
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.container_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory.container_memory_limit(tmp_path) == 512 * MiB
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.container_memory_limit(v1) is None  # v1's "no limit"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory.container_memory_limit(v1) == 1024 * MiB


def test_default_budget_is_half_of_what_the_limit_leaves() -> None:
    largest = 16 * MiB * budget.GRPC_COPIES
    assert budget.default_budget(None, 140 * MiB, largest) == budget.DEFAULT_BUDGET_BYTES
    assert budget.default_budget(512 * MiB, 140 * MiB, largest) == 186 * MiB
    # Never below two largest requests, charged for their copies.
    assert budget.default_budget(160 * MiB, 150 * MiB, largest) == 2 * largest


def test_the_budget_keeps_one_largest_message_apart_for_control_calls() -> None:
    largest = 16 * MiB * budget.GRPC_COPIES
    memory = budget.ProcessMemory.split(256 * MiB, largest)
    assert (memory.data.budget_bytes, memory.control.budget_bytes) == (192 * MiB, largest)
    assert memory.budget_bytes == 256 * MiB
    assert memory.data.take(192 * MiB)  # inference holds all of its part...
    assert memory.control.take(largest)  # ...and a probe still reads
    assert memory.held == 256 * MiB
    with pytest.raises(ValueError, match="does not hold two of the largest gRPC messages"):
        budget.ProcessMemory.split(2 * largest - 1, largest)


def test_clearing_an_errors_frames_frees_what_they_held() -> None:
    """What the frames of a caught error's traceback held is freed at once, without waiting
    for the cycle collector."""

    class Payload:
        pass

    def fail(payload: Payload) -> None:
        held = payload  # noqa: F841 (a local the traceback keeps alive)
        raise ValueError("junk")

    gc.disable()
    try:
        payload = Payload()
        alive = weakref.ref(payload)
        try:
            fail(payload)
        except ValueError as error:
            caught = error
        del payload
        assert alive() is not None  # the traceback's frame still holds it
        budget.clear_error_frames(caught)
        assert alive() is None
    finally:
        gc.enable()
