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
(in `streams.faust_ext`, which holds every extension of Faust's internals)
(a) commits one past the first consecutive run of finished offsets but never at or past the lowest
in-flight offset of that partition, and (b) ignores the acks of skipped or stale messages (they are read
again after the rebalance). The producer flush Faust does before committing stays as it is; the agents
also await each delivery before finishing an event, so there is nothing unsent at commit time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

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
