"""A click processed again (after a crash, a rebalance, a duplicate send) changes no table.

The recommender's one wiring over in-process tables, clicks carrying their clickstream coordinates as
in the worker; the internal topic is a list that a test can drop messages from, as a crash would.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.events import ClickEvent
from streams.recommend.config import RecommenderConfig
from streams.recommend.dedup import Origin
from streams.recommend.service import decode_message
from streams.recommend.versioned import Versioned
from streams.recommend.wiring import DictTables, RecommenderParts, build_recommender
from streams.topology import TABLE_USERS

CFG = RecommenderConfig(k=5)
PARTITIONS = 3


class Crash(Exception):
    """The worker dies here."""


class Worker:
    """The recommender's wiring with the internal topic as a list; `crash_at` kills a send."""

    def __init__(self) -> None:
        self.topic: list[tuple[int, bytes]] = []
        self.crash_at: int | None = None
        self.parts: RecommenderParts = build_recommender(CFG, PARTITIONS, DictTables(), self.send)

    async def send(self, partition: int, value: bytes) -> None:
        message = decode_message(value)
        if message.origin is not None and message.origin.offset == self.crash_at:
            raise Crash  # the user's state is written, this click's item updates are not delivered
        self.topic.append((partition, value))

    def drain(self) -> None:
        self.parts.applier.apply_batch([(decode_message(v), p) for p, v in self.topic])
        self.topic.clear()

    async def click(self, offset: int, click: ClickEvent) -> None:
        await self.parts.recommender.recommend(click, CFG.k, Origin(0, offset))

    def state(self) -> dict[str, Any]:
        """Every table as the logic sees it, with what each row absorbed (versions left out)."""
        out: dict[str, Any] = {}
        for name, table in self.parts.tables.items():
            if name == TABLE_USERS:
                out[name] = dict(table)
            else:
                view = Versioned(table)
                out[name] = {k: (view[k], view.applied(k)) for k in table}
        return out


def clicks(seed: int, n: int = 300) -> list[ClickEvent]:
    """Shoppers with several sessions each (session boundaries fall inside any replayed range)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rng.randrange(15)}"
        out.append(
            ClickEvent(
                event_id=f"e{i}",
                ts=datetime.fromtimestamp(1_700_000_000 + i, UTC),
                user_id=user,
                session_id=f"{user}-s{i // 40}",
                product_id=f"p{min(rng.randrange(30), rng.randrange(30))}",
                action=rng.choice(["view", "add_to_cart", "add_to_cart", "purchase"]),
            )
        )
    return out


async def applied_once(events: list[ClickEvent]) -> dict[str, Any]:
    worker = Worker()
    for offset, event in enumerate(events):
        await worker.click(offset, event)
        worker.drain()
    return worker.state()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_clicks_since_the_last_commit_processed_again_change_nothing(seed: int) -> None:
    events = clicks(seed)
    expected = await applied_once(events)
    worker = Worker()
    rng = random.Random(seed)
    committed, offset = 0, 0
    while offset < len(events):
        await worker.click(offset, events[offset])
        offset += 1
        if rng.random() < 0.3:
            worker.drain()  # the item agent's batches
        if rng.random() < 0.05:
            committed = offset  # a commit: every click before it is finished
        if rng.random() < 0.04:
            worker.drain()
            offset = committed  # a crash: processing restarts at the committed offset
    worker.drain()
    assert worker.state() == expected


async def test_a_crash_between_the_users_write_and_its_item_updates_loses_nothing() -> None:
    events = clicks(7)
    expected = await applied_once(events)
    worker = Worker()
    worker.crash_at = 120
    with pytest.raises(Crash):
        for offset, event in enumerate(events):
            await worker.click(offset, event)
            worker.drain()
    assert worker.state() != expected
    worker.crash_at = None
    for offset in range(100, len(events)):  # restarts at a commit before the crash
        await worker.click(offset, events[offset])
        worker.drain()
    assert worker.state() == expected


async def test_a_message_delivered_twice_is_absorbed_once() -> None:
    events = clicks(9, 120)
    expected = await applied_once(events)
    worker = Worker()
    for offset, event in enumerate(events):
        await worker.click(offset, event)
        worker.topic += worker.topic[-1:]  # a producer's retry delivers the last message again
        worker.drain()
    assert worker.state() == expected


async def test_the_users_record_keeps_its_last_click_and_that_clicks_item_updates() -> None:
    worker = Worker()
    events = clicks(5, 40)
    for offset, event in enumerate(events):
        await worker.click(offset, event)
    last = max(i for i, e in enumerate(events) if e.user_id == events[-1].user_id)
    record = worker.parts.tables[TABLE_USERS][events[-1].user_id]
    assert record["at"] == last and record["out"]
    assert {u["item"] for u in record["out"]} >= {events[-1].product_id}
