"""Every bounded label combination exists at 0 from the start (dashboards show 0, not "no data")."""

from __future__ import annotations

from prometheus_client import REGISTRY

from streams import metrics
from streams.settings import Settings
from streams.topics import TopicNames
from streams.topology import MODEL_KINDS


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_every_bounded_series_starts_at_zero() -> None:
    names = TopicNames.from_settings(Settings(topic_prefix="metrics-init-"))
    assert value("ecom_events_consumed_total", topic=names.reviews) is None

    metrics.initialise(names.inputs, names.outputs, names.dlqs, MODEL_KINDS)

    for topic in names.inputs:
        assert value("ecom_events_consumed_total", topic=topic) == 0
        assert value("ecom_end_to_end_latency_seconds_count", topic=topic) == 0
        for outcome in ("enriched", "dead_lettered"):
            assert value("ecom_events_processed_total", topic=topic, outcome=outcome) == 0
    for topic in (*names.outputs, *names.dlqs):
        assert value("ecom_events_produced_total", topic=topic) == 0
    for kind in ("review", "product"):
        for outcome in ("ok", "error", "retry"):
            assert value("ecom_inference_requests_total", kind=kind, outcome=outcome) is not None


def test_initialising_twice_keeps_the_counts() -> None:
    names = TopicNames.from_settings(Settings(topic_prefix="metrics-twice-"))
    metrics.initialise(names.inputs, names.outputs, names.dlqs, MODEL_KINDS)
    metrics.EVENTS_CONSUMED.labels(names.reviews).inc(3)
    metrics.initialise(names.inputs, names.outputs, names.dlqs, MODEL_KINDS)
    assert value("ecom_events_consumed_total", topic=names.reviews) == 3
