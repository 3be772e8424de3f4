"""The commit rule: never commit past an unfinished event, whatever the order events finish in."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from streams.faust_ext import SafeCommitConsumer
from streams.offsets import InFlight, safe_commit_offset

TP0 = TP("reviews", 0)


@pytest.mark.parametrize(
    ("acked", "gaps", "floor", "expected"),
    [
        ([], [], None, None),
        ([0, 1, 2], [], None, 3),
        ([2, 0, 1], [], None, 3),  # finished out of order
        ([11], [], 10, None),  # 10 still in flight: Faust's own rule would commit 12 here
        ([1, 2], [], 0, None),  # first commit of a new group, offset 0 in flight
        ([10, 11, 13, 14], [], 12, 12),  # resume at the unfinished offset
        ([10, 11, 13, 14], [], None, 12),  # 12 not finished (not acked): stop before it
        ([10, 11, 14], [(12, 14)], None, 15),  # 12 and 13 never reached the app (compacted)
        ([10, 11, 14], [(12, 15)], 14, 14),  # a gap record covering an offset in flight does not count
        ([5, 6, 7], [], 100, 8),
    ],
)
def test_safe_commit_offset(
    acked: list[int], gaps: list[tuple[int, int]], floor: int | None, expected: int | None
) -> None:
    assert safe_commit_offset(acked, gaps, floor) == expected


def test_in_flight_floor_and_forget() -> None:
    flight = InFlight()
    assert flight.floor(TP0) is None
    flight.start(TP0, 7)
    flight.start(TP0, 5)
    flight.start(TP("reviews", 1), 1)
    assert flight.floor(TP0) == 5 and len(flight) == 3
    flight.finish(TP0, 5)
    assert flight.floor(TP0) == 7
    flight.forget([TP0])
    assert flight.floor(TP0) is None and len(flight) == 1
    flight.finish(TP0, 7)  # finishing after a revoke is harmless


def fake_consumer(acked: list[int], in_flight: InFlight, gaps: tuple[tuple[int, int], ...] = ()) -> Any:
    tree: IntervalTree = IntervalTree()
    for begin, end in gaps:
        tree.addi(begin, end)
    return SimpleNamespace(
        _acked=defaultdict(list, {TP0: list(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _gap=defaultdict(IntervalTree, {TP0: tree}),
        _in_flight=lambda: in_flight,
    )


def test_consumer_new_offset_holds_at_the_lowest_event_in_flight() -> None:
    flight = InFlight()
    flight.start(TP0, 10)
    consumer = fake_consumer([11, 12, 13], flight)
    assert SafeCommitConsumer._new_offset(consumer, TP0) is None
    assert consumer._acked[TP0] == [11, 12, 13]  # nothing dropped: they are committed later

    flight.finish(TP0, 10)
    consumer._acked[TP0].append(10)
    consumer._acked_index[TP0].add(10)
    assert SafeCommitConsumer._new_offset(consumer, TP0) == 14
    assert consumer._acked[TP0] == [] and consumer._acked_index[TP0] == set()


def test_consumer_new_offset_keeps_what_lies_beyond_the_commit() -> None:
    flight = InFlight()
    flight.start(TP0, 3)
    consumer = fake_consumer([0, 1, 2, 4, 5], flight, gaps=((0, 1),))
    assert SafeCommitConsumer._new_offset(consumer, TP0) == 3
    assert consumer._acked[TP0] == [4, 5]
    assert consumer._acked_index[TP0] == {4, 5}
    assert not consumer._gap[TP0].overlaps(0, 3)


class _Flow:
    def __init__(self, active: bool) -> None:
        self.active = active

    def is_active(self) -> bool:
        return self.active


class _Message:
    def __init__(self, generation_id: int) -> None:
        self.generation_id = generation_id
        self.acked = False


def test_acks_of_skipped_or_stale_messages_do_not_count_as_done() -> None:
    app = SimpleNamespace(consumer_generation_id=2, flow_control=_Flow(True))
    stale = _Message(generation_id=1)  # read before the last rebalance
    consumer = SimpleNamespace(app=app, _unacked_messages={stale})
    assert SafeCommitConsumer.ack(consumer, stale) is False
    assert stale.acked is True and stale not in consumer._unacked_messages

    app.flow_control = _Flow(False)  # a rebalance is under way: Faust skips what it reads
    skipped = _Message(generation_id=2)
    consumer._unacked_messages.add(skipped)
    assert SafeCommitConsumer.ack(consumer, skipped) is False
    assert skipped.acked is True and not consumer._unacked_messages
