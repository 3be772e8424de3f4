"""Item statistics learned online: popularity (optionally time-decayed) and repeat-purchase rate.

One stats row per item, written by the item-keyed agent (the same single writer as the item's
neighbour row) and read by every worker through the global table:

    [weight, decayed, ref_ts, buys, repeats]

- weight: total action weight (sessions that held the item, weighted by the strongest action); it
  normalises co-occurrence counts into conditional probabilities (same units as the pair counts);
- decayed, ref_ts: the same total decayed with `half_life_s` to time `ref_ts` (equal to weight when
  no half-life is set); popularity reads it;
- buys, repeats: purchases (one per session) and those by a shopper who had bought the item before.

Each item partition keeps a board of its most popular items; the global top list is the merge of the
partitions' boards (`merge_boards`), so no single writer has to see every item.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Any

from streams.recommend.errors import CorruptState

Stats = list[float]
# A board entry: [item, decayed, ref_ts].
BoardEntry = list[Any]


def new_stats() -> Stats:
    return [0.0, 0.0, 0.0, 0.0, 0.0]


def decay_to(value: float, ref_ts: float, now: float, half_life_s: float | None) -> float:
    """`value` known at `ref_ts`, seen at `now`. An event older than the reference counts less."""
    if half_life_s is None or value == 0.0:
        return value
    return value * math.exp2(-(now - ref_ts) / half_life_s)


def apply_item_event(
    stats: Stats | None,
    weight: float,
    purchase: bool,
    repeat: bool,
    ts: float,
    half_life_s: float | None,
) -> Stats:
    """Add one click's contribution (its weight delta) to an item's stats; modified in place."""
    s = new_stats() if stats is None else stats
    if weight > 0:
        s[0] += weight
        if half_life_s is None:
            s[1], s[2] = s[0], max(s[2], ts)
        elif ts >= s[2]:
            s[1] = decay_to(s[1], s[2], ts, half_life_s) + weight
            s[2] = ts
        else:  # a late event: it has decayed since it happened
            s[1] += decay_to(weight, ts, s[2], half_life_s)
    if purchase:
        s[3] += 1
        if repeat:
            s[4] += 1
    return s


def popularity(stats: Sequence[float] | None, now: float, half_life_s: float | None) -> float:
    if not stats:
        return 0.0
    return decay_to(float(stats[1]), float(stats[2]), now, half_life_s)


def repeat_rate(stats: Sequence[float] | None, prior_buys: float) -> float:
    """Share of purchases that were repeats, pulled towards 1/2 for items with few purchases."""
    buys, repeats = (float(stats[3]), float(stats[4])) if stats else (0.0, 0.0)
    return (repeats + 0.5 * prior_buys) / (buys + prior_buys)


def decode_stats(value: Any) -> Stats:
    if value is None:
        return new_stats()
    try:
        s = [float(x) for x in value]
    except (TypeError, ValueError) as exc:
        raise CorruptState(f"item stats do not decode: {type(exc).__name__}: {exc}") from None
    if len(s) != 5:
        raise CorruptState(f"item stats have {len(s)} fields, expected 5")
    return s


def update_board(
    board: list[BoardEntry] | None, item: str, stats: Stats, size: int, half_life_s: float | None
) -> list[BoardEntry]:
    """Put `item`'s current popularity on a partition's board of the `size` most popular items.

    Every entry decays at the same rate, so entries keep their order between updates; an item off the
    board enters when its value passes the smallest one. Returns a new list, best first.
    """
    now = float(stats[2])
    value = float(stats[1])
    board = board or []
    if (
        len(board) >= size
        and value <= decay_to(float(board[-1][1]), float(board[-1][2]), now, half_life_s)
        and all(e[0] != item for e in board)
    ):
        return board  # not popular enough to enter; nothing changes
    entries = [e for e in board if e[0] != item]
    entries.append([item, value, now])
    ranked = sorted(entries, key=lambda e: (-decay_to(float(e[1]), float(e[2]), now, half_life_s), e[0]))
    return ranked[:size]


def merge_boards(
    boards: Iterable[Sequence[BoardEntry]], now: float, n: int, half_life_s: float | None
) -> list[tuple[str, float]]:
    """The `n` most popular items over all partitions' boards: [(item, popularity at now), ...]."""
    best: dict[str, float] = {}
    for board in boards:
        for item, value, ref in board:
            v = decay_to(float(value), float(ref), now, half_life_s)
            if v > best.get(item, -1.0):
                best[item] = v
    return heapq.nlargest(n, best.items(), key=lambda kv: (kv[1], kv[0]))
