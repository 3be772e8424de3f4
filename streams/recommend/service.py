"""The recommender behind the service's `Recommender` interface, over tables (no Faust import here).

The Faust app creates the tables and topics and hands them in as plain mappings and a send function;
the agents then only call these three entry points:

- `BlendedRecommender.recommend(click, k)`: the clickstream agent, once per click (user-keyed partition);
  its item updates leave through `send_updates`, grouped by partition of the internal topic
  (`route_updates`: an item always goes to the same partition, whose owner is the row's one writer);
- `ItemUpdateApplier.apply_batch(batch)`: the agent on the internal topic, a batch of messages at a
  time, each touched row written once;
- `EmbeddingSink.put(product_id, embedding)`: the agent on `product-categories`.

Tables (docs/recommendations.md, "State and partitioning"):

    users        partitioned  user_id -> UserState.to_json()     co-partitioned with clickstream
    neighbours   replicated   item    -> {neighbour: [count, error]}      written by ItemUpdateApplier only
    item_stats   replicated   item    -> [weight, decayed, ref_ts, buys, repeats]           "
    boards       replicated   "p<partition>" -> most popular items of that item partition   "
    embeddings   replicated   product_id -> unit vector                  written by EmbeddingSink only

`streams.recommend.wiring` builds them over the tables, for the worker and in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streams.events import ClickEvent, ModelRef, ScoredItem
from streams.recommend.config import RecommenderConfig
from streams.recommend.content import ContentIndex
from streams.recommend.cooccurrence import Row, apply_updates, decode_row
from streams.recommend.dedup import Applied, Origin, mark, prune, seen
from streams.recommend.engine import Click, ItemUpdate, partition_of, user_step
from streams.recommend.errors import CorruptState
from streams.recommend.popularity import (
    BoardEntry,
    Stats,
    apply_item_event,
    decode_stats,
    merge_boards,
    update_board,
)
from streams.recommend.ranker import GlobalView, ScoredProduct, recommend
from streams.recommend.state import UserState

MODEL = ModelRef(name="blended-recommender", version="1")

# Sends a click's item updates (JSON) to the internal topic, tagged with the click's origin.
SendUpdates = Callable[[Sequence[Mapping[str, Any]], Origin | None], Awaitable[None]]


class RowTable(Protocol):
    """A replicated table whose rows remember the clicks they absorbed (`streams.recommend.versioned`)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def applied(self, key: str) -> Applied: ...

    def put(self, key: str, value: Any, applied: Applied) -> None: ...


class PopularCache:
    """The merged most-popular list, recomputed at most every `ttl_s` seconds (boards change often)."""

    def __init__(self, boards: Mapping[str, Any], config: RecommenderConfig, ttl_s: float = 1.0) -> None:
        self.boards = boards
        self.config = config
        self.ttl_s = ttl_s
        self._at = -float("inf")
        self._items: list[tuple[str, float]] = []

    def get(self, now: float) -> list[tuple[str, float]]:
        tick = time.monotonic()
        if tick - self._at >= self.ttl_s:
            self._items = merge_boards(
                self.boards.values(),
                now,
                self.config.popular_board_size,
                self.config.popularity_half_life_s,
            )
            self._at = tick
        return self._items


class BlendedRecommender:
    """streams.protocols.Recommender: record the click, answer with the blended top k."""

    model = MODEL

    def __init__(
        self,
        config: RecommenderConfig,
        users: MutableMapping[str, Any],
        neighbours: Mapping[str, Any],
        item_stats: Mapping[str, Any],
        boards: Mapping[str, Any],
        content: ContentIndex,
        send_updates: SendUpdates,
        popular_ttl_s: float = 1.0,
    ) -> None:
        self.config = config
        self.users = users
        self.neighbours = neighbours
        self.item_stats = item_stats
        self.content = content
        self.popular = PopularCache(boards, config, popular_ttl_s)
        self.send_updates = send_updates

    async def recommend(self, click: ClickEvent, k: int, origin: Origin | None = None) -> list[ScoredItem]:
        """`answer`, waiting for the click's state writes to be acknowledged."""
        items, durable = await self.answer(click, k, origin)
        if durable is not None:
            await durable
        return items

    async def answer(
        self, click: ClickEvent, k: int, origin: Origin | None = None
    ) -> tuple[list[ScoredItem], asyncio.Task[None] | None]:
        """Apply the click to its user's state (once: `origin` is the click's clickstream record,
        streams.recommend.dedup) and answer with the blended top k; the state writes and item updates
        are sent at once, and the returned task ends when they are acknowledged."""
        c = Click(
            click.event_id,
            click.user_id,
            click.session_id,
            click.product_id,
            click.action,
            click.ts.timestamp(),
        )
        record = self.users.get(c.user_id)
        state = UserState.from_json(record)
        at = record.get("at") if isinstance(record, Mapping) else None
        resend: Sequence[Mapping[str, Any]] | None = None
        if origin is not None and isinstance(at, int) and origin.offset <= at:
            # Processed again after a crash or a rebalance: the state already holds this click.
            if origin.offset == at and isinstance(record, Mapping):
                # Its item updates may not have been delivered: send them again.
                resend = record.get("out") or []
        else:
            updates = [u.to_json() for u in user_step(state, c, self.config)]
            stored = state.to_json()
            if origin is not None:
                stored |= {"at": origin.offset, "out": updates}
            # Assigning (not mutating in place) is what writes the table's changelog.
            self.users[c.user_id] = stored
            resend = updates
        recs: list[ScoredProduct] = []
        if k > 0:  # k = 0: the click is recorded, not answered (an in-process replay of history)
            config = self.config if k == self.config.k else dataclasses.replace(self.config, k=k)
            view = GlobalView(self.neighbours, self.item_stats, self.popular.get(c.ts), self.content, c.ts)
            recs = recommend(state, view, config)
        # The global rows change after this click is answered, through the item-keyed topic.
        durable = asyncio.ensure_future(self.send_updates(resend, origin)) if resend is not None else None
        return [scored_item(r) for r in recs], durable


def scored_item(r: ScoredProduct) -> ScoredItem:
    return ScoredItem.model_validate({"product_id": r.product_id, "score": r.score, "source": r.source})


def route_updates(
    updates: Iterable[Mapping[str, Any]], partitions: int
) -> dict[int, list[Mapping[str, Any]]]:
    """One message per partition of the internal topic: partition -> the updates (JSON) of its items.

    An item always goes to the same partition (`partition_of`), so each item's rows keep exactly one
    writer; grouping a click's updates by partition sends at most `partitions` messages per click
    instead of one per touched item (8.2 on average on the Instacart sample).
    """
    routed: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for u in updates:
        routed[partition_of(str(u["item"]), partitions)].append(u)
    return dict(routed)


@dataclass(frozen=True)
class ItemMessage:
    """A message of the internal topic: one click's updates of the items of one partition."""

    updates: list[ItemUpdate]
    origin: Origin | None  # the click's clickstream record (None from in-process tools)
    floor: int  # the sender's committed offset of that clickstream partition
    offset: int | None = None  # where the item agent read it on the internal topic (not encoded)


def encode_message(
    updates: Sequence[Mapping[str, Any]], origin: Origin | None = None, floor: int = 0
) -> bytes:
    value: dict[str, Any] = {"updates": list(updates)}
    if origin is not None:
        value |= {"src": origin.to_json(), "floor": floor}
    return orjson.dumps(value)


def decode_message(raw: bytes) -> ItemMessage:
    """A message of the internal topic, checked (CorruptState if it is not what the workers write)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptState(f"item update message is not JSON: {exc}") from None
    updates = value.get("updates") if isinstance(value, dict) else None
    if not isinstance(updates, list) or not all(isinstance(u, dict) for u in updates):
        raise CorruptState("item update message must be an object with a list of updates")
    origin = Origin.from_json(value["src"]) if "src" in value else None
    floor = value.get("floor", 0)
    if not isinstance(floor, int) or isinstance(floor, bool):
        raise CorruptState(f"item update message floor must be an integer, got {floor!r}")
    return ItemMessage([ItemUpdate.from_json(u) for u in updates], origin, floor)


class ItemUpdateApplier:
    """The item-keyed agent's work: one writer per item row, stats row and partition board. Rows and
    stats absorb a click's message once (streams.recommend.dedup); a board holds each item's current
    popularity, which the same message puts there again harmlessly."""

    def __init__(
        self,
        config: RecommenderConfig,
        neighbours: RowTable,
        item_stats: RowTable,
        boards: MutableMapping[str, Any],
    ) -> None:
        self.config = config
        self.neighbours = neighbours
        self.item_stats = item_stats
        self.boards = boards
        self.floors: dict[int, int] = {}  # clickstream partition -> highest committed offset heard of

    def apply_message(self, message: ItemMessage, partition: int) -> int:
        return self.apply_batch([(message, partition)])

    def apply_batch(self, batch: Iterable[tuple[ItemMessage, int]]) -> int:
        """Messages of the internal topic, (message, partition) each, in order.

        The result is exactly that of applying every message one after another, but each touched row,
        stats row and board is written to its table once, at the end: a table write is a changelog
        record, and popular items are touched by most messages. A message whose click a row has
        already absorbed leaves that row as it is. Returns the rows written.
        """
        rows: dict[str, tuple[Row, Applied]] = {}
        stats: dict[str, tuple[Stats, Applied]] = {}
        boards: dict[str, list[BoardEntry]] = {}
        changed_boards: set[str] = set()
        config = self.config
        for message, partition in batch:
            origin = message.origin
            if origin is not None and message.floor > self.floors.get(origin.partition, -1):
                self.floors[origin.partition] = message.floor
            at = message.offset
            for u in message.updates:
                st, st_applied = stats[u.item] if u.item in stats else self._stats(u.item)
                if not seen(st_applied, origin, at):
                    st = apply_item_event(
                        st, u.weight, u.purchase, u.repeat, u.ts, config.popularity_half_life_s
                    )
                    mark(st_applied, origin, at)
                stats[u.item] = (st, st_applied)
                if u.pairs:
                    row, row_applied = rows[u.item] if u.item in rows else self._row(u.item)
                    if not seen(row_applied, origin, at):
                        row = apply_updates(row, u.pairs, config.neighbour_capacity)
                        mark(row_applied, origin, at)
                    rows[u.item] = (row, row_applied)
                if u.weight > 0:
                    # A board holds each item's current popularity: putting it again is harmless.
                    key = f"p{partition}"
                    board = boards[key] if key in boards else self.boards.get(key)
                    new = update_board(
                        board, u.item, st, config.popular_board_size, config.popularity_half_life_s
                    )
                    boards[key] = new
                    if new is not board:
                        changed_boards.add(key)
        for item, (row, applied) in rows.items():
            self.neighbours.put(item, row, prune(applied, self.floors))
        for item, (st, applied) in stats.items():
            self.item_stats.put(item, st, prune(applied, self.floors))
        for key in changed_boards:
            self.boards[key] = boards[key]
        return len(rows) + len(stats) + len(changed_boards)

    def _row(self, item: str) -> tuple[Row, Applied]:
        return decode_row(self.neighbours.get(item)) or {}, self.neighbours.applied(item)

    def _stats(self, item: str) -> tuple[Stats, Applied]:
        return decode_stats(self.item_stats.get(item)), self.item_stats.applied(item)


class EmbeddingSink:
    """The `product-categories` agent's work: keep every product's embedding for content similarity."""

    def __init__(self, embeddings: MutableMapping[str, Any], content: ContentIndex) -> None:
        self.embeddings = embeddings
        self.content = content

    def put(self, product_id: str, embedding: Sequence[float]) -> None:
        self.content.upsert(product_id, embedding)  # InvalidEmbedding before anything is stored
        vector = self.content.vector(product_id)
        assert vector is not None
        self.embeddings[product_id] = [round(float(x), 7) for x in vector]

    def sync(self) -> int:
        """Index the embeddings that other workers wrote (a global table fills from its changelog).

        Run on a timer. It adds products the index lacks; a re-uploaded product whose new embedding
        came from another worker is picked up when the index is rebuilt (on restart).
        """
        added = 0
        for product_id, embedding in self.embeddings.items():
            if product_id not in self.content:
                self.content.upsert(product_id, embedding)
                added += 1
        return added
