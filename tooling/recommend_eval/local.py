"""The recommender in this process: the service's one wiring over dicts, driven one click at a time.

`LocalRecommender` runs `streams.recommend.wiring.build_recommender` over `DictTables`: a click goes
through the `BlendedRecommender` the worker runs, an embedding through the same `EmbeddingSink`, and the
item updates a click sends (the internal topic's messages) through the entry point of the worker's item
agent, `apply_item_updates`, in batches, before anything reads the global tables: the next ranked click,
`view()`, the tables. So, as in the service, a click is ranked before its own item updates reach the
global tables, and after those of every click before it. (A click that is only recorded, `rank=False`,
reads no global table: a replayed history is applied in a few large batches, each row written once per
batch, as the worker does.) Its tables hold what the worker's changelogs hold (`tables()`), so a
recommender rebuilt from them (`from_tables`) carries on identically.

The offline evaluator, the unit tests and the integration tests' reference use it. The recommender is
async (the worker awaits its table writes); nothing here waits on I/O, so each call runs to its end on a
private event loop.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

from streams.events import ClickEvent, ScoredItem
from streams.recommend.config import RecommenderConfig
from streams.recommend.dedup import INTERNAL, Origin
from streams.recommend.engine import Click, partition_of
from streams.recommend.errors import InvalidClick
from streams.recommend.ranker import GlobalView, ScoredProduct
from streams.recommend.state import UserState
from streams.recommend.versioned import Versioned
from streams.recommend.wiring import DictTables, build_recommender
from streams.records import SourceRecord
from streams.topology import (
    ITEM_UPDATES,
    TABLE_EMBEDDINGS,
    TABLE_ITEM_STATS,
    TABLE_NEIGHBOURS,
    TABLE_POPULAR,
    TABLE_USERS,
)

# Called after a click is answered and before its item updates are applied: the user's state as stored
# and the global view the click was ranked on.
RankedOn = Callable[[UserState, GlobalView], None]

# At most this many item-update messages wait to be applied (a replayed history sends about 3 a click).
# Larger batches read and write each row fewer times, but hold every message decoded: on the Instacart
# replay 100,000 took a fifth less time per click than 10,000 and 2.5 times the memory (800 MB).
PENDING_MAX = 10_000


class LocalRecommender:
    """The service's recommender over dicts, in this process.

    `users` holds each user's stored record (`UserState.to_json()`, `user()` decodes one); `neighbours`,
    `stats`, `boards` and `embeddings` are the values the logic sees of the replicated tables (their
    stored forms, `tables()`, carry versions). Read the global ones through these attributes each time:
    reading applies the item updates sent so far.
    """

    def __init__(self, config: RecommenderConfig, partitions: int = 4) -> None:
        self.config = config
        self.partitions = partitions
        # Clickstream partition -> offset of the click in progress: every click before it is finished.
        self._committed: dict[int, int] = {}
        self._sent: list[tuple[int, bytes]] = []  # item updates not applied yet, in the order sent
        self._offsets = [0] * partitions  # next offset of each partition of the internal topic
        self.parts = build_recommender(
            config,
            partitions,
            DictTables(),
            self._send,
            ITEM_UPDATES,
            committed=lambda partition: self._committed.get(partition, 0),
        )
        self.parts.recommender.popular.ttl_s = 0.0  # the popular list as the boards are at each click
        self.users: MutableMapping[str, Any] = self.parts.views[TABLE_USERS]
        self.content = self.parts.sink.content
        self._loop = asyncio.new_event_loop()
        self._close = weakref.finalize(self, self._loop.close)

    def close(self) -> None:
        """Close the private event loop (also done when the recommender is garbage-collected)."""
        self._close()

    # --- the three entry points ----------------------------------------------------------------------
    def on_click(
        self,
        click: Click,
        rank: bool = True,
        *,
        origin: Origin | None = None,
        ranked_on: RankedOn | None = None,
    ) -> list[ScoredProduct] | None:
        """One click, as the worker handles it: the user's state, then the answer (the top k, or with
        `rank=False` none: the click is only recorded); its item updates are sent.

        `origin`: the click's clickstream record, as the worker passes it: the user's record then keeps
        the last click applied and its updates (`at`, `out`), and a click at or below `at` changes
        nothing again (streams.recommend.dedup). None, as in the offline replay: every click counts.
        `ranked_on(state, view)` is called with what a ranked click was ranked on.
        """
        try:
            ts = datetime.fromtimestamp(click.ts, UTC) if math.isfinite(click.ts) else None
        except (OverflowError, OSError, ValueError):
            ts = None
        if ts is None:
            raise InvalidClick(f"click time is not a representable time: {click.ts!r}")
        # Built without validation: the recommender checks what it uses (InvalidClick).
        event = ClickEvent.model_construct(
            event_id=click.event_id,
            ts=ts,
            user_id=click.user_id,
            session_id=click.session_id,
            product_id=click.product_id,
            action=click.action,
        )
        if origin is not None:
            self._committed[origin.partition] = origin.offset
        if rank:
            self._apply_sent()
        items = self._loop.run_until_complete(
            self._click(event, self.config.k if rank else 0, origin, ranked_on)
        )
        if len(self._sent) >= PENDING_MAX:
            self._apply_sent()
        return [ScoredProduct(i.product_id, i.score, i.source) for i in items] if rank else None

    async def _click(
        self, event: ClickEvent, k: int, origin: Origin | None, ranked_on: RankedOn | None
    ) -> list[ScoredItem]:
        items, durable = await self.parts.recommender.answer(event, k, origin)
        if ranked_on is not None:
            ts = event.ts.timestamp()
            ranked_on(self.user(event.user_id), self._view(ts))
        if durable is not None:
            await durable  # the item updates, sent
        return items

    async def _send(self, partition: int, value: bytes) -> None:
        self._sent.append((partition, value))

    def _apply_sent(self) -> None:
        """The item agent's work on the messages sent so far, as one batch of the internal topic's
        records."""
        if not self._sent:
            return
        records = []
        for partition, value in self._sent:
            records.append(SourceRecord(ITEM_UPDATES, partition, self._offsets[partition], None, value))
            self._offsets[partition] += 1
        self._sent = []
        self._loop.run_until_complete(self.parts.apply_item_updates(records))

    def on_product(self, product_id: str, embedding: Any) -> None:
        """A product's embedding, for content similarity (InvalidEmbedding before anything is stored)."""
        self.parts.sink.put(product_id, embedding)

    # --- what the logic reads ------------------------------------------------------------------------
    def user(self, user_id: str) -> UserState:
        return UserState.from_json(self.users.get(user_id))

    @property
    def neighbours(self) -> MutableMapping[str, Any]:
        return self._global(TABLE_NEIGHBOURS)

    @property
    def stats(self) -> MutableMapping[str, Any]:
        return self._global(TABLE_ITEM_STATS)

    @property
    def boards(self) -> MutableMapping[str, Any]:
        return self._global(TABLE_POPULAR)

    @property
    def embeddings(self) -> MutableMapping[str, Any]:
        return self._global(TABLE_EMBEDDINGS)

    def _global(self, name: str) -> MutableMapping[str, Any]:
        self._apply_sent()
        view: MutableMapping[str, Any] = self.parts.views[name]
        return view

    def view(self, now: float) -> GlobalView:
        """The global state a click at `now` is ranked on."""
        self._apply_sent()
        return self._view(now)

    def _view(self, now: float) -> GlobalView:
        views = self.parts.views
        popular = self.parts.recommender.popular.get(now)
        return GlobalView(views[TABLE_NEIGHBOURS], views[TABLE_ITEM_STATS], popular, self.content, now)

    # --- the tables as their changelogs hold them ---------------------------------------------------
    def tables(self) -> dict[str, dict[str, Any]]:
        """Every table by its name in the topology, as stored: key -> JSON-able value, what its changelog
        replays (replicated values versioned, `streams.recommend.versioned`). Live, not a copy."""
        self._apply_sent()
        return {name: table for name, table in self.parts.tables.items()}

    @classmethod
    def from_tables(
        cls, config: RecommenderConfig, tables: Mapping[str, Mapping[str, Any]], partitions: int = 4
    ) -> LocalRecommender:
        """A recommender rebuilt from stored table values only (what a restarted worker recovers)."""
        rec = cls(config, partitions)
        unknown = set(tables) - set(rec.parts.tables)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}; known: {sorted(rec.parts.tables)}")
        for name, values in tables.items():
            rec.parts.tables[name].update(values)
        # The internal topic goes on where it was: rows keep the last of its offsets they absorbed.
        for name in (TABLE_NEIGHBOURS, TABLE_ITEM_STATS):
            view = Versioned(rec.parts.tables[name])
            for item in view:
                last = view.applied(item).get(INTERNAL)
                if last:
                    p = partition_of(item, partitions)
                    rec._offsets[p] = max(rec._offsets[p], last[0] + 1)
        rec.parts.sink.sync()  # the content index, from the embeddings
        return rec

    def table_bytes(self) -> dict[str, dict[str, int]]:
        """Entries and serialised size (orjson, keys + values as stored) of each table."""
        self._apply_sent()
        return self.parts.sizes()
