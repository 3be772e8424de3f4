"""The service end to end on the real broker and the real Triton, with real events.

A real worker process (`python -m streams worker`) per test, with its own topics and consumer group.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np
import pytest

from streams.settings import Settings
from streams.topics import create_topics
from streams.topology import route_for
from tooling.contracts import schema_errors
from tooling.embedded.worker import WorkerProcess, http_get
from tooling.promtext import metric_sum
from tooling.replay import replay_and_collect
from tooling.sample import build_sample, heldout_reviews, review_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def running(
    service_settings: Callable[..., Settings], new_worker: Callable[..., WorkerProcess]
) -> tuple[Settings, WorkerProcess]:
    settings = service_settings("it")
    asyncio.run(create_topics(settings))
    return settings, new_worker(settings).start()


def test_every_event_is_answered_once_with_the_right_enrichment(
    running: tuple[Settings, WorkerProcess],
) -> None:
    settings, worker = running
    events = build_sample(
        reviews=30, products=30, clicks=40, broken=True, seed=3, max_message_bytes=settings.max_message_bytes
    )
    accounting = asyncio.run(replay_and_collect(settings, events, wait_s=240))

    assert accounting.missing == [], worker.tail()
    assert accounting.repeats == {}, "a run without failures answers each event exactly once"
    assert accounting.misrouted() == []
    assert accounting.unattributed == []

    for event, record in accounting.records():
        value = record.value
        assert record.key is not None
        if "sentiment" in value:
            assert record.key.decode() == value["review_id"]
            assert math.isclose(sum(value["sentiment"]["probabilities"].values()), 1.0, abs_tol=1e-4)
            assert value["model"]["name"] == "ecom_fusion" and value["model"]["version"]
        elif "category" in value:
            assert record.key.decode() == value["product_id"]
            assert math.isclose(float(np.linalg.norm(value["embedding"])), 1.0, abs_tol=1e-3)
            assert value["category"] == value["top_categories"][0]
            scores = [c["score"] for c in value["top_categories"]]
            assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-4
        elif "items" in value:
            assert record.key.decode() == value["user_id"]
        else:
            assert record.is_dead_letter
            assert value["source"]["topic"] == f"{settings.topic_prefix}{event.topic}"

    # Every record matches the committed JSON Schema of its kind (contracts/, tooling.contracts).
    for event, record in accounting.records():
        name = "DeadLetter" if record.is_dead_letter else route_for(event.topic).output_event.__name__
        assert schema_errors(name, record.value) == [], (name, record.value)

    # The worker's own counters agree with what came out.
    text = worker.metrics()
    broken = [e for e in events if e.expect == "dlq"]
    for logical in ("reviews", "product-uploads", "clickstream"):
        topic = f"{settings.topic_prefix}{logical}"
        sent = sum(1 for e in events if e.topic == logical)
        assert metric_sum(text, "ecom_events_consumed_total", topic=topic) == sent
        dead = sum(1 for e in broken if e.topic == logical)
        assert metric_sum(text, "ecom_events_processed_total", topic=topic, outcome="dead_lettered") == dead
        assert metric_sum(text, "ecom_events_processed_total", topic=topic, outcome="enriched") == sent - dead
    assert metric_sum(text, "ecom_dead_letters_total") == len(broken)
    assert metric_sum(text, "ecom_inference_requests_total", outcome="ok") > 0
    assert metric_sum(text, "ecom_dependency_up", dependency="triton") == 1
    assert http_get(f"{worker.url}/livez")[0] == 200


def test_clearly_negative_reviews_and_sneaker_photos(running: tuple[Settings, WorkerProcess]) -> None:
    from fusion.taxonomy import department_of_leaf

    settings, worker = running
    # Held-out one-star reviews that say so plainly (the model never trained on them): two or more
    # strong complaints and not one word of praise.
    negative = ("terrible", "awful", "returned", "cheap", "disappointed", "horrible", "poor", "worst")
    praise = (
        "love",
        "great",
        "quality",
        "perfect",
        "beautiful",
        "cute",
        "nice",
        "excited",
        "pretty",
        "adorable",
    )
    candidates = [
        r
        for r in heldout_reviews(5000, seed=0)
        if r["rating"] == 1
        and sum(w in r["text"].lower() for w in negative) >= 2
        and not any(w in r["text"].lower() for w in praise)
    ][:3]
    assert len(candidates) == 3
    reviews = [e for e in review_events(5000, 0, "neg") if e.truth["text"] in {c["text"] for c in candidates}]
    sneakers = [
        e
        for e in build_sample(
            reviews=0,
            products=200,
            clicks=0,
            broken=False,
            seed=0,
            max_message_bytes=settings.max_message_bytes,
            run="shoe",
        )
        if e.truth["fmnist_class"] == "Sneaker"
    ][:3]
    assert len(sneakers) == 3

    accounting = asyncio.run(replay_and_collect(settings, [*reviews, *sneakers], wait_s=120, settle=0.5))
    assert accounting.missing == [], worker.tail()
    for event, record in accounting.records():
        if event in reviews:
            assert record.value["sentiment"]["label"] == "negative", event.truth["text"]
        else:
            label = str(record.value["category"]["label"]).rsplit("/", 1)[-1]
            assert department_of_leaf(label) == "footwear", record.value["top_categories"]
