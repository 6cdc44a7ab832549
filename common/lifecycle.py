"""A server's life once it serves: readiness that tells the truth, and the drain on SIGTERM.

On SIGTERM (how Kubernetes says "stop"):
  1. readiness answers false at once (REST `/v2/health/ready`, `/v2/models/<m>/ready`,
     `/v1/models/<m>`; gRPC `ServerReady`, `ModelReady`), so the pod leaves its Service;
  2. the server keeps serving for `--drain_seconds` while that change reaches every node and
     ingress (clients still routed here are served, not refused);
  3. it stops accepting (listeners close, gRPC refuses new calls), lets the requests in flight
     finish (each bounded by `--request_timeout_seconds`) and exits.
SIGINT (Ctrl-C) skips step 2; a second signal during the drain cuts it short. Liveness is not
touched: it is about the process, and the process is fine.

Readiness also takes checks of the component's own (the transformer adds "the predictor
answers ready"). The hooks into kserve's server (its REST and gRPC servers, its data plane's
readiness) are in common/kserve_compat.py, each naming the kserve behaviour it relies on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import kserve
from fastapi import FastAPI

from . import admission, kserve_compat, pacing
from .cli import non_negative_float, positive_float

logger = logging.getLogger(__name__)

# Endpoint removal takes a few seconds to reach every kube-proxy and ingress after a pod starts
# terminating (the endpoints controller, then each node's watch; 1-3 s on a healthy cluster).
# 5 s covers that with margin; requests arriving meanwhile are still served.
DEFAULT_DRAIN_SECONDS = 5.0
# The longest a request may take. Measured here (2 CPUs): p99 0.37 s at concurrency 16 on a quiet
# machine, and the queues are sized for about 1 s of waiting; a 32-image batch on a CPU starved
# by other work (this shared machine at load 15) took over 10 s, so 15 s answers only a stuck
# call. It also bounds the shutdown: exit comes at most drain + timeout + 1 s = 21 s after
# SIGTERM, inside Kubernetes' default grace period of 30 s (which the manifests state).
DEFAULT_REQUEST_TIMEOUT_S = 15.0
STOP_MARGIN_S = 1.0


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add --drain_seconds and --request_timeout_seconds (both components take them)."""
    parser.add_argument(
        "--drain_seconds",
        type=non_negative_float,
        default=DEFAULT_DRAIN_SECONDS,
        help="After SIGTERM: readiness false at once, keep serving this long (endpoint "
        "propagation), then stop accepting and finish what is in flight.",
    )
    parser.add_argument(
        "--request_timeout_seconds",
        type=positive_float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="Longest time for one inference request, from when its body is in (REST: "
        "answered 504; gRPC: the client's deadline if shorter); also bounds the wait for "
        "in-flight requests at shutdown.",
    )


@dataclass(frozen=True)
class LifecycleSettings:
    """The drain and the per-request time bound."""

    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_S

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LifecycleSettings:
        """The settings from parsed flags (see add_flags)."""
        return cls(args.drain_seconds, args.request_timeout_seconds)

    @property
    def stop_grace_s(self) -> int:
        """How long in-flight requests may take to finish once accepting stops."""
        return math.ceil(self.request_timeout_seconds + STOP_MARGIN_S)


ReadinessCheck = Callable[[], Awaitable[bool]]


class Lifecycle:
    """Whether this server should receive traffic, and the stop sequence after a signal."""

    def __init__(
        self,
        settings: LifecycleSettings,
        checks: tuple[ReadinessCheck, ...] = (),
        max_inflight_requests: int | None = None,
        max_wait: pacing.WaitTarget | None = None,
        refusals: tuple[Callable[[], str | None], ...] = (),
    ) -> None:
        """`max_inflight_requests` and `max_wait` bound the inference requests in flight
        (admission.InflightLimit); `refusals` say why one more would be refused by what lies
        behind (the predictor's batch queue, say), checked before its body is read."""
        self.settings = settings
        self.checks = checks
        self.inflight = admission.InflightLimit(max_inflight_requests, max_wait)
        self.refusals = refusals
        self.draining = False

    def overloaded(self) -> str | None:
        """Why one more inference request would be refused for overload now, or None."""
        for refusal in (self.inflight.overloaded, *self.refusals):
            why = refusal()
            if why is not None:
                return why
        return None

    def install(self, server: kserve.ModelServer, app: FastAPI) -> None:
        """Wire readiness, request bounds and the drain into `server` before its start()."""
        timeout_s = self.settings.request_timeout_seconds
        kserve_compat.log_through_kserve(("common", "predictor", "transformer"))
        kserve_compat.gate_readiness(server.dataplane, self.ready)
        app.add_middleware(
            admission.RequestBoundsMiddleware, inflight=self.inflight, timeout_s=timeout_s
        )
        app.add_exception_handler(admission.Unavailable, admission.unavailable_handler)
        app.add_exception_handler(admission.DeadlinePassed, admission.deadline_handler)
        kserve_compat.bound_grpc_infer(self.inflight, timeout_s)
        kserve_compat.run_beside_servers(
            server,
            self.supervise(
                lambda: kserve_compat.rest_server_started(server),
                lambda: kserve_compat.stop_accepting(server),
            ),
        )

    async def ready(self) -> bool:
        """False from the first signal on, or while any readiness check says so."""
        if self.draining:
            return False
        for check in self.checks:
            if not await check():
                return False
        return True

    async def supervise(
        self, started: Callable[[], bool], stop_accepting: Callable[[], Awaitable[None]]
    ) -> None:
        """Run beside the servers: once `started()`, take SIGTERM/SIGINT over and, on one,
        drain, then `stop_accepting()` (which returns when in-flight requests are done)."""
        while not started():
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        received: list[int] = []
        signalled = asyncio.Event()

        def on_signal(sig: int) -> None:
            received.append(sig)
            signalled.set()

        # After the REST server started: uvicorn installs its own handlers in serve(), and
        # these replace them (uvicorn would close its port at once).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await signalled.wait()
        signalled.clear()
        self.draining = True
        drain = self.settings.drain_seconds if received[0] == signal.SIGTERM else 0.0
        name = signal.Signals(received[0]).name
        if drain > 0:
            logger.info(
                "%s: readiness is now false; serving on for %.1f s (--drain_seconds)", name, drain
            )
            try:
                await asyncio.wait_for(signalled.wait(), drain)
                logger.info("second signal: drain cut short")
            except TimeoutError:
                pass
        logger.info(
            "%s: no longer accepting; waiting up to %d s for requests in flight",
            name,
            self.settings.stop_grace_s,
        )
        await stop_accepting()
