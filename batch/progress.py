"""Progress while a run goes: a tqdm bar with rate and ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_EVERY_S = 10.0


class Progress:
    """Counts outcomes; draws a bar (mode "bar", or "auto" on a terminal) or logs plain lines."""

    def __init__(self, total: int, mode: str) -> None:
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.total = total
        self.handled = 0
        self.started = self.last_line = time.monotonic()
        self.bar: tqdm[None] | None = (
            tqdm(total=total, unit="image", dynamic_ncols=True, smoothing=0.1) if use_bar else None
        )

    def update(self, counts: dict[str, int]) -> None:
        """One more outcome; `counts` holds predicted, skipped and failed so far."""
        self.handled += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.handled % 64 == 0 or self.handled == self.total:
                self.bar.set_postfix(counts, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= PLAIN_EVERY_S:
            self.last_line = now
            rate = self.handled / max(now - self.started, 1e-9)
            left = (self.total - self.handled) / rate if rate else float("inf")
            print(
                f"batch: {self.handled}/{self.total} images, {rate:.1f} images/s, "
                f"ETA {left:.0f} s, "
                + ", ".join(f"{name} {value}" for name, value in counts.items()),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()
