"""The recommender's one wiring: its tables, the internal topic's sender and the three entry points.

The same function builds the recommender the worker runs (tables from `streams.faust_ext.FaustTables`,
item updates sent through the internal topic) and the in-process one the tests and tools use (tables as
dicts, item updates applied at once: `in_process_recommender`). No Faust import here.

    users        partitioned  user_id -> UserState.to_json()                 co-partitioned with clickstream
    neighbours   replicated   item -> neighbour row            written by ItemUpdateApplier only
    item_stats   replicated   item -> stats row                                      "
    boards       replicated   "p<partition>" -> the partition's most popular items   "
    embeddings   replicated   product_id -> unit vector        written by EmbeddingSink only

Replicated values are stored versioned (`streams.recommend.versioned`); the logic sees plain values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streams.errors import PublishFailed
from streams.recommend.config import RecommenderConfig
from streams.recommend.content import ContentIndex, listing_category
from streams.recommend.dedup import Origin
from streams.recommend.engine import partition_of
from streams.recommend.errors import CorruptState, InvalidEmbedding
from streams.recommend.service import (
    BlendedRecommender,
    EmbeddingSink,
    ItemUpdateApplier,
    decode_message,
    encode_message,
    route_updates,
)
from streams.recommend.versioned import Versioned
from streams.records import SourceRecord
from streams.topology import (
    TABLE_CATEGORIES,
    TABLE_EMBEDDINGS,
    TABLE_ITEM_STATS,
    TABLE_NEIGHBOURS,
    TABLE_POPULAR,
    TABLE_USERS,
)

log = logging.getLogger(__name__)

# The item agent applies the internal topic's messages in batches of at most this many, waiting at most
# this long for a batch to fill: each touched row is written once per batch (ItemUpdateApplier).
ITEM_BATCH_MAX = 500
ITEM_BATCH_WITHIN_S = 0.1

# Sends one message of item updates to a partition of the internal topic, returns once delivered.
SendToPartition = Callable[[int, bytes], Awaitable[None]]


class TableFactory(Protocol):
    """Where the tables live, and how their writes are made durable before an event is finished."""

    def partitioned(self, name: str) -> MutableMapping[str, Any]: ...

    def replicated(
        self, name: str, route: Callable[[Any], int] | None = None
    ) -> MutableMapping[str, Any]: ...

    def track(self) -> None:
        """Collect the table writes made from now on in this task."""

    async def delivered(self) -> None:
        """Wait until the collected writes are durable; `PublishFailed` if one is not."""


class DictTables:
    """Tables as plain dicts in this process: writes are durable at once."""

    def partitioned(self, name: str) -> dict[str, Any]:
        return {}

    def replicated(self, name: str, route: Callable[[Any], int] | None = None) -> dict[str, Any]:
        return {}

    def track(self) -> None:
        return None

    async def delivered(self) -> None:
        return None


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
    writes: TableFactory

    async def apply_item_updates(self, records: Sequence[SourceRecord]) -> int:
        """A batch of the internal topic's records, in order; returns the table rows written once
        their changelog records are delivered.

        A record that does not decode is logged (only the workers write this topic: it is a bug) and
        left out; the others are applied.
        """
        self.writes.track()
        batch = []
        for record in records:
            try:
                message = dataclasses.replace(decode_message(record.value), offset=record.offset)
                batch.append((message, record.partition))
            except CorruptState as exc:
                log.error("%s item updates not applied: %s", record.coords, exc)
        written = self.applier.apply_batch(batch)
        try:
            await self.writes.delivered()
        except PublishFailed as exc:
            # The rows are in this worker's copy; the next write of each row carries them again.
            log.error("item rows not all in the changelog: %s", exc)
        return written

    async def put_embedding(self, record: SourceRecord) -> None:
        """One `product-categories` record: its product's embedding, for content similarity.

        A record without a usable embedding is logged with its coordinates and skipped: it is an
        output of this service (or of whoever else writes the topic), there is no input to dead-letter.
        """
        self.writes.track()
        try:
            product_id, embedding = embedding_of(record.value)
            self.sink.put(product_id, embedding)
            category = listing_category(record.value)
            if category is not None:  # beside the vector, for searches within a category
                self.views[TABLE_CATEGORIES][product_id] = category
                self.sink.content.set_category(product_id, category)
        except InvalidEmbedding as exc:
            log.warning("%s no embedding for content similarity: %s", record.coords, exc)
            return
        try:
            await self.writes.delivered()
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
    config: RecommenderConfig,
    partitions: int,
    tables: TableFactory,
    send: SendToPartition,
    item_updates_topic: str = "",
    committed: Callable[[int], int] = lambda partition: 0,
) -> RecommenderParts:
    """The tables, and the three entry points over them; a click's item updates leave through `send`.

    `committed(partition)`: the committed offset of a clickstream partition as far as this worker knows
    (0 when unknown): the floor below which clicks never come back (streams.recommend.dedup).
    """

    def item_partition(key: Any) -> int:
        return partition_of(str(key), partitions)

    def board_partition(key: Any) -> int:
        return int(str(key)[1:])  # "p<partition>": the board of that partition's items

    stored: dict[str, MutableMapping[str, Any]] = {
        TABLE_USERS: tables.partitioned(TABLE_USERS),
        # Replicated: written on one worker (the owner of the row's partition), read on all.
        TABLE_NEIGHBOURS: tables.replicated(TABLE_NEIGHBOURS, item_partition),
        TABLE_ITEM_STATS: tables.replicated(TABLE_ITEM_STATS, item_partition),
        TABLE_POPULAR: tables.replicated(TABLE_POPULAR, board_partition),
        # Written while reading product-categories: to the event's partition.
        TABLE_EMBEDDINGS: tables.replicated(TABLE_EMBEDDINGS),
        TABLE_CATEGORIES: tables.replicated(TABLE_CATEGORIES),
    }
    views: dict[str, Any] = {
        name: table if name == TABLE_USERS else Versioned(table) for name, table in stored.items()
    }

    async def send_updates(updates: Sequence[Mapping[str, Any]], origin: Origin | None) -> None:
        # Everything the click changed is durable before its recommendation is published: the user
        # state's table write and the item updates, one message per partition, all at once.
        floor = committed(origin.partition) if origin is not None else 0
        routed = route_updates(updates, partitions)
        sends = [send(p, encode_message(values, origin, floor)) for p, values in routed.items()]
        await asyncio.gather(tables.delivered(), *sends)

    content = ContentIndex()
    content.category_source = views[TABLE_CATEGORIES]  # categories other workers wrote
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
    return RecommenderParts(recommender, applier, sink, stored, views, item_updates_topic, tables)


def in_process_recommender(config: RecommenderConfig, partitions: int) -> RecommenderParts:
    """The recommender over dicts in one process, each click's item updates applied as soon as they are
    sent (what the worker does through the internal topic). For tests and tools without Kafka."""
    parts: RecommenderParts | None = None

    async def apply_now(partition: int, value: bytes) -> None:
        assert parts is not None
        parts.applier.apply_message(decode_message(value), partition)

    parts = build_recommender(config, partitions, DictTables(), apply_now)
    return parts
