"""The Faust agents through `agent.test_context()`: real app, real pipeline, fake model and producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from streams_fakes import FakeModel, RecordingPublisher

from streams import faust_ext
from streams.app import EnrichmentApp, create_app
from streams.settings import Settings
from streams.topics import changelog_topic, topic_specs
from streams.topology import TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_USERS


@pytest.fixture
async def app_and_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[EnrichmentApp, RecordingPublisher, FakeModel]]:
    # No broker here: the tables' changelog writes stay in Faust's buffer; count them as delivered.
    monkeypatch.setattr(faust_ext, "delivered", no_wait)
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="t-", batch_linger_ms=20)
    model, publisher = FakeModel(), RecordingPublisher()
    app = create_app(settings, model=model, publisher=publisher)
    app.finalize()
    app.flow_control.resume()
    yield app, publisher, model
    await app.runtime.inference.close()
    # Iterating a stream makes Faust build its consumer, whose (never started) thread owns an event
    # loop that nothing closes outside a running worker.
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


async def no_wait() -> None:
    return None


async def all_finished(app: EnrichmentApp, wait_s: float = 5.0) -> None:
    """Every event taken is finished (its output and state writes acknowledged, in either order)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while len(app.in_flight) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert len(app.in_flight) == 0


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
    await all_finished(app)


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


async def test_click_agent_keeps_each_users_order_and_state_in_its_table(
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
        await publisher.wait_for(4 + 3)  # four recommendations, three item-update messages
        await all_finished(app)  # before the agent stops: its unfinished clicks would stay in flight
    recs = publisher.on("t-recommendations")
    by_user = {u: [r["event_id"] for r in recs if r["user_id"] == u] for u in ("u1", "u2")}
    assert by_user == {"u1": ["c0", "c3"], "u2": ["c1", "c2"]}
    assert all(r["latency_ms"] >= 0 for r in recs)
    assert app.tables[TABLE_USERS]["u1"]["s"] == [["a", 1.0], ["c", 1.0]]
    await all_finished(app)


async def test_item_updates_from_clicks_reach_the_global_tables(
    app_and_publisher: tuple[EnrichmentApp, RecordingPublisher, FakeModel],
) -> None:
    app, publisher, _ = app_and_publisher
    updates_topic = app.runtime.recommend.item_updates_topic
    async with app.agents["enrich-t-clickstream"].test_context() as ctx:
        for i, product in enumerate(("chips", "salsa")):
            click = {
                "event_id": f"c{i}",
                "user_id": "u",
                "session_id": "s",
                "product_id": product,
                "action": "add_to_cart",
                "ts": 0,
            }
            await ctx.put(orjson.dumps(click), key=b"u")
        await publisher.wait_for(2 + 1)  # the second click sends two item updates to one partition
    sent = [(k, v) for t, k, v in publisher.sent if t == updates_topic]
    assert [sorted(u["item"] for u in v["updates"]) for _, v in sent] == [["chips"], ["chips", "salsa"]]
    async with app.agents["recommend-item-updates"].test_context() as ctx:
        for key, value in sent:
            await ctx.put(orjson.dumps(value), key=key)
        await ctx.put(b"not json", key=b"p0")  # logged, not applied, the agent goes on
    # Stored versioned, with what it absorbed: [version, value, {partition: [offsets], "in": [offset]}]
    # (streams.recommend.versioned, streams.recommend.dedup): the pair came from click c1 at offset 1,
    # read at offset 1 of the internal topic.
    assert app.tables[TABLE_NEIGHBOURS]["chips"] == [1, {"salsa": [1.0, 0.0]}, {"0": [1], "in": [1]}]
    assert (
        app.tables[TABLE_ITEM_STATS]["salsa"][0] == 1 and app.tables[TABLE_ITEM_STATS]["salsa"][1][0] == 1.0
    )


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
