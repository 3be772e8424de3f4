"""The Faust agents through `agent.test_context()`: real app, real pipeline, fake model and producer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from streams_fakes import FakeModel, RecordingPublisher

from streams.app import EnrichmentApp, create_app
from streams.settings import Settings
from streams.topics import TABLES, changelog_topic, topic_specs


@pytest.fixture
async def app_and_publisher() -> AsyncIterator[tuple[EnrichmentApp, RecordingPublisher, FakeModel]]:
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="t-", batch_linger_ms=20)
    model, publisher = FakeModel(), RecordingPublisher()
    app = create_app(settings, model=model, publisher=publisher)
    app.finalize()
    app.flow_control.resume()
    yield app, publisher, model
    await app.services.inference.close()
    # Iterating a stream makes Faust build its consumer, whose (never started) thread owns an event
    # loop that nothing closes outside a running worker.
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


def review(i: int, text: str) -> bytes:
    return orjson.dumps(
        {"event_id": f"e{i}", "review_id": f"r{i}", "product_id": "p", "user_id": "u", "text": text, "ts": 0}
    )


async def test_review_agent_enriches_in_batches_and_finishes_every_offset(
    app_and_publisher: tuple[EnrichmentApp, RecordingPublisher, FakeModel],
) -> None:
    app, publisher, model = app_and_publisher
    agent = app.agents["enrich-t-reviews"]
    async with agent.test_context() as ctx:
        for i in range(10):
            await ctx.put(review(i, "awful" if i % 2 else "lovely"), key=b"p")
        await publisher.wait_for(10)
    outputs = publisher.on("t-review-sentiment")
    assert sorted(o["event_id"] for o in outputs) == [f"e{i}" for i in range(10)]
    assert {o["event_id"]: o["sentiment"]["label"] for o in outputs}["e1"] == "negative"
    assert max(model.requests) > 1, "concurrent actors share micro-batches"
    assert len(app.in_flight) == 0


async def test_bad_review_goes_to_its_dead_letter_topic_and_the_agent_goes_on(
    app_and_publisher: tuple[EnrichmentApp, RecordingPublisher, FakeModel],
) -> None:
    app, publisher, _ = app_and_publisher
    agent = app.agents["enrich-t-reviews"]
    async with agent.test_context() as ctx:
        await ctx.put(b'{"event_id": "bad-1", "text": ', key=b"p")
        await ctx.put(review(2, "fine"), key=b"p")
        await publisher.wait_for(2)
    [letter] = publisher.on("t-reviews.dlq")
    assert letter["event_id"] == "bad-1"
    assert letter["error"] == {
        "type": "MalformedJson",
        "message": letter["error"]["message"],
        "retriable": False,
    }
    assert letter["source"]["topic"] == "t-reviews" and letter["source"]["offset"] == 0
    assert [o["event_id"] for o in publisher.on("t-review-sentiment")] == ["e2"]


async def test_click_agent_keeps_recent_items_in_its_table(
    app_and_publisher: tuple[EnrichmentApp, RecordingPublisher, FakeModel],
) -> None:
    app, publisher, _ = app_and_publisher
    agent = app.agents["enrich-t-clickstream"]
    clicks = [("u1", "a"), ("u2", "a"), ("u2", "b"), ("u1", "c")]
    async with agent.test_context() as ctx:
        for i, (user, product) in enumerate(clicks):
            click = {
                "event_id": f"c{i}",
                "user_id": user,
                "session_id": "s",
                "product_id": product,
                "action": "add_to_cart",
                "ts": 0,
            }
            await ctx.put(orjson.dumps(click), key=user.encode())
        await publisher.wait_for(4)
    recs = publisher.on("t-recommendations")
    assert [r["event_id"] for r in recs] == ["c0", "c1", "c2", "c3"]
    assert [i["product_id"] for i in recs[-1]["items"]] == ["b"]
    (table_name,) = TABLES
    assert app.tables[table_name]["u1"] == ["a", "c"]


async def test_every_table_changelog_is_created_explicitly() -> None:
    settings = Settings(topic_prefix="t-", app_id="app-x")
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    names = {spec.name for spec in topic_specs(settings)}
    for table in app.tables.values():
        assert table.changelog_topic.get_topic_name() in names
        assert table.changelog_topic.get_topic_name() == changelog_topic(settings, table.name)
        assert table.partitions == settings.partitions


async def test_settings_reach_the_faust_app() -> None:
    settings = Settings(
        processing_guarantee="exactly_once",
        broker_rebalance_timeout_s=2,
        commit_interval_s=0.5,
        fetch_max_wait_ms=50,
    )
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    assert app.conf.processing_guarantee.value == "exactly_once"
    assert app.conf.broker_rebalance_timeout == 2 and app.conf.broker_commit_interval == 0.5
    assert app.fetch_max_wait_ms == 50
    assert app.conf.topic_disable_leader, (
        "no leader topic: every topic the worker needs is created explicitly"
    )
