"""Log lines of one kind at most once per interval (no kserve here: the ground-truth room and
the batch job use it too)."""

from __future__ import annotations

import logging
import time


class Throttled:
    """Log lines of one kind at most once per `period_s`; the next line says how many were
    left out. For lines one per request under overload (each refusal a warning): hundreds a
    second cost the event loop time that the refusals themselves should get, and say nothing
    that the first line and a count do not."""

    def __init__(self, logger: logging.Logger, period_s: float = 1.0) -> None:
        self.logger = logger
        self.period_s = period_s
        self._next = 0.0
        self._left_out = 0

    def warning(self, message: str, *args: object) -> None:
        """Log `message % args` as a warning, unless one was logged within `period_s`."""
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        if self._left_out:
            message += f" (and {self._left_out} more like it in the last {self.period_s:g} s)"
        self._left_out = 0
        self._next = now + self.period_s
        self.logger.warning(message, *args)
