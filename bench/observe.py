"""Observing running servers from outside: CPU shares from /proc/stat, stage latencies from
their Prometheus /metrics text."""

from __future__ import annotations

from pathlib import Path


def system_cpu_jiffies() -> tuple[int, int, int] | None:
    """Machine-wide (busy, steal, total) CPU jiffies from /proc/stat, or None without it.

    Busy excludes idle and iowait; steal is time the hypervisor gave the vCPUs to others.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(values)
    idle, iowait, steal = values[3], values[4], values[7]
    return total - idle - iowait - steal, steal, total


def cpu_shares(
    before: tuple[int, int, int] | None, after: tuple[int, int, int] | None
) -> dict[str, float | None]:
    """Busy and steal percentages of all CPUs between two /proc/stat samples."""
    if before is None or after is None or after[2] <= before[2]:
        return {"busy_pct": None, "steal_pct": None}
    total = after[2] - before[2]
    return {
        "busy_pct": 100 * (after[0] - before[0]) / total,
        "steal_pct": 100 * (after[1] - before[1]) / total,
    }


def histogram_totals(text: str, metric: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram over all its label sets; (0, 0) when absent."""
    total = count = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            if name == f"{metric}_sum":
                total += float(value)
            elif name == f"{metric}_count":
                count += float(value)
        except ValueError:
            continue
    return total, count


def mean_between(before: str, after: str, metric: str) -> float | None:
    """Mean observation of a histogram between two scrapes, or None with no new observations."""
    sum_before, count_before = histogram_totals(before, metric)
    sum_after, count_after = histogram_totals(after, metric)
    observations = count_after - count_before
    if observations <= 0:
        return None
    return (sum_after - sum_before) / observations
