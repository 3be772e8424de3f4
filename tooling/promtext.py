"""Values out of Prometheus exposition text (a worker's or Triton's `/metrics`), by metric and labels.

Parsed with `prometheus_client.parser`. Samples keep the names they are exposed under, which are the
names Prometheus stores and queries use: the parser would otherwise rename the samples of a counter
exposed without the `_total` suffix (all of Triton's) to `<name>_total`, so the `# TYPE` lines are
left out before parsing.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    """Every sample in `text`, under its exposed name."""
    untyped = "\n".join(line for line in text.splitlines() if not line.startswith("# TYPE "))
    for family in text_string_to_metric_families(untyped):
        yield from family.samples


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0.0 when there are none)."""
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def series_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names it is exposed with."""
    series: dict[str, set[str]] = {}
    for s in samples(text):
        series.setdefault(s.name, set()).update(s.labels)
    return series


def histogram_buckets(text: str, name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts, upper bound -> count, for the series with `labels`."""
    out: dict[float, float] = {}
    for s in samples(text):
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
            le = float(s.labels["le"])
            out[le] = out.get(le, 0.0) + s.value
    return out
