"""Small numeric helpers more than one room needs: durations as people write them (15m, 1h30m),
the Wilson interval of a proportion, and the two-proportion z statistic. No dependencies beyond
the standard library."""

from __future__ import annotations

import math
import re
from datetime import timedelta

Z_95 = 1.959964  # the normal quantile of a two-sided 95% interval
Z_95_ONE_SIDED = 1.644854  # ... and of a one-sided 95% test ("a exceeds b")
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_EXAMPLES = "30s, 15m, 24h, 7d, 2w or 1h30m"


def parse_duration(text: str) -> timedelta | None:
    """A duration like 30s, 15m, 24h, 7d, 2w or 1h30m; None when `text` is not one."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        return None
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def wilson(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) with no trials."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(successes_a: float, n_a: float, successes_b: float, n_b: float) -> float:
    """The z statistic of "proportion a exceeds proportion b" (pooled two-proportion test);
    0 when either side has no trials or the pooled proportion is 0 or 1."""
    if n_a <= 0 or n_b <= 0:
        return 0.0
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 0.0
    return (successes_a / n_a - successes_b / n_b) / math.sqrt(variance)
