"""The service-facing entry points over plain mappings (Faust tables are mappings too)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.events import ClickEvent
from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.errors import InvalidEmbedding
from streams.recommend.service import decode_message
from streams.recommend.wiring import DictTables, build_recommender
from streams.topology import TABLE_EMBEDDINGS, TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_POPULAR, TABLE_USERS

CFG = RecommenderConfig(
    k=5, weights=Weights(history=1.0, history_repeat=1.0, cooccurrence=0.5, content=0.3, popularity=0.05)
)


class Wiring:
    """The recommender's one wiring over dicts (one partition), with the internal topic as a list. The
    tables are seen as the logic sees them (replicated values without their versions)."""

    def __init__(self) -> None:
        self.topic: list[bytes] = []
        parts = build_recommender(CFG, 1, DictTables(), self.send)
        self.users = parts.views[TABLE_USERS]
        self.neighbours = parts.views[TABLE_NEIGHBOURS]
        self.stats = parts.views[TABLE_ITEM_STATS]
        self.boards = parts.views[TABLE_POPULAR]
        self.embeddings = parts.views[TABLE_EMBEDDINGS]
        self.rec, self.items, self.sink = parts.recommender, parts.applier, parts.sink
        self.content = parts.sink.content

    async def send(self, partition: int, value: bytes) -> None:
        self.topic.append(value)

    def drain(self) -> None:
        for raw in self.topic:
            self.items.apply_message(decode_message(raw), partition=0)
        self.topic.clear()


def click(n: int, user: str, session: str, product: str) -> ClickEvent:
    return ClickEvent(
        event_id=f"e{n}",
        ts=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        user_id=user,
        session_id=session,
        product_id=product,
        action="add_to_cart",
    )


async def test_clicks_update_the_tables_and_come_back_as_recommendations() -> None:
    w = Wiring()
    n = 0
    for u in range(3):
        for p in ("chips", "salsa"):
            n += 1
            await w.rec.recommend(click(n, f"u{u}", f"s{u}", p), 5)
        w.drain()
    assert set(w.users) == {"u0", "u1", "u2"}
    assert orjson.loads(orjson.dumps(w.users["u0"]))["s"] == [["chips", 1.0], ["salsa", 1.0]]
    assert w.neighbours["chips"] == {"salsa": [3.0, 0.0]}
    assert w.stats["salsa"][0] == 3.0 and w.boards["p0"]
    items = await w.rec.recommend(click(99, "new", "s-new", "chips"), 3)
    assert items[0].product_id == "salsa"
    assert [i.product_id for i in items] == ["salsa"]  # chips is in the cart; nothing else is known


async def test_a_new_upload_is_recommended_before_anyone_clicks_it() -> None:
    w = Wiring()
    w.sink.put("red-dress", [1.0, 0.0])
    w.sink.put("new-red-dress", [0.96, 0.28])
    items = await w.rec.recommend(click(1, "u", "s", "red-dress"), 3)
    assert [i.product_id for i in items] == ["new-red-dress"]
    with pytest.raises(InvalidEmbedding):
        w.sink.put("broken", [0.5, 0.5, 0.5])
    assert "broken" not in w.embeddings


def test_sync_indexes_embeddings_written_elsewhere() -> None:
    w = Wiring()
    w.embeddings["from-another-worker"] = [0.0, 1.0]
    assert w.sink.sync() == 1 and "from-another-worker" in w.content
    assert w.sink.sync() == 0


async def test_a_click_asked_for_no_items_is_recorded_and_not_ranked() -> None:
    w = Wiring()
    await w.rec.recommend(click(1, "u1", "s1", "chips"), 5)
    w.drain()
    assert await w.rec.recommend(click(2, "u2", "s2", "salsa"), 0) == []
    assert orjson.loads(orjson.dumps(w.users["u2"]))["s"] == [["salsa", 1.0]]
    w.drain()
    assert w.stats["salsa"][0] == 1.0  # its item updates were sent all the same
