"""How much memory request data may take in one server process, and how that budget is sized.

Counts alone do not bound memory: 64 requests in flight of up to --max_request_bytes each is
4 GiB before any copy. So request data is charged to one budget per process, shared by REST
and gRPC, and a request that does not fit is refused at once (503 + Retry-After /
RESOURCE_EXHAUSTED) instead of buffered:

- REST (common.intake): the bytes of a body as they arrive, and, before any is read, a check
  that the declared Content-Length would fit what is left;
- gRPC (common.grpc_intake): a reservation for the largest message before a call may read its
  message, cut down to the message's size once it is in.

Each byte is charged for the copies of it the request holds at its peak (`REST_COPIES`,
`GRPC_COPIES`), and given back when the request has been answered.

The default budget is half of what the container's memory limit leaves after the process has
loaded its model (its resident memory when the server starts); the other half is for the work
a request causes beyond its own bytes (decoded images, batches, the allocator's slack). Without
a visible limit (a laptop, `make serve`) it is `DEFAULT_BUDGET_BYTES`.
"""

from __future__ import annotations

import asyncio
import gc
import math
import traceback
from dataclasses import dataclass

from . import memory
from .admission import RETRY_AFTER_S, Overloaded

# Memory a request holds per byte of its body while it is served, at its peak (measured with
# tests/test_hostile.py, 32 concurrent bodies of 16 MiB):
# - REST: the body, and one more copy (V1 and V2 JSON: the parsed strings or numbers, then
#   the base64 decoded; V2 binary: an image's bytes cut out of the tensor, or a batch stacked
#   from a predictor's pixels). JSON peaks at ~2.75 copies; binary at 2, but with 2 charged
#   the peak met the budget exactly in one run of 3 (256.5 MiB over a 256 MiB budget: the
#   buffers of the connections waiting and the allocator come on top), so 3 for both.
# - gRPC: while a message is read, grpc core's pieces of it, the block it joins them into and
#   the Python bytes that is copied into are alive at once, and the pieces leave holes in the
#   heap until it is trimmed; then the bytes (the servicer views, never copies, the raw
#   contents) and one derived copy as for REST. Measured at its peak: 3 copies and a bit, so 4.
REST_COPIES = 3
GRPC_COPIES = 4
# Without a memory limit in sight: room for four of the largest requests at the default size
# limit (16 MiB, four copies each at most; one of the four kept for control calls, see
# ProcessMemory), and for hundreds of images of ordinary size.
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024
# Never less than this, whatever the limit and the message size.
MIN_BUDGET_BYTES = 32 * 1024 * 1024
# Share of the memory left after start-up that request data may take.
BUDGET_SHARE = 0.5


class RequestMemory:
    """The bytes request data in flight may hold; `take` refuses past `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.held = 0
        self._freed: asyncio.Event | None = None  # created in the servers' event loop

    def fits(self, charge: int) -> bool:
        """Whether `charge` more bytes would fit now (nothing is held)."""
        return self.held + charge <= self.budget_bytes

    def take(self, charge: int) -> bool:
        """Hold `charge` bytes if they fit in what is left; False (nothing held) if not.

        A charge larger than the whole budget never fits; one that fits an empty budget
        always does, so a request is never refused while nothing else is held.
        """
        if not self.fits(charge):
            return False
        self.held += charge
        return True

    async def take_within(self, charge: int, timeout_s: float) -> bool:
        """Hold `charge` bytes as soon as they fit, waiting at most `timeout_s`; False (nothing
        held) when they did not fit in time."""
        if self.take(charge):
            return True
        loop = asyncio.get_running_loop()
        due = loop.time() + timeout_s
        if self._freed is None:
            self._freed = asyncio.Event()
        while not self.take(charge):
            self._freed.clear()
            try:
                async with asyncio.timeout_at(due):
                    await self._freed.wait()
            except TimeoutError:
                return False
        return True

    def give_back(self, charge: int) -> None:
        """Return bytes held by a `take` that succeeded (waiters in take_within look again)."""
        self.held -= charge
        if self._freed is not None and charge > 0:
            self._freed.set()

    def refusal(self, charge: int) -> Overloaded:
        """The error for a charge that did not fit: what was asked, what is held, the budget."""
        return Overloaded(
            f"request needs {charge} bytes of memory; {self.held} of the "
            f"{self.budget_bytes}-byte budget are held by requests in flight "
            f"(--request_memory_budget_bytes); retry in {RETRY_AFTER_S} s"
        )


def default_budget(limit: int | None, resident: int, largest_charge: int) -> int:
    """The budget when no flag sets it: BUDGET_SHARE of what `limit` leaves after `resident`,
    or DEFAULT_BUDGET_BYTES without a limit; never below two of the largest requests charged
    (`largest_charge`: one inference, one control call, see ProcessMemory) or MIN_BUDGET_BYTES."""
    floor = max(MIN_BUDGET_BYTES, 2 * largest_charge)
    if limit is None:
        return max(DEFAULT_BUDGET_BYTES, floor)
    return max(floor, math.floor((limit - resident) * BUDGET_SHARE))


@dataclass(frozen=True)
class ProcessMemory:
    """One process's budget, in two parts: `data` for inference bodies and messages, and
    `control`, room for one largest gRPC message, for the other gRPC calls (health, metadata):
    their messages are a few bytes by the protocol, but grpc core must be let read up to the
    message limit, so they are bounded too, and inference holding the budget never delays a
    readiness probe."""

    data: RequestMemory
    control: RequestMemory

    @classmethod
    def split(cls, budget_bytes: int, largest_charge: int) -> ProcessMemory:
        """`budget_bytes` less one largest charge for data, that charge for control; raises
        ValueError when the budget does not hold two largest charges."""
        if budget_bytes < 2 * largest_charge:
            raise ValueError(
                f"a request memory budget of {budget_bytes} bytes does not hold two of the "
                f"largest gRPC messages charged ({largest_charge} bytes each: one inference, "
                "one health or metadata call); raise it or lower the message limit"
            )
        return cls(RequestMemory(budget_bytes - largest_charge), RequestMemory(largest_charge))

    @property
    def largest_charge(self) -> int:
        """What one largest gRPC message is charged: the control part's whole size."""
        return self.control.budget_bytes

    @property
    def budget_bytes(self) -> int:
        """Both parts together."""
        return self.data.budget_bytes + self.control.budget_bytes

    @property
    def held(self) -> int:
        """What both parts hold now."""
        return self.data.held + self.control.held


# --- what a failed request leaves behind -----------------------------------------------------

# A request this large that failed has its garbage collected before its charge is given back.
LARGE_REQUEST_BYTES = 1 << 20


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, the model, settings) out of the cycle collector's
    sight, so that a full collection later scans only what requests created: ~0.01 ms instead
    of ~60 ms measured in the transformer. Call once, when start-up is done."""
    gc.collect()
    gc.freeze()


def collect_request_garbage() -> None:
    """Free what a failed request left in reference cycles, now.

    An error's traceback holds the frames of every function it passed through, those frames
    hold the request's data (the body, the message, the decoded copies), and a frame that
    caught the error holds the error: a cycle that reference counting never frees, and that
    the cycle collector frees only when its generation fills up (seen here: resident memory
    grew by the size of each failed 16 MiB request, 800 MiB after 32 of them). Cheap after
    `freeze_startup_objects`. Then hands the free pages inside the C heap back to the kernel
    (glibc's malloc_trim): grpc core receives a message in many small blocks, and the holes
    they leave would otherwise stay resident.
    """
    gc.collect()
    memory.trim_heap()


def clear_error_frames(error: BaseException) -> None:
    """Drop the local variables of the finished frames in `error`'s traceback and in those of
    the errors it was raised from (see collect_request_garbage): what they held is freed now,
    by reference counting, if nothing else holds it."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
