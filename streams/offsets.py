"""At-least-once with any agent concurrency: never commit past an event that is not finished.

How faust-streaming commits (faust/transport/consumer.py, 0.15): a stream acks an event when the agent
asks for the next one (or when the stream's generator is closed); the consumer keeps the acked offsets
of each partition and, every `commit_interval`, commits one past the first run of consecutive acked
offsets (`Consumer._new_offset`), after flushing the producer. Three holes in that, for this service:

1. With agent concurrency N, events finish out of order. `_new_offset` only refuses to commit when the
   lowest acked offset is more than one above the committed offset, and not at all before the first
   commit of a group: with offset 10 in progress and 11 acked it commits 12, so a crash loses 10.
2. During a rebalance Faust acks messages it skips without processing (flow control suspended, or a
   message from an older generation); their offsets then count as done.
3. An agent task cancelled mid-event (shutdown) still acks its event when its stream closes.

So the worker tracks, beside Faust, the offsets its agents have taken and not yet finished (`InFlight`:
an event leaves it only when its output or dead letter has been delivered), and `SafeCommitConsumer`
(a) commits one past the first consecutive run of finished offsets but never at or past the lowest
in-flight offset of that partition, and (b) ignores the acks of skipped or stale messages (they are read
again after the rebalance). The producer flush Faust does before committing stays as it is; the agents
also await each delivery before finishing an event, so there is nothing unsent at commit time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.records import SourceRecord


class InFlight:
    """Offsets taken by an agent and not yet finished, per topic-partition."""

    def __init__(self) -> None:
        self._offsets: defaultdict[TP, set[int]] = defaultdict(set)

    def start(self, tp: TP, offset: int) -> None:
        self._offsets[tp].add(offset)

    def finish(self, tp: TP, offset: int) -> None:
        offsets = self._offsets.get(tp)
        if offsets is not None:
            offsets.discard(offset)

    def floor(self, tp: TP) -> int | None:
        """The lowest unfinished offset of `tp`, or None when nothing is in flight there."""
        offsets = self._offsets.get(tp)
        return min(offsets) if offsets else None

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions taken away in a rebalance: their events are read again from the committed offset."""
        for tp in tps:
            self._offsets.pop(tp, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._offsets.values())

    @staticmethod
    def tp_of(record: SourceRecord) -> TP:
        return TP(record.topic, record.partition)


def safe_commit_offset(
    acked: Sequence[int], gaps: Iterable[tuple[int, int]], floor: int | None
) -> int | None:
    """The offset to commit for one partition, or None.

    `acked`: offsets whose events are finished (any order). `gaps`: half-open ranges of offsets that never
    reached the application (compacted away, transaction markers). `floor`: the lowest offset still in
    flight. The result is one past the first run of consecutive finished offsets, and never above
    `floor` (committing `floor` itself means "resume at floor", which is safe).
    """
    done = set(acked)
    if not done:
        return None
    for begin, end in gaps:
        done.update(range(begin, end))
    if floor is not None:
        done = {offset for offset in done if offset < floor}
        if not done:
            return None
    start = min(done)
    offset = start
    while offset in done:
        offset += 1
    return offset


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait (Faust hard-codes 1500 ms).

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
        await super().on_partitions_revoked(revoked)


class SafeCommitTransport(faust_aiokafka.Transport):
    Consumer = SafeCommitConsumer
