"""The service-facing entry points over plain mappings (Faust tables are mappings too)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.events import ClickEvent
from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.content import ContentIndex
from streams.recommend.dedup import Origin
from streams.recommend.errors import InvalidEmbedding
from streams.recommend.service import (
    BlendedRecommender,
    EmbeddingSink,
    ItemUpdateApplier,
    decode_message,
    encode_message,
)
from streams.recommend.versioned import Versioned

CFG = RecommenderConfig(
    k=5, weights=Weights(history=1.0, history_repeat=1.0, cooccurrence=0.5, content=0.3, popularity=0.05)
)


class Wiring:
    """Two 'workers' sharing the global tables, with the internal topic as a list."""

    def __init__(self) -> None:
        self.users: dict[str, Any] = {}
        self.neighbours: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.boards: dict[str, Any] = {}
        self.embeddings: dict[str, Any] = {}
        self.content = ContentIndex()
        self.topic: list[bytes] = []
        self.rec = BlendedRecommender(
            CFG,
            self.users,
            Versioned(self.neighbours),
            Versioned(self.stats),
            Versioned(self.boards),
            self.content,
            self.send,
        )
        self.items = ItemUpdateApplier(
            CFG, Versioned(self.neighbours), Versioned(self.stats), Versioned(self.boards)
        )
        self.sink = EmbeddingSink(self.embeddings, self.content)

    async def send(self, updates: Sequence[Mapping[str, Any]], origin: Origin | None) -> None:
        self.topic.append(encode_message(updates, origin))

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
    assert Versioned(w.neighbours)["chips"] == {"salsa": [3.0, 0.0]}
    assert Versioned(w.stats)["salsa"][0] == 3.0 and Versioned(w.boards)["p0"]
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
