"""Each click changes the recommender's state once, however often it is processed.

After a crash or a rebalance the clicks since the last commit are processed again, and a message of the
internal item topic can be delivered twice (a click processed again re-sends it, a producer retries).
Kafka gives no transaction across the tables' changelogs on every broker, so each table record carries,
in the same changelog record as the state it describes, what it has already absorbed:

- a user's record keeps the offset of the last click applied to it (`at`; all of one user's clicks come
  from one clickstream partition, in order) and that click's item updates (`out`). A click at or below
  `at` is not applied again; the click at `at` itself re-sends `out`, since a crash may have come between
  the user's write and the delivery of its item updates (one user's clicks run one after another, so
  only the last one can be unfinished);
- every replicated row (neighbours, item stats, popularity boards) keeps the clicks it has absorbed,
  as `{clickstream partition: [offsets]}`. A message of a click the row has seen leaves it unchanged.
  Offsets below the clickstream's committed offset can never come back from the clickstream
  (processing restarts from there), so messages carry the sender's committed offset (`floor`) and rows
  forget what lies below;
- the item agent itself reads its internal topic partition again after a crash or a rebalance, which
  brings back messages of clicks the rows may have forgotten. A row is only ever written from one
  partition of that topic, read in order, so it also keeps the last offset of that partition it has
  absorbed (under the key `INTERNAL`) and skips messages at or below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.recommend.errors import CorruptState

Applied = dict[str, list[int]]  # clickstream partition (as a string: JSON keys) -> offsets absorbed
INTERNAL = "in"  # in `Applied`: [the last offset of the row's internal topic partition absorbed]


@dataclass(frozen=True, slots=True)
class Origin:
    """The clickstream record a change comes from."""

    partition: int
    offset: int

    def to_json(self) -> list[int]:
        return [self.partition, self.offset]

    @classmethod
    def from_json(cls, value: Any) -> Origin:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)
        ):
            raise CorruptState(f"an origin must be [partition, offset], got {value!r}")
        return cls(value[0], value[1])


def decode_applied(value: Any) -> Applied:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(offsets, list) and all(isinstance(o, int) for o in offsets) for offsets in value.values()
    ):
        raise CorruptState("applied clicks must be {partition: [offsets]}")
    return {str(p): list(offsets) for p, offsets in value.items()}


def seen(applied: Applied, origin: Origin | None, offset: int | None = None) -> bool:
    """Whether the row has absorbed the message of this click, or this offset of its internal topic."""
    if offset is not None and offset <= applied.get(INTERNAL, [-1])[0]:
        return True
    return origin is not None and origin.offset in applied.get(str(origin.partition), ())


def mark(applied: Applied, origin: Origin | None, offset: int | None = None) -> None:
    if origin is not None:
        offsets = applied.setdefault(str(origin.partition), [])
        if origin.offset not in offsets:
            offsets.append(origin.offset)
    if offset is not None and offset > applied.get(INTERNAL, [-1])[0]:
        applied[INTERNAL] = [offset]


def prune(applied: Applied, floors: Mapping[int, int]) -> Applied:
    """What is still worth remembering: offsets at or above each partition's known committed offset."""
    out: Applied = {INTERNAL: applied[INTERNAL]} if INTERNAL in applied else {}
    for p, offsets in applied.items():
        if p == INTERNAL:
            continue
        floor = floors.get(int(p), 0)
        kept = sorted(o for o in offsets if o >= floor)
        if kept:
            out[p] = kept
    return out
