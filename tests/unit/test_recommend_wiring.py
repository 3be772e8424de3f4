"""The service side of the recommender without Kafka: routing and batching of item updates, versioned
replicated values, the recommendation event a click becomes."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from streams_fakes import FakeModel, RecordingPublisher

from streams.events import ClickEvent, Recommendation
from streams.recommend.config import RecommenderConfig
from streams.recommend.dedup import Origin
from streams.recommend.engine import Click, ItemUpdate, partition_of, user_step
from streams.recommend.errors import CorruptState, InvalidEmbedding
from streams.recommend.service import (
    ItemMessage,
    ItemUpdateApplier,
    decode_message,
    encode_message,
    route_updates,
)
from streams.recommend.state import UserState
from streams.recommend.versioned import Versioned, is_newer
from streams.recommend.wiring import DictTables, build_recommender, embedding_of
from streams.records import SourceRecord
from streams.runtime import build_runtime
from streams.settings import Settings
from streams.topology import ITEM_UPDATES, TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_POPULAR, TABLE_USERS
from tooling.recommend_eval.local import LocalRecommender

CFG = RecommenderConfig(k=5)


def shopping(seed: int, clicks: int = 400) -> list[Click]:
    """Baskets over a small catalogue, with repeat buyers: rows fill, items recur, carts overlap."""
    rng = random.Random(seed)
    out = []
    for n in range(clicks):
        user = f"u{rng.randrange(12)}"
        session = f"{user}-s{n // 9}"
        product = f"p{min(rng.randrange(40), rng.randrange(40))}"  # skewed: some items are popular
        out.append(Click(f"e{n}", user, session, product, rng.choice(["add_to_cart", "view"]), float(n)))
    return out


def updates_of(clicks: list[Click]) -> list[list[ItemUpdate]]:
    states: dict[str, UserState] = {}
    return [user_step(states.setdefault(c.user_id, UserState()), c, CFG) for c in clicks]


def test_each_item_always_goes_to_the_same_partition_and_nothing_is_lost() -> None:
    for updates in updates_of(shopping(1)):
        routed = route_updates([u.to_json() for u in updates], 4)
        assert len(routed) <= 4
        sent = [(p, u["item"]) for p, values in routed.items() for u in values]
        assert sorted(item for _, item in sent) == sorted(u.item for u in updates)
        assert all(p == partition_of(item, 4) for p, item in sent)
        for values in routed.values():
            message = decode_message(encode_message(values, Origin(2, 17), 9))
            assert [u.to_json() for u in message.updates] == values
            assert message.origin == Origin(2, 17) and message.floor == 9


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"updates": 3}',
        b'{"updates": [1]}',
        b'{"updates": [], "src": [1]}',
        b'{"updates": [], "src": [1, 2], "floor": "x"}',
    ],
)
def test_a_corrupt_internal_message_is_refused(raw: bytes) -> None:
    with pytest.raises(CorruptState):
        decode_message(raw)


def messages_of(clicks: list[Click], partitions: int = 4) -> list[tuple[ItemMessage, int]]:
    """The internal topic's messages of these clicks, click n coming from clickstream offset n."""
    return [
        (ItemMessage([ItemUpdate.from_json(v) for v in values], Origin(0, n), 0), p)
        for n, click_updates in enumerate(updates_of(clicks))
        for p, values in route_updates([u.to_json() for u in click_updates], partitions).items()
    ]


def plain(tables: list[Any]) -> list[dict[str, Any]]:
    """The values the logic sees, and what each row has absorbed (versions left out)."""
    return [{k: (Versioned(t)[k], Versioned(t).applied(k)) for k in t} for t in tables]


def test_a_batch_writes_each_row_once_and_ends_where_one_by_one_ends() -> None:
    messages = messages_of(shopping(2))

    class Counting(dict[str, Any]):
        writes = 0

        def __setitem__(self, key: str, value: Any) -> None:
            Counting.writes += 1
            super().__setitem__(key, value)

    one: list[dict[str, Any]] = [{}, {}, {}]
    single = ItemUpdateApplier(CFG, *(Versioned(t) for t in one))
    for message, p in messages:
        for u in message.updates:
            single.apply_message(ItemMessage([u], message.origin, message.floor), p)
    batched: list[Counting] = [Counting(), Counting(), Counting()]
    written = ItemUpdateApplier(CFG, *(Versioned(t) for t in batched)).apply_batch(messages)
    assert plain(batched) == plain(one)
    assert written == Counting.writes
    assert written < sum(len(m.updates) for m, _ in messages) / 2, "popular rows are written once per batch"


def test_messages_delivered_again_change_no_row() -> None:
    messages = messages_of(shopping(4))
    once: list[dict[str, Any]] = [{}, {}, {}]
    ItemUpdateApplier(CFG, *(Versioned(t) for t in once)).apply_batch(messages)
    # Every message twice: a click processed again after a crash, a producer's retry, a replayed batch.
    rng = random.Random(0)
    again = messages + rng.sample(messages, len(messages) // 2)
    twice: list[dict[str, Any]] = [{}, {}, {}]
    applier = ItemUpdateApplier(CFG, *(Versioned(t) for t in twice))
    for start in range(0, len(messages), 37):
        applier.apply_batch(messages[start : start + 37])
    applier.apply_batch(again[len(messages) :])
    applier.apply_batch(messages[:50])
    assert plain(twice) == plain(once)
    # Without origins (in-process tools) nothing is deduplicated: the same messages count twice.
    anonymous = [(ItemMessage(m.updates, None, 0), p) for m, p in messages[:40]]
    blind: list[dict[str, Any]] = [{}, {}, {}]
    ItemUpdateApplier(CFG, *(Versioned(t) for t in blind)).apply_batch(anonymous + anonymous)
    counted: list[dict[str, Any]] = [{}, {}, {}]
    ItemUpdateApplier(CFG, *(Versioned(t) for t in counted)).apply_batch(anonymous)
    assert plain(blind)[1] != plain(counted)[1]


def test_rows_forget_clicks_below_the_committed_offset() -> None:
    table: dict[str, Any] = {}
    applier = ItemUpdateApplier(CFG, Versioned({}), Versioned(table), Versioned({}))
    update = ItemUpdate("a", (), 1.0, False, False, 1.0)
    for offset in range(10):
        applier.apply_message(ItemMessage([update], Origin(3, offset), 0), 0)
    assert Versioned(table).applied("a") == {"3": list(range(10))}
    applier.apply_message(ItemMessage([update], Origin(3, 10), 8), 0)  # offsets 0-7 are committed
    assert Versioned(table).applied("a") == {"3": [8, 9, 10]}
    assert Versioned(table)["a"][0] == 11.0  # eleven clicks, each counted once


def test_the_workers_path_answers_like_the_in_process_reference() -> None:
    # The worker's path: each click with its clickstream record (user records then keep `at`/`out`, rows
    # the clicks they absorbed), its item updates as records of the internal topic, applied by the item
    # agent's entry point. The in-process reference (the offline evaluation's) gives no origins and
    # applies the updates itself. Same answers, same table values.
    reference = LocalRecommender(CFG, partitions=4)
    sent: list[SourceRecord] = []
    offsets: dict[int, itertools.count[int]] = defaultdict(itertools.count)  # each partition's next offset

    async def send(partition: int, value: bytes) -> None:
        sent.append(SourceRecord(ITEM_UPDATES, partition, next(offsets[partition]), None, value))

    worker = build_recommender(CFG, 4, DictTables(), send, ITEM_UPDATES)
    worker.recommender.popular.ttl_s = 0.0  # the popular list as the boards are at each click
    for n, c in enumerate(shopping(3)):
        event = ClickEvent.model_validate(
            {
                "event_id": c.event_id,
                "ts": c.ts,
                "user_id": c.user_id,
                "session_id": c.session_id,
                "product_id": c.product_id,
                "action": c.action,
            }
        )
        got = asyncio.run(worker.recommender.recommend(event, CFG.k, Origin(0, n)))
        expected = reference.on_click(c)
        assert expected is not None
        assert [(i.product_id, i.score, i.source) for i in got] == [
            (r.product_id, r.score, r.source) for r in expected
        ]
        asyncio.run(worker.apply_item_updates(sent))
        sent.clear()
    stored = reference.tables()
    assert {
        u: {k: v for k, v in r.items() if k not in ("at", "out")}
        for u, r in worker.tables[TABLE_USERS].items()
    } == stored[TABLE_USERS]
    for name in (TABLE_NEIGHBOURS, TABLE_ITEM_STATS, TABLE_POPULAR):
        assert dict(worker.views[name].items()) == dict(Versioned(stored[name]).items()), name


def test_versioned_values_never_go_back() -> None:
    table: dict[str, Any] = {}
    rows = Versioned(table)
    rows["a"] = {"b": [1.0, 0.0]}
    rows["a"] = {"b": [2.0, 0.0]}
    assert table["a"] == [2, {"b": [2.0, 0.0]}] and rows["a"] == {"b": [2.0, 0.0]}
    assert rows.get("missing") is None and list(rows) == ["a"] and len(rows) == 1
    # What a replica does with changelog records of "a": the echo of version 1 is stale.
    assert not is_newer([1, {"b": [1.0, 0.0]}], table["a"])
    assert not is_newer([2, {"b": [2.0, 0.0]}], table["a"])
    assert is_newer([3, {"b": [3.0, 0.0]}], table["a"])
    assert is_newer([1, {}], None) and is_newer(None, table["a"])
    table["bad"] = {"b": [1.0, 0.0]}  # an unversioned value: not something this service wrote
    with pytest.raises(CorruptState):
        rows.get("bad")
    with pytest.raises(CorruptState):
        is_newer(["1", {}], table["a"])


def test_embeddings_are_read_from_product_categories_records() -> None:
    assert embedding_of(orjson.dumps({"product_id": "p1", "embedding": [0.6, 0.8]})) == ("p1", [0.6, 0.8])
    for raw in (b"{", b"[]", orjson.dumps({"product_id": "p1"}), orjson.dumps({"embedding": [1.0]})):
        with pytest.raises(InvalidEmbedding):
            embedding_of(raw)


async def test_a_click_becomes_one_recommendation_with_sources_and_its_latency() -> None:
    now = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    publisher = RecordingPublisher()
    settings = Settings(recommendations_k=3)
    runtime = build_runtime(settings, None, model=FakeModel(), publisher=publisher, clock=lambda: now)
    pipeline = runtime.pipeline
    sent_at = (now - timedelta(milliseconds=250)).timestamp()
    for n, (user, product) in enumerate([("a", "x"), ("a", "y"), ("b", "x")]):
        # The click's own ts is years old (a replay): the latency counts from its record time.
        click = {"event_id": f"c{n}", "user_id": user, "session_id": f"s-{user}", "product_id": product}
        value = orjson.dumps({**click, "action": "add_to_cart", "ts": "2017-05-07T10:00:00Z"})
        record = SourceRecord("clickstream", 0, n, user.encode(), value, sent_at)
        assert await pipeline.handle(record) == "enriched"
    recs = [Recommendation.model_validate(v) for v in publisher.on("recommendations")]
    assert [r.event_id for r in recs] == ["c0", "c1", "c2"]
    assert all(r.latency_ms == pytest.approx(250.0) for r in recs)
    last = recs[-1]
    assert [(i.product_id, i.source) for i in last.items] == [("y", "cooccurrence")]
    assert publisher.sent[-1][1] == b"b"
    # Without a record time (a producer that sets none), the click's ts is the start.
    click = {"event_id": "c9", "user_id": "c", "session_id": "s", "product_id": "x", "action": "view"}
    value = orjson.dumps({**click, "ts": (now - timedelta(seconds=2)).isoformat()})
    await pipeline.handle(SourceRecord("clickstream", 0, 9, b"c", value, None))
    assert Recommendation.model_validate(publisher.on("recommendations")[-1]).latency_ms == pytest.approx(
        2000.0
    )
    await runtime.close()


def test_the_item_agent_reading_its_topic_again_changes_no_row() -> None:
    # The clicks are all committed (floor past them): rows forget their offsets, and only the internal
    # topic's offset they keep stops a restarted item agent from applying its messages again.
    committed = len(shopping(5))
    messages = [
        (dataclasses.replace(m, floor=committed, offset=n), p)
        for n, (m, p) in enumerate(messages_of(shopping(5)))
    ]
    once: list[dict[str, Any]] = [{}, {}, {}]
    ItemUpdateApplier(CFG, *(Versioned(t) for t in once)).apply_batch(messages)
    again: list[dict[str, Any]] = [{}, {}, {}]
    applier = ItemUpdateApplier(CFG, *(Versioned(t) for t in again))
    applier.apply_batch(messages[:300])
    applier.apply_batch(messages[120:])  # restarted at an earlier committed offset of the internal topic
    assert plain(again) == plain(once)
    assert all(set(applied) == {"in"} for table in plain(again)[:2] for _, applied in table.values())
