"""Item-item co-occurrence learned online from the clickstream, pruned to a bounded row per item.

Two steps that map onto the topology (docs/recommendations.md):

1. `pair_updates` runs where the click is processed (the user-keyed agent): a new item in a session
   pairs with the session's other items. Its output is re-keyed by item (`group_by_item`) and sent to
   an internal topic, so each item's row has exactly one writer.
2. `apply_updates` runs in the item-keyed agent: it adds the pair weights to the item's neighbour row,
   a space-saving summary of at most `capacity` counters: the row is pruned to its strongest neighbours
   as it is written, so it can be published as it is to the global table that every worker reads.
   `neighbour_counts` reads a row back (guaranteed counts), `top_neighbours` sorts the strongest.

Pair weight: the weaker of the two items' strongest actions in the session (a view pairs weakly, two
cart items pair fully), times `distance_decay` per item between them in the session. When an item's
weight in the session rises (a viewed item goes into the cart), only the difference is sent, so a
pair's total over a session never exceeds min(w_a, w_b). With distance_decay = 1, every pair of a basket
is counted once in each direction, so without pruning the row of item a holds exactly the number of
sessions in which a and b met: the classic "bought together" count.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from streams.recommend.errors import CorruptState

COUNT_DIGITS = 4

# A neighbour row as stored in the item-keyed table: neighbour -> [count, error]. `count - error` is a
# guaranteed lower bound of the true count (space-saving); ranking uses it.
Row = dict[str, list[float]]


class PairUpdate(NamedTuple):
    item: str  # the row to update (the message key)
    neighbour: str
    weight: float


def pair_updates(
    session_before: Sequence[tuple[str, float]],
    item: str,
    old_weight: float,
    new_weight: float,
    window: int,
    distance_decay: float = 1.0,
) -> list[PairUpdate]:
    """The pair-count increments caused by `item` reaching `new_weight` in a session.

    `session_before` is the session's other items (oldest first) with their strongest action weights;
    only the latest `window` of them pair, which bounds the work per click. With `distance_decay` < 1
    a pair counts less the further apart the two items were put in the cart (1, d, d**2, ... for the
    item just before, the one before it, ...): neighbours in cart order predict the next item better.
    """
    updates: list[PairUpdate] = []
    if new_weight <= old_weight or window < 1:
        return updates
    recent = session_before[-window:]
    last = len(recent) - 1
    for i, (other, w) in enumerate(recent):
        if other == item:
            continue
        delta = (min(new_weight, w) - min(old_weight, w)) * distance_decay ** (last - i)
        if delta > 0:
            updates.append(PairUpdate(item, other, delta))
            updates.append(PairUpdate(other, item, delta))
    return updates


def group_by_item(updates: Iterable[PairUpdate]) -> dict[str, list[tuple[str, float]]]:
    """One message per row: item -> [(neighbour, weight), ...]."""
    grouped: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for u in updates:
        grouped[u.item].append((u.neighbour, u.weight))
    return dict(grouped)


def apply_updates(row: Row | None, updates: Iterable[tuple[str, float]], capacity: int) -> Row:
    """Add pair weights to a row of at most `capacity` counters (the space-saving algorithm).

    A known neighbour's counter grows. A new neighbour takes a free slot, or, in a full row, replaces
    the smallest counter m: it starts at m + w with error m (its true count lies in [w, m + w]). This
    keeps every neighbour whose true count exceeds (total weight) / capacity, lets new neighbours in
    (new products and new habits), and bounds the row's size. The row is modified in place and returned.
    """
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    out: Row = {} if row is None else row
    for neighbour, weight in updates:
        if weight <= 0:
            continue
        # Counts are kept to COUNT_DIGITS decimals: decayed pair weights would otherwise make every
        # count a 17-digit float in the changelog.
        slot = out.get(neighbour)
        if slot is not None:
            slot[0] = round(slot[0] + weight, COUNT_DIGITS)
            continue
        if len(out) < capacity:
            out[neighbour] = [round(weight, COUNT_DIGITS), 0.0]
            continue
        victim, (floor, _) = min(out.items(), key=lambda kv: kv[1][0])
        del out[victim]
        out[neighbour] = [round(floor + weight, COUNT_DIGITS), floor]
    return out


def neighbour_counts(row: Mapping[str, Sequence[float]] | None) -> Iterator[tuple[str, float]]:
    """Each neighbour with its guaranteed count (count - error), in no particular order."""
    if row:
        for nb, (c, e) in row.items():
            yield nb, c - e


def top_neighbours(row: Mapping[str, Sequence[float]] | None, n: int) -> list[tuple[str, float]]:
    """The `n` strongest neighbours by guaranteed count, strongest first."""
    return heapq.nlargest(n, neighbour_counts(row), key=lambda x: (x[1], x[0]))


def decode_row(value: Any) -> Row:
    """A row read back from a table, checked (a changelog may hold anything)."""
    if value is None:
        return {}
    try:
        return {str(nb): [float(c), float(e)] for nb, (c, e) in value.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise CorruptState(f"neighbour row does not decode: {type(exc).__name__}: {exc}") from None
