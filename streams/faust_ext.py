"""Every extension of faust-streaming's internals, in one place, checked against the version they fit.

Faust has no public hooks for what the service needs, so these subclass its private classes:

1. `SafeCommitConsumer` / `SafeCommitTransport`: commit only offsets whose events are finished
   (the rule and why: `streams.offsets`).
2. `TunedConsumerThread`: a configurable fetch wait (Faust hard-codes 1500 ms).
3. `TrackedWrites`, `UserTable`, `ReplicatedTable`: table writes awaited before an event is finished,
   dict-speed reads, and global tables that see other workers' writes promptly and never go back to an
   older value.
4. `source_record`: a Faust event as the service's `SourceRecord`.

Each relies on attributes of faust-streaming 0.15 (`_acked`, `_gap`, `send_changelog`,
`apply_changelog_batch`, ...). Importing this module with another Faust version fails, so that an
upgrade is a decision to re-read them, not a silent change of delivery guarantees.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.errors import PublishFailed
from streams.offsets import InFlight, safe_commit_offset
from streams.recommend.errors import CorruptState
from streams.recommend.versioned import is_newer
from streams.records import SourceRecord
from streams.undecodable import UndecodableBatchGuard, stopped_partitions

log = logging.getLogger(__name__)

SUPPORTED_FAUST = ("0.15.",)
if not faust.__version__.startswith(SUPPORTED_FAUST):
    raise ImportError(
        f"faust-streaming {faust.__version__} is installed; streams.faust_ext extends the internals of "
        f"{', '.join(v + 'x' for v in SUPPORTED_FAUST)} only: re-check its classes before changing the pin"
    )


def source_record(event: Any) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value if isinstance(message.value, bytes) else bytes(message.value or b""),
        timestamp=message.timestamp,
    )


def committed_offset(app: faust.App, topic: str, partition: int) -> int:
    """The last offset this worker committed for a partition (0 if none, or before the consumer exists)."""
    consumer = getattr(app, "_consumer", None)
    committed = getattr(consumer, "_committed_offset", None) or {}
    return int(committed.get(TP(topic, partition)) or 0)


# --- consumer ----------------------------------------------------------------------------------------
class TunedConsumerThread(UndecodableBatchGuard, faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait (Faust hard-codes 1500 ms), which stops a
    partition at a batch it cannot decode instead of crashing (`streams.undecodable`).

    A fetch request covers every assigned partition; a broker that does not answer as soon as one of
    them has data (the embedded Tansu broker) holds each fetch for the full wait, which then becomes the
    floor of the end-to-end latency. Apache Kafka answers early either way.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # read when the consumer starts its fetcher
        return consumer


class SafeCommitConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with the commit rule of this module's docstring."""

    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _in_flight(self) -> InFlight | None:
        in_flight = getattr(self.app, "in_flight", None)
        return in_flight if isinstance(in_flight, InFlight) else None

    def ack(self, message: Any) -> bool:
        app = self.app
        stale = message.generation_id != app.consumer_generation_id or not app.flow_control.is_active()
        if stale:
            # Skipped by Faust, not processed: mark it so nothing waits for it, but do not count its
            # offset as done. It is read again from the committed offset after the rebalance.
            message.acked = True
            self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: TP) -> int | None:
        acked: list[int] = self._acked[tp]
        if not acked:
            return None
        in_flight = self._in_flight()
        floor = in_flight.floor(tp) if in_flight is not None else None
        gap_tree = self._gap[tp]
        max_acked = max(acked)
        limit = max_acked + 1 if floor is None else min(max_acked + 1, floor)
        gaps = [(iv.begin, min(iv.end, limit)) for iv in gap_tree.overlap(0, limit)]
        offset = safe_commit_offset(acked, gaps, floor)
        if offset is None:
            return None
        # Drop what the commit covers; later acked offsets wait for the next commit.
        acked[:] = sorted(o for o in set(acked) if o >= offset)
        self._acked_index[tp].intersection_update(acked)
        gap_tree.chop(0, offset)
        return offset

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        in_flight = self._in_flight()
        if in_flight is not None:
            in_flight.forget(revoked)
        stopped_partitions(self.app).release(revoked)
        await super().on_partitions_revoked(revoked)


class SafeCommitTransport(faust_aiokafka.Transport):
    Consumer = SafeCommitConsumer


# --- tables ------------------------------------------------------------------------------------------

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


class FaustTables:
    """`streams.recommend.wiring.TableFactory` over a Faust app: the recommender's tables as Faust
    tables with compacted changelogs, and their writes tracked per event."""

    def __init__(self, app: faust.App, partitions: int) -> None:
        self.app = app
        self.partitions = partitions

    def partitioned(self, name: str) -> UserTable:
        return user_table(self.app, name, self.partitions)

    def replicated(self, name: str, route: Callable[[Any], int] | None = None) -> ReplicatedTable:
        return replicated_table(self.app, name, self.partitions, route)

    def track(self) -> None:
        track_writes()

    async def delivered(self) -> None:
        await delivered()
