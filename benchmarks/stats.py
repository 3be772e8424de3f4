"""Small, pure helpers for the figures: latency summaries, windowed rates, the load average.

Percentiles are `tooling.stats.percentile`, the one formula of every reported figure; CPU time and
memory of processes come from `tooling.procstats` (the evaluators use it too)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

from tooling.procstats import cpu_seconds, descendants, process_name, tree_cpu_seconds
from tooling.stats import percentile

__all__ = [
    "cpu_seconds",
    "descendants",
    "latency_summary",
    "load_average",
    "process_name",
    "ratio",
    "tree_cpu_seconds",
    "windowed_rate",
]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds, plus the count."""
    if not seconds:
        return {
            "n": 0,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "p99_ms": math.nan,
            "max_ms": math.nan,
            "mean_ms": math.nan,
        }
    return {
        "n": len(seconds),
        "p50_ms": 1000 * percentile(seconds, 50),
        "p95_ms": 1000 * percentile(seconds, 95),
        "p99_ms": 1000 * percentile(seconds, 99),
        "max_ms": 1000 * max(seconds),
        "mean_ms": 1000 * sum(seconds) / len(seconds),
    }


def windowed_rate(times: Iterable[float], start: float, end: float) -> tuple[int, float]:
    """(count, count per second) of the timestamps in [start, end)."""
    if end <= start:
        raise ValueError("empty window")
    n = sum(1 for t in times if start <= t < end)
    return n, n / (end - start)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or math.isnan(numerator):
        return None
    return numerator / denominator


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)
