"""Every extension of faust-streaming's internals, in one place, checked against the version they fit.

Faust has no public hooks for what the service needs, so these subclass its private classes:

1. `SafeCommitConsumer` / `SafeCommitTransport`: commit only offsets whose events are finished
   (the rule and why: `streams.offsets`).
2. `TunedConsumerThread`: a configurable fetch wait (Faust hard-codes 1500 ms).
3. `TrackedWrites`, `UserTable`, `ReplicatedTable`: table writes awaited before an event is finished,
   dict-speed reads, and global tables that see other workers' writes promptly and never go back to an
   older value; on either store, `memory://` or `rocksdb://` (`DeliveredFirstStore`: a local RocksDB copy
   that never runs ahead of the changelog).
4. `source_record`: a Faust event as the service's `SourceRecord`.
5. `ReconcilingRecovery` (the app's `ReconcilingTableManager`): a table found ahead of its changelog's
   reported end at a rebalance is settled (the broker under-reported, or the log lost its tail) instead
   of ending the worker, unless its rows on disk contradict the changelog.

Each relies on attributes of faust-streaming 0.15 (`_acked`, `_gap`, `send_changelog`,
`apply_changelog_batch`, ...). Importing this module with another Faust version fails, so that an
upgrade is a decision to re-read them, not a silent change of delivery guarantees.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import faust
from faust.stores import memory as faust_memory
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from yarl import URL

from streams import metrics
from streams.errors import PublishFailed
from streams.offsets import InFlight, safe_commit_offset
from streams.recommend.errors import CorruptState
from streams.recommend.versioned import is_newer
from streams.records import Header, SourceRecord
from streams.topics import client_options
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
        headers=record_headers(message.headers),
    )


def record_headers(headers: Any) -> tuple[Header, ...]:
    """A Faust message's headers (aiokafka's list of pairs, or a mapping) as `SourceRecord.headers`."""
    if not headers:
        return ()
    pairs = headers.items() if hasattr(headers, "items") else headers
    return tuple((str(name), None if value is None else bytes(value)) for name, value in pairs)


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


# The RocksDB store's memory, shared by every table partition of the process. Faust gives each partition
# its own 2 GiB block cache and up to 3 x 64 MB of memtables: that grows with tables x partitions
# (5 tables x 64 partitions = 320 databases). Here one cache holds the blocks read and, charged to it,
# the memtables of every database (`ECOM_TABLE_CACHE_MB`).
DEFAULT_TABLE_CACHE_MB = 256
MEMTABLE_MB = 8  # one database's memtable; a full one is flushed to disk


class SharedMemoryOptions(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options for the rocksdict driver, with one block cache and one memtable budget
    (a third of the cache, charged to it) shared by every database of the process."""

    _shared: ClassVar[dict[int, tuple[Any, Any]]] = {}

    def __init__(self, cache_bytes: int) -> None:
        super().__init__(
            write_buffer_size=MEMTABLE_MB * 1024 * 1024, max_write_buffer_number=2, use_rocksdict=True
        )
        self.cache_bytes = cache_bytes

    def as_options(self) -> Any:
        import rocksdict

        if self.cache_bytes not in self._shared:
            cache = rocksdict.Cache(self.cache_bytes)
            memtables = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
                self.cache_bytes // 3, False, cache
            )
            self._shared[self.cache_bytes] = (cache, memtables)
        cache, memtables = self._shared[self.cache_bytes]
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(memtables)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


@dataclass(slots=True)
class _Staged:
    """A table change sent to the changelog and not yet written to the local store."""

    fut: Any  # the changelog send (faust FutureMessage)
    key: bytes
    value: bytes | None  # None: a deletion
    live: bool = True  # False once a newer changelog record for the key was applied over it


class DeliveredFirstStore(faust_rocksdb.Store):
    """Faust's RocksDB store (rocksdict driver) whose local copy never runs ahead of the changelog.

    Faust writes a change to RocksDB at once and to the changelog in the background, and a restarted
    worker reads only the changelog past the offset its store has persisted. After a SIGKILL between the
    two writes the store keeps a value the changelog never got: the restarted worker serves it, but other
    replicas and the next owner of the partition never see it. Here a change waits in memory (`_pending`,
    where reads find it) until the broker acknowledges its changelog record, then goes to RocksDB in one
    write batch with the persisted offset. So the local copy is always a prefix of the changelog and a
    restart recovers from local data plus the changelog's tail, exactly as a cold start would.

    Two more differences from Faust's store: a change goes to the database of the partition its
    changelog record went to (Faust uses the partition of the event being processed, which differs for
    the tables written by key, `ReplicatedTable.route`), and a read of such a table goes straight to its
    key's database instead of probing every partition's.
    """

    def __init__(self, *args: Any, cache_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, driver="rocksdict", **kwargs)
        self.rocksdb_options = SharedMemoryOptions(cache_bytes)
        self._pending: dict[bytes, tuple[int, bytes | None]] = {}  # key -> (partition, latest change)
        self._queues: dict[int, deque[_Staged]] = {}  # per partition, in the order sent
        self._covered: dict[int, int] = {}  # partition -> changelog offset the local copy covers in full
        self._next: tuple[Any, int | None] | None = None

    # --- writes: staged until the changelog has them -----------------------------------------------
    def expect_write(self, fut: Any, partition: int | None) -> None:
        """The changelog send of the change the table is about to make (`TrackedWrites.send_changelog`,
        called just before the table writes to its store, with no await in between)."""
        self._next = (fut, partition)

    def _stage(self, key: bytes, value: bytes | None) -> bool:
        expected, self._next = self._next, None
        if expected is None:
            return False
        fut, partition = expected
        sent_key = fut.message.key  # serialised already when the send was queued
        if (sent_key if isinstance(sent_key, bytes) else self._encode_key(sent_key)) != key:
            return False  # not the write the send was for: keep Faust's behaviour
        if partition is None:
            partition = fut.message.partition
        if partition is None:
            return False
        self._pending[key] = (partition, value)
        self._queues.setdefault(partition, deque()).append(_Staged(fut, key, value))
        return True

    def _set(self, key: bytes, value: bytes | None) -> None:
        if not self._stage(key, value):
            super()._set(key, value)

    def _del(self, key: bytes) -> None:
        if not self._stage(key, None):
            super()._del(key)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Called by Faust when a changelog record is acknowledged (or, with exactly-once, when the
        partition commits) and after a batch of changelog records is applied: the acknowledged changes
        go to RocksDB, and with them the highest offset the local copy now covers in full."""
        import rocksdict

        partition = tp.partition
        queue = self._queues.get(partition)
        covered = before = self._covered.get(partition, -1)
        batch = rocksdict.WriteBatch(raw_mode=True)
        while queue and queue[0].fut.done():
            staged = queue.popleft()
            if staged.fut.cancelled() or staged.fut.exception() is not None:
                continue  # never in the changelog; the change stays readable until the key is written again
            if staged.live:
                if staged.value is None:
                    batch.delete(staged.key)
                else:
                    batch.put(staged.key, staged.value)
                self._key_index[staged.key] = partition
            current = self._pending.get(staged.key)
            if current is not None and current[1] is staged.value:
                del self._pending[staged.key]
            covered = max(covered, staged.fut.result().offset)
        if not queue:
            # Otherwise changes of ours still on their way lie somewhere past the last acknowledged
            # one, maybe before `offset`: the local copy covers the changelog only up to that one.
            covered = max(covered, offset)
        if covered > before:
            self._covered[partition] = covered
            batch.put(self.offset_key, str(covered).encode())
        if len(batch):
            self._db_for_partition(partition).write(batch)

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        events = list(batch)
        if self._pending:
            for event in events:
                self._supersede(event.message.key)
        super().apply_changelog_batch(events, to_key, to_value)

    def _supersede(self, key: bytes) -> None:
        """A changelog record applied over a change of ours still waiting: the record wins (for a
        replicated table only a newer version is applied at all), ours is not written after it."""
        staged = self._pending.pop(key, None)
        if staged is not None:
            for change in self._queues.get(staged[0], ()):
                if change.key == key:
                    change.live = False

    # --- reads: the waiting changes first ----------------------------------------------------------
    def lookup(self, key: Any, default: Any = None) -> Any:
        """`table.get(key, default)` without Faust's sensors and KeyError round trip."""
        raw = self._encode_key(key)
        staged = self._pending.get(raw)
        if staged is not None:
            value = staged[1]
        else:
            route = getattr(self.table, "route", None)
            db = self._db_for_partition(route(key)) if route is not None else None
            value = db.get(raw) if db is not None else super()._get(raw)
        return default if value is None else self._decode_value(value)

    def _get(self, key: bytes) -> bytes | None:
        staged = self._pending.get(key)
        return staged[1] if staged is not None else super()._get(key)

    def _contains(self, key: bytes) -> bool:
        staged = self._pending.get(key)
        return staged[1] is not None if staged is not None else super()._contains(key)

    def _visible(self, partition: int) -> bool:
        if self.table.is_global:
            return True
        topic = self.table.changelog_topic.get_topic_name()
        return TP(topic, partition) in self.app.assignor.assigned_actives()

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        pending = self._pending
        for key, value in super()._iteritems():
            if key not in pending:
                yield key, value
        for key, (partition, change) in list(pending.items()):
            if change is not None and self._visible(partition):
                yield key, change

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())


class TrackedWrites:
    """Mixed into a Faust table: its changelog writes join the current task's pending writes, its reads
    skip Faust's per-read overhead, and on `rocksdb://` it keeps its data in a `DeliveredFirstStore`.

    (Faust's `get` goes through a sensor and raises and catches a KeyError for every missing key; the
    ranker reads hundreds of item rows per click, and that path took 16% of the worker's time.)
    """

    data: Any
    app: Any

    def _new_store_by_url(self, url: str | URL) -> Any:
        if URL(str(url)).scheme != "rocksdb":
            return super()._new_store_by_url(url)  # type: ignore[misc]
        table: Any = self
        return DeliveredFirstStore(
            url,
            self.app,
            table,
            table_name=table.name,
            key_type=table.key_type,
            key_serializer=table.key_serializer,
            value_serializer=table.value_serializer,
            value_type=table.value_type,
            loop=table.loop,
            options=table.options,
            cache_bytes=int(getattr(self.app, "table_cache_mb", None) or DEFAULT_TABLE_CACHE_MB)
            * 1024
            * 1024,
        )

    def send_changelog(self, partition: int | None, key: Any, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(partition, key, *args, **kwargs)  # type: ignore[misc]
        pending = _pending_writes.get()
        if pending is not None:
            pending.append(fut)
        store = self.data
        if isinstance(store, DeliveredFirstStore):
            store.expect_write(fut, partition)
        return fut

    def get(self, key: Any, default: Any = None) -> Any:
        store = self.data
        inner = getattr(store, "data", None)
        if type(inner) is dict:  # faust.stores.memory: keys and values as the table holds them
            return inner.get(key, default)
        if isinstance(store, DeliveredFirstStore):
            return store.lookup(key, default)
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
        events = list(batch)
        kept = []
        newest: dict[Any, Any] = {}  # within the batch: a key's record kept so far
        for event in events:
            key = event.key
            try:
                newer = is_newer(event.value, newest[key] if key in newest else self.get(key))
            except CorruptState as exc:
                log.error("%s: changelog record of %r ignored: %s", self.name, key, exc)
                continue
            if newer:
                kept.append(event)
                newest[key] = event.value
        if kept:
            super().apply_changelog_batch(kept)
        store = self.data
        if isinstance(store, DeliveredFirstStore):
            # The records left out are older than the local copy, which covers them too.
            last: dict[TP, int] = {}
            for event in events:
                tp = event.message.tp
                last[tp] = max(last.get(tp, -1), event.message.offset)
            for tp, offset in last.items():
                store.set_persisted_offset(tp, offset)


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


# --- table recovery ----------------------------------------------------------------------------------
# When a worker's assignment changes, Faust's recovery compares each changelog partition's offset as the
# table holds it with the changelog's highwater (the broker's end offset - 1) and raises ConsistencyError
# when the table is ahead, which ends the worker. What that protects depends on the store:
#
# - `memory://`: the offset is this process's memory of the last changelog record it applied. The
#   table holds exactly what it read from that changelog, so it can only be "ahead" when the broker
#   reports less than it has served (the embedded Tansu broker answers ListOffsets with the first offset
#   of a partition's last batch + 1; the replicated tables read their changelogs all the time, so every
#   rebalance found one ahead) or when the log lost its tail (Apache Kafka after an unclean leader
#   election, or a changelog deleted and created again while the worker ran). Nothing in the table
#   contradicts the changelog: there is nothing to protect, and a crash only restarts the same reading.
# - `rocksdb://`: the offset is on disk. A table ahead of a changelog that lost records holds rows no
#   other replica and no later owner will see: the inconsistency Faust's check is for. But the same
#   under-reported end makes a restarted worker look ahead too, with nothing wrong.
#
# So before Faust's check, each partition found ahead is read at the broker's reported end to learn the
# offset the changelog really ends at (a fetch response states it, and returns the whole last batch):
# - the changelog holds the table's offset (`under_reported`): the highwater becomes the true one and
#   recovery goes on; nothing is read again;
# - it does not, or it could not be read, on `memory://` (`reread`): the table reads again from the
#   changelog's end; a changelog record carries a key's whole value (and a replicated table applies only
#   newer versions), so reading a record again changes nothing;
# - it does not, on `rocksdb://` (`inconsistent`): Faust's ConsistencyError stands; the worker stops
#   with the partition named, and its data directory for that table is to be removed (docs/service.md,
#   "Failure modes").
# Each case logs a line naming the partitions and counts `ecom_table_recovery_ahead_total`.

CHANGELOG_READ_TIMEOUT_S = 10.0


def recovery_decision(
    offset: int, highwater: int, log_last: int | None, on_disk: bool
) -> tuple[str, int, int]:
    """For a table whose changelog offset `offset` lies past `highwater` (the last offset the broker
    reports), given `log_last` (the last offset read from the changelog itself; None if it could not
    be read): the outcome and the (offset, highwater) recovery goes on with."""
    if log_last is not None and offset <= log_last:
        return "under_reported", offset, log_last
    end = max(highwater, log_last) if log_last is not None else highwater
    if not on_disk:
        return "reread", end, end
    return "inconsistent", offset, end


def stored_on_disk(table: Any) -> bool:
    """Whether the table's changelog offsets outlive the process (any store but `memory://`)."""
    return not isinstance(getattr(table, "data", None), faust_memory.Store)


async def changelog_last_offsets(
    options: dict[str, Any], reported: dict[TP, int], within_s: float = CHANGELOG_READ_TIMEOUT_S
) -> dict[TP, int]:
    """The last offset each partition really holds, read with a group-less consumer from the last
    offset the broker `reported` (-1: none): the last record returned, or the end a fetch response
    states. Partitions not read within `within_s` are left out."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    found: dict[TP, int] = {}
    await asyncio.wait_for(consumer.start(), within_s)
    try:
        parts = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
        consumer.assign(list(parts))
        for part, tp in parts.items():
            consumer.seek(part, max(0, reported[tp]))
        while len(found) < len(parts) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for part, tp in parts.items():
                end = consumer.highwater(part)
                records = batches.get(part) or []
                if end is None and not records:
                    continue
                last = max(records[-1].offset if records else -1, end - 1 if end is not None else -1)
                found[tp] = max(found.get(tp, -1), last)
    finally:
        await consumer.stop()
    return found


class ReconcilingRecovery(faust_recovery.Recovery):
    """Faust's table recovery, with the partitions whose table is ahead of the changelog's reported end
    settled before Faust's consistency check (this section's opening comment), and the input partitions
    resumed only once they are sought to their committed offsets and the agents' queues are cleared.

    Faust's `on_recovery_completed` resumes the input partitions, then seeks them to the committed
    offsets, then resumes the flow, which clears every agent's queue. Records fetched in between reach
    the queues (the flow is already active during recovery), are cleared, and are not fetched again,
    since Faust's consumer drops what lies below the offset it has read up to; the events after them
    are processed, and the commit rule, seeing them finished, commits over the dropped ones. The fault
    suite lost a click that way when a worker took over a killed one's partitions.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust's, in a safe order: seek, clear the queues, then resume the input partitions."""
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                self.app.consumer_generation_id,
                generation_id,
            )
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        self.completed.set()
        self.app.flow_control.resume()  # clears the agents' queues: nothing of the inputs is in them yet
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        consumer.resume_flow()
        app: Any = self.app
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _build_offsets(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if destination is self.active_offsets:  # the active highwaters are built before the offsets
            await self._reconcile(set(tps), self.active_offsets, self.active_highwaters, title)

    async def _build_highwaters(self, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        if destination is self.standby_highwaters:  # the standby offsets are built before the highwaters
            await self._reconcile(set(tps), self.standby_offsets, destination, title)

    async def _reconcile(self, tps: set[TP], offsets: Any, highwaters: Any, title: str) -> None:
        ahead = {
            tp: highwaters[tp]
            for tp in tps
            if (offsets.get(tp) or 0) > 0 and highwaters.get(tp) is not None and offsets[tp] > highwaters[tp]
        }
        if not ahead:
            return
        log_last = await self._read_log_ends(ahead)
        outcomes: dict[str, list[str]] = {}
        for tp, highwater in sorted(ahead.items()):
            table = self.tp_to_table.get(tp)
            offset = offsets[tp]
            outcome, offsets[tp], highwaters[tp] = recovery_decision(
                offset, highwater, log_last.get(tp), stored_on_disk(table)
            )
            name = getattr(table, "name", tp.topic)
            metrics.TABLE_RECOVERY_AHEAD.labels(name, outcome).inc()
            outcomes.setdefault(outcome, []).append(
                f"{tp.topic}[{tp.partition}] table at {offset}, reported end {highwater}, "
                f"changelog ends at {log_last.get(tp, 'unknown')}"
            )
        for outcome, where in outcomes.items():
            level = logging.ERROR if outcome == "inconsistent" else logging.WARNING
            log.log(
                level,
                "%s recovery, table ahead of its changelog's reported end (%s): %s",
                title,
                outcome,
                "; ".join(where),
            )

    async def _read_log_ends(self, ahead: dict[TP, int]) -> dict[TP, int]:
        settings = getattr(getattr(self.app, "runtime", None), "settings", None)
        if settings is None or self.app.in_transaction:
            return {}  # transactions: Faust compares with the last stable offset, which it reads itself
        try:
            return await changelog_last_offsets(client_options(settings), ahead)
        except Exception as exc:  # noqa: BLE001  (unreadable now: decided as for an unknown end)
            log.warning("changelog ends not read (%s: %s)", type(exc).__name__, exc)
            return {}


class ReconcilingTableManager(faust_manager.TableManager):
    """Faust's table manager, recovering with `ReconcilingRecovery` (the app's `TableManager`)."""

    @property
    def recovery(self) -> faust_recovery.Recovery:
        if self._recovery is None:
            self._recovery = ReconcilingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
