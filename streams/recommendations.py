"""The recommender inside the worker: its Faust tables, internal topic and read-only pages.

The logic is `streams.recommend` (no Faust there); this module gives it its state as Faust tables
(docs/recommendations.md, "State and partitioning"):

    recommend-users       Table              user_id -> UserState         co-partitioned with clickstream
    recommend-neighbours  ReplicatedTable    item -> neighbour row        written by the item-update agent
    recommend-item-stats  ReplicatedTable    item -> stats row                            "
    recommend-popular     ReplicatedTable    "p<partition>" -> board                      "
    recommend-embeddings  ReplicatedTable    product_id -> unit vector    written by the embeddings agent

Every table has a compacted changelog (created with the other topics, `streams.topics`). The users
table is written while a click is processed, to the changelog partition of the click's partition. The
item rows go to the changelog partition their key routes to, the partition of the internal topic
`<app id>-recommend-item-updates` that carries the key's updates: each row has one writer, the owner of
that partition. Replicated tables are Faust global tables (every worker restores all their partitions
at start, then follows the partitions other workers write) with two fixes described in
`ReplicatedTable`.

At-least-once for the state: a table write is a changelog record sent in the background, and Faust's
pre-commit flush gives up after 0.1 s without a sent record, so a commit can overtake a buffered
write. Writes are therefore tracked per event (`track_writes`) and awaited (`delivered`) before the
event counts as finished: a click before its recommendation is published, a batch of item updates
before the agent takes the next one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import faust
import orjson

from streams.errors import PublishFailed
from streams.events import ClickEvent, ModelRef, ScoredItem
from streams.recommend.config import RecommenderConfig
from streams.recommend.content import ContentIndex
from streams.recommend.engine import ItemUpdate, partition_of
from streams.recommend.errors import CorruptState, InvalidEmbedding
from streams.recommend.service import (
    BlendedRecommender,
    EmbeddingSink,
    ItemUpdateApplier,
    decode_item_updates,
    decode_updates,
    encode_updates,
    route_updates,
)
from streams.recommend.versioned import Versioned, is_newer
from streams.records import SourceRecord
from streams.settings import Settings
from streams.topics import (
    ITEM_UPDATES,
    TABLE_EMBEDDINGS,
    TABLE_ITEM_STATS,
    TABLE_NEIGHBOURS,
    TABLE_POPULAR,
    TABLE_USERS,
    internal_topic,
)

if TYPE_CHECKING:
    from streams.pipeline import Publisher

log = logging.getLogger(__name__)

# The item agent applies the internal topic's messages in batches of at most this many, waiting at most
# this long for a batch to fill: each touched row is written once per batch (ItemUpdateApplier).
ITEM_BATCH_MAX = 500
ITEM_BATCH_WITHIN_S = 0.1


class Recommender(Protocol):
    model: ModelRef

    async def recommend(self, click: ClickEvent, k: int) -> list[ScoredItem]:
        """Record the click and return up to `k` items for its user, best first."""
        ...


# --- table writes delivered before an event is finished ---------------------------------------------
_pending_writes: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "pending_table_writes", default=None
)


def track_writes() -> list[Any]:
    """From now on in this task (and the tasks it starts), collect the changelog writes of the tables."""
    pending: list[Any] = []
    _pending_writes.set(pending)
    return pending


async def delivered() -> None:
    """Wait until the changelog writes collected in this task are acknowledged by the broker.

    A failed write raises `PublishFailed` (retriable: the event is processed again, which the
    recommender's state makes harmless, docs/recommendations.md "Delivery").
    """
    pending = _pending_writes.get()
    if not pending:
        return
    writes = list(pending)
    pending.clear()
    results = await asyncio.gather(*writes, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise PublishFailed(f"{len(failed)} table changelog write(s) failed: {failed[0]!r}")


class TrackedWrites:
    """Mixed into a Faust table: its changelog writes join the current task's pending writes, and its
    reads are plain dict lookups on the in-memory store.

    (Faust's `get` goes through a sensor and raises and catches a KeyError for every missing key; the
    ranker reads hundreds of item rows per click, and that path took 16% of the worker's time.)
    """

    data: Any

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)  # type: ignore[misc]
        pending = _pending_writes.get()
        if pending is not None:
            pending.append(fut)
        return fut

    def get(self, key: Any, default: Any = None) -> Any:
        store = getattr(self.data, "data", None)
        if type(store) is dict:  # faust.stores.memory: keys and values as the table holds them
            return store.get(key, default)
        return super().get(key, default)  # type: ignore[misc]


class UserTable(TrackedWrites, faust.Table[Any, Any]):
    """The users table: a plain Faust table, co-partitioned with the clickstream."""


class ReplicatedTable(TrackedWrites, faust.GlobalTable):
    """A Faust GlobalTable (every worker holds every key) that sees other workers' writes promptly and
    never goes back to an older value.

    faust-streaming 0.15.3 treats every partition of a global table as active and buffers active
    changelog records until `recovery_buffer_size` (default 1000) have arrived: other workers' writes
    stayed invisible (the two-worker test saw each worker hold only its own rows). The table is built
    with a buffer of 1; Faust then also keeps reading the partitions the worker writes itself, so its
    own writes come back late. Values are stored versioned (streams.recommend.versioned) and a record
    is applied only if it is newer than the copy: without that, a one-worker replay of 10,700 clicks
    lost updates on 392 of 2,880 items.

    `route`, when set, picks the changelog partition from the key instead of from the event being
    processed (item rows are written in batches that span several partitions).
    """

    route: Callable[[Any], int] | None = None

    def partition_for_key(self, key: Any) -> int | None:
        if self.route is None:
            return super().partition_for_key(key)
        return self.route(key)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        kept = []
        for event in batch:
            try:
                newer = is_newer(event.value, self.data.get(event.key))
            except CorruptState as exc:
                log.error("%s: changelog record of %r ignored: %s", self.name, event.key, exc)
                continue
            if newer:
                kept.append(event)
        if kept:
            super().apply_changelog_batch(kept)


def user_table(app: faust.App, name: str, partitions: int) -> UserTable:
    table = UserTable(app, name=name, beacon=app.tables.beacon, partitions=partitions)
    app.tables.add(table)
    return table


def replicated_table(
    app: faust.App, name: str, partitions: int, route: Callable[[Any], int] | None = None
) -> ReplicatedTable:
    # As app.GlobalTable builds one (standby changes applied as they come), with a recovery buffer of 1.
    table = ReplicatedTable(
        app,
        name=name,
        beacon=app.tables.beacon,
        partitions=partitions,
        standby_buffer_size=1,
        recovery_buffer_size=1,
        is_global=True,
    )
    table.route = route
    app.tables.add(table)
    return table


# --- the parts the agents call ------------------------------------------------------------------------
@dataclass
class RecommenderParts:
    """What the agents of the app call, and the tables behind them."""

    recommender: BlendedRecommender
    applier: ItemUpdateApplier
    sink: EmbeddingSink
    tables: dict[str, Any]  # table name -> Faust table (stored form)
    views: dict[str, Any]  # table name -> the values the logic sees
    item_updates_topic: str

    async def apply_item_updates(self, records: Sequence[SourceRecord]) -> int:
        """A batch of the internal topic's records, in order; returns the table rows written once
        their changelog records are delivered.

        A record that does not decode is logged (only the workers write this topic: it is a bug) and
        left out; the others are applied.
        """
        track_writes()
        batch = []
        for record in records:
            try:
                batch.append((decode_item_updates(decode_updates(record.value)), record.partition))
            except CorruptState as exc:
                log.error("%s item updates not applied: %s", record.coords, exc)
        written = self.applier.apply_batch(batch)
        try:
            await delivered()
        except PublishFailed as exc:
            # The rows are in this worker's copy; the next write of each row carries them again.
            log.error("item rows not all in the changelog: %s", exc)
        return written

    async def put_embedding(self, record: SourceRecord) -> None:
        """One `product-categories` record: its product's embedding, for content similarity.

        A record without a usable embedding is logged with its coordinates and skipped: it is an
        output of this service (or of whoever else writes the topic), there is no input to dead-letter.
        """
        track_writes()
        try:
            product_id, embedding = embedding_of(record.value)
            self.sink.put(product_id, embedding)
        except InvalidEmbedding as exc:
            log.warning("%s no embedding for content similarity: %s", record.coords, exc)
            return
        try:
            await delivered()
        except PublishFailed as exc:
            log.error("%s embedding not in the changelog: %s", record.coords, exc)

    def sizes(self) -> dict[str, dict[str, int]]:
        """This worker's copy of each table: entries and serialised bytes (orjson, keys + values as
        stored, versions included)."""
        out: dict[str, dict[str, int]] = {}
        for name, table in self.tables.items():
            data = dict(table.items())
            size = sum(len(str(k).encode()) + len(orjson.dumps(v)) for k, v in data.items())
            out[name] = {"entries": len(data), "bytes": size}
        return out


def embedding_of(value: bytes) -> tuple[str, list[float]]:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEmbedding(f"product-categories record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEmbedding("product-categories record is not a JSON object")
    product_id, embedding = obj.get("product_id"), obj.get("embedding")
    if not isinstance(product_id, str) or not product_id or not isinstance(embedding, list):
        raise InvalidEmbedding("product-categories record lacks product_id or embedding")
    return product_id, embedding


def build_recommender(
    app: faust.App, settings: Settings, publisher: Publisher, config: RecommenderConfig | None = None
) -> RecommenderParts:
    """The tables, the internal topic's sender, and the three entry points over them."""
    config = config or RecommenderConfig(k=settings.recommendations_k)
    partitions = settings.partitions

    def item_partition(key: Any) -> int:
        return partition_of(str(key), partitions)

    def board_partition(key: Any) -> int:
        return int(str(key)[1:])  # "p<partition>": the board of that partition's items

    users = user_table(app, TABLE_USERS, partitions)
    # Replicated: written on one worker (the owner of the row's partition), read on all.
    neighbours = replicated_table(app, TABLE_NEIGHBOURS, partitions, item_partition)
    item_stats = replicated_table(app, TABLE_ITEM_STATS, partitions, item_partition)
    boards = replicated_table(app, TABLE_POPULAR, partitions, board_partition)
    # Written while reading product-categories: to the event's partition, as Faust does.
    embeddings = replicated_table(app, TABLE_EMBEDDINGS, partitions)
    tables = {
        TABLE_USERS: users,
        TABLE_NEIGHBOURS: neighbours,
        TABLE_ITEM_STATS: item_stats,
        TABLE_POPULAR: boards,
        TABLE_EMBEDDINGS: embeddings,
    }
    views: dict[str, Any] = {
        name: table if name == TABLE_USERS else Versioned(table) for name, table in tables.items()
    }
    content = ContentIndex()
    topic = internal_topic(settings, ITEM_UPDATES)

    async def send_updates(updates: Sequence[ItemUpdate]) -> None:
        # Everything the click changed is delivered before its recommendation is published: the user
        # state's changelog record and the item updates, one message per partition, all at once.
        routed = route_updates(updates, partitions)
        sends = [
            publisher.publish(topic, f"p{p}".encode(), encode_updates(values), partition=p)
            for p, values in routed.items()
        ]
        await asyncio.gather(delivered(), *sends)

    recommender = BlendedRecommender(
        config,
        views[TABLE_USERS],
        views[TABLE_NEIGHBOURS],
        views[TABLE_ITEM_STATS],
        views[TABLE_POPULAR],
        content,
        send_updates,
    )
    applier = ItemUpdateApplier(
        config, views[TABLE_NEIGHBOURS], views[TABLE_ITEM_STATS], views[TABLE_POPULAR]
    )
    sink = EmbeddingSink(views[TABLE_EMBEDDINGS], content)
    return RecommenderParts(recommender, applier, sink, tables, views, topic)


def install_pages(app: faust.App, parts: RecommenderParts) -> None:
    """Read-only views of this worker's copy of the state (operators, and the restart tests)."""
    views = parts.views

    @app.page("/recommend/users/{user_id}")
    async def user_page(web: Any, request: Any, user_id: str) -> Any:
        state = views[TABLE_USERS].get(user_id)
        return web.json({"user_id": user_id, "state": state}, status=200 if state is not None else 404)

    @app.page("/recommend/items/{item_id}")
    async def item_page(web: Any, request: Any, item_id: str) -> Any:
        body = {
            "item_id": item_id,
            "neighbours": views[TABLE_NEIGHBOURS].get(item_id),
            "stats": views[TABLE_ITEM_STATS].get(item_id),
            "embedding": item_id in parts.sink.content,
        }
        found = body["neighbours"] is not None or body["stats"] is not None or body["embedding"]
        return web.json(body, status=200 if found else 404)

    @app.page("/recommend/tables")
    async def tables_page(web: Any, request: Any) -> Any:
        return web.json(parts.sizes())
