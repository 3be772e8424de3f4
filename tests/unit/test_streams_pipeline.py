"""One event through the pipeline: enriched and published, or dead-lettered with the right reason."""

from __future__ import annotations

import asyncio
import base64
import io
import math

import numpy as np
import orjson
import pytest
from PIL import Image
from streams_fakes import FakeModel, RecordingPublisher

from streams.errors import ShuttingDown
from streams.pipeline import Pipeline
from streams.records import SourceRecord
from streams.runtime import Runtime, build_runtime
from streams.settings import Settings
from tooling.sample import SampleEvent, broken_events


def make_runtime(model: FakeModel | None = None, **overrides: object) -> tuple[Runtime, RecordingPublisher]:
    """The worker's own wiring (streams.runtime), without Faust: fakes only at the model and the producer."""
    publisher = RecordingPublisher()
    settings = Settings.model_validate(
        {
            "top_k_categories": 2,
            "batch_max_size": 8,
            "batch_linger_ms": 5,
            "max_in_flight": 2,
            "retry_backoff_initial_s": 0.001,
            "retry_backoff_max_s": 0.01,
            **overrides,
        }
    )
    return build_runtime(settings, None, model=model or FakeModel(), publisher=publisher), publisher


def make_pipeline(model: FakeModel | None = None, **overrides: object) -> tuple[Pipeline, RecordingPublisher]:
    runtime, publisher = make_runtime(model, **overrides)
    return runtime.pipeline, publisher


offsets = iter(range(10**6))


def rec(topic: str, value: object, key: bytes = b"k") -> SourceRecord:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return SourceRecord(topic, 0, next(offsets), key, data, 1.7e9)


def png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


REVIEW = {
    "event_id": "e1",
    "review_id": "r1",
    "product_id": "p1",
    "user_id": "u1",
    "ts": "2024-05-01T00:00:00Z",
}


async def test_review_is_enriched_and_keyed_by_review_id() -> None:
    pipeline, pub = make_pipeline()
    assert (
        await pipeline.handle(rec("reviews", {**REVIEW, "text": "awful zipper", "rating": 1})) == "enriched"
    )
    [(topic, key, value)] = pub.sent
    assert topic == "review-sentiment" and key == b"r1"
    assert value["event_id"] == "e1" and value["review_id"] == "r1" and value["product_id"] == "p1"
    assert value["model"] == {"name": "ecom_fusion", "version": "test-1"}
    sentiment = value["sentiment"]
    assert isinstance(sentiment, dict) and sentiment["label"] == "negative"
    assert math.isclose(sum(sentiment["probabilities"].values()), 1.0, rel_tol=1e-6)


async def test_product_gets_category_top_scores_and_a_unit_embedding() -> None:
    pipeline, pub = make_pipeline()
    event = {"event_id": "e2", "product_id": "sku-9", "image": png(), "title": "Trainers", "ts": 0}
    assert await pipeline.handle(rec("product-uploads", event)) == "enriched"
    [(topic, key, value)] = pub.sent
    assert topic == "product-categories" and key == b"sku-9"
    assert value["category"] == {"label": "sneaker", "score": pytest.approx(0.8)}
    assert [c["label"] for c in value["top_categories"]] == ["sneaker", "tshirt_top"]
    assert math.isclose(float(np.linalg.norm(value["embedding"])), 1.0, rel_tol=1e-5)


async def test_clicks_get_recommendations_keyed_by_user() -> None:
    pipeline, pub = make_pipeline()
    for i, (user, product) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")]):
        click = {
            "event_id": f"c{i}",
            "user_id": user,
            "session_id": "s",
            "product_id": product,
            "action": "add_to_cart",
            "ts": 0,
        }
        assert await pipeline.handle(rec("clickstream", click)) == "enriched"
    last = pub.on("recommendations")[-1]
    assert last["user_id"] == "b" and last["event_id"] == "c3"
    assert [i["product_id"] for i in last["items"]] == ["y"]
    assert pub.sent[-1][1] == b"b"


@pytest.mark.parametrize("broken", broken_events("t", max_message_bytes=100_000), ids=lambda e: e.event_id)
async def test_every_broken_sample_event_is_dead_lettered_with_its_reason(broken: SampleEvent) -> None:
    pipeline, pub = make_pipeline(max_message_bytes=100_000)
    topic = {"reviews": "reviews", "product-uploads": "product-uploads", "clickstream": "clickstream"}[
        broken.topic
    ]
    assert await pipeline.handle(rec(topic, broken.value, key=b"broken")) == "dead_lettered"
    [(dlq, key, letter)] = pub.sent
    assert dlq == f"{topic}.dlq" and key == b"broken"
    assert letter["error"]["type"] == broken.reason
    assert letter["event_id"] == broken.event_id
    assert letter["source"]["topic"] == topic


async def test_a_model_rejection_dead_letters_only_that_event() -> None:
    pipeline, pub = make_pipeline()
    texts = ["fine", "REJECT me", "lovely", "great"]
    outcomes = await asyncio.gather(
        *(
            pipeline.handle(rec("reviews", {**REVIEW, "event_id": f"e{i}", "text": t}))
            for i, t in enumerate(texts)
        )
    )
    assert outcomes == ["enriched", "dead_lettered", "enriched", "enriched"]
    [letter] = pub.on("reviews.dlq")
    assert letter["event_id"] == "e1" and letter["error"]["type"] == "ModelRejected"


async def test_triton_outage_delays_but_never_dead_letters() -> None:
    model = FakeModel(transient_failures=6)
    pipeline, pub = make_pipeline(model)
    assert await pipeline.handle(rec("reviews", {**REVIEW, "text": "nice"})) == "enriched"
    assert [t for t, _, _ in pub.sent] == ["review-sentiment"]
    assert len(model.requests) == 7


async def test_unknown_topic_is_an_internal_error_dead_letter_not_a_crash() -> None:
    pipeline, pub = make_pipeline()
    assert await pipeline.handle(rec("somewhere-else", {"x": 1})) == "dead_lettered"
    assert pub.sent[0][2]["error"]["type"] == "InternalError"


async def test_a_stopping_worker_leaves_waiting_events_unfinished_not_dead_lettered() -> None:
    runtime, publisher = make_runtime(
        FakeModel(transient_failures=10**6),
        retry_backoff_initial_s=0.05,
        retry_backoff_max_s=0.1,
        batch_linger_ms=0,
        max_in_flight=1,
    )
    pipeline = runtime.pipeline
    waiting = asyncio.ensure_future(pipeline.handle(rec("reviews", {**REVIEW, "text": "nice"})))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # Triton is away: the event waits
    runtime.stopping()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(waiting, 5)
    assert publisher.sent == []
    await runtime.close()


async def test_a_dead_letter_carries_the_input_record_whole_and_its_attempts() -> None:
    """What the producer is handed: the value and key as consumed, the input's headers (the re-drive
    counter among them), then the error context."""
    pipeline, pub = make_pipeline(max_message_bytes=100_000, max_text_bytes=10)
    value = orjson.dumps({**REVIEW, "text": "far more than ten bytes"})
    own = (
        ("traceparent", b"00-abc"),
        ("ecom.redrive.attempts", b"2"),
        ("ecom.redrive.origin", b"reviews[1]@7"),
    )
    record = SourceRecord("reviews", 3, 99, b"p-1", value, 1.7e9, headers=own)
    assert await pipeline.handle(record) == "dead_lettered"
    [(topic, key, sent, headers)] = pub.records
    assert (topic, key, sent) == ("reviews.dlq", b"p-1", value)
    assert headers[:3] == own
    [letter] = pub.on("reviews.dlq")
    assert letter["error"]["type"] == "OversizeText" and letter["attempts"] == 2
    assert letter["origin"] == "reviews[1]@7" and letter["source"]["offset"] == 99
