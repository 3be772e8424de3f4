"""The percentile of every reported figure (the demo, the evaluators, the benchmark)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method), q in 0..100; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """The q-quantile (0..1) of a histogram's cumulative buckets, interpolated linearly inside the bucket
    it falls in (Prometheus' `histogram_quantile`); NaN when the histogram is empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 0.0)
        lower, below = le, count
    return lower


def bucket_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """The observations made between two snapshots of one histogram."""
    return {le: count - before.get(le, 0.0) for le, count in after.items()}
