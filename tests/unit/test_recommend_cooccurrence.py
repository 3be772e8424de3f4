"""Online co-occurrence: pair updates from a session, and the pruned (space-saving) neighbour rows."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import orjson
import pytest

from streams.recommend.cooccurrence import (
    PairUpdate,
    apply_updates,
    decode_row,
    group_by_item,
    neighbour_counts,
    pair_updates,
    top_neighbours,
)
from streams.recommend.errors import CorruptState


def test_a_new_item_pairs_both_ways_with_each_other_session_item() -> None:
    ups = pair_updates([("a", 1.0), ("b", 1.0)], "c", 0.0, 1.0, window=10)
    assert sorted(ups) == sorted(
        [
            PairUpdate("c", "a", 1.0),
            PairUpdate("a", "c", 1.0),
            PairUpdate("c", "b", 1.0),
            PairUpdate("b", "c", 1.0),
        ]
    )
    assert group_by_item(ups) == {"c": [("a", 1.0), ("b", 1.0)], "a": [("c", 1.0)], "b": [("c", 1.0)]}


def test_the_window_bounds_the_work_per_click() -> None:
    session = [(f"p{i}", 1.0) for i in range(100)]
    ups = pair_updates(session, "new", 0.0, 1.0, window=5)
    assert {u.neighbour for u in ups if u.item == "new"} == {"p95", "p96", "p97", "p98", "p99"}
    assert len(ups) == 10


def test_a_whole_basket_counts_each_pair_once_per_direction() -> None:
    basket = ["a", "b", "c", "d"]
    counts: Counter[tuple[str, str]] = Counter()
    session: list[tuple[str, float]] = []
    for item in basket:
        for u in pair_updates(session, item, 0.0, 1.0, window=50):
            counts[(u.item, u.neighbour)] += int(u.weight)
        session.append((item, 1.0))
    assert counts == Counter({(x, y): 1 for x in basket for y in basket if x != y})


def test_an_upgraded_action_adds_only_the_difference() -> None:
    # "a" viewed (0.25), then "b" carted (pair 0.25), then "a" carted: the pair reaches min(1, 1) = 1.
    first = pair_updates([("a", 0.25)], "b", 0.0, 1.0, window=10)
    upgrade = pair_updates([("b", 1.0)], "a", 0.25, 1.0, window=10)
    total: defaultdict[tuple[str, str], float] = defaultdict(float)
    for u in first + upgrade:
        total[(u.item, u.neighbour)] += u.weight
    assert total == {("a", "b"): 1.0, ("b", "a"): 1.0}
    assert pair_updates([("b", 1.0)], "a", 1.0, 1.0, window=10) == []  # no rise, no update


def test_below_capacity_the_row_holds_exact_counts() -> None:
    row = apply_updates(None, [("x", 1.0), ("y", 1.0), ("x", 2.0)], capacity=10)
    assert row == {"x": [3.0, 0.0], "y": [1.0, 0.0]}
    assert top_neighbours(row, 1) == [("x", 3.0)]


def test_a_full_row_replaces_its_smallest_counter_and_records_the_error() -> None:
    row = apply_updates(None, [("x", 5.0), ("y", 2.0)], capacity=2)
    apply_updates(row, [("z", 1.0)], capacity=2)
    assert row == {"x": [5.0, 0.0], "z": [3.0, 2.0]}
    assert dict(neighbour_counts(row)) == {"x": 5.0, "z": 1.0}  # z's guaranteed count is its own weight


def test_pruned_rows_stay_bounded_keep_heavy_hitters_and_never_overcount() -> None:
    rng = random.Random(7)
    capacity = 20
    heavy = [f"h{i}" for i in range(5)]
    row = None
    exact: Counter[str] = Counter()
    for _ in range(5000):
        # 30% of pairs go to five strong neighbours, the rest to a long tail of 2,000 items.
        nb = rng.choice(heavy) if rng.random() < 0.3 else f"t{rng.randrange(2000)}"
        row = apply_updates(row, [(nb, 1.0)], capacity)
        exact[nb] += 1
        assert len(row) <= capacity
    assert row is not None
    total = sum(exact.values())
    # Space-saving guarantee: every neighbour above total/capacity is kept ...
    assert {nb for nb, c in exact.items() if c > total / capacity} <= set(row)
    # ... the guaranteed counts are lower bounds, and the heavy ones rank first.
    for nb, lower in neighbour_counts(row):
        assert lower <= exact[nb] <= row[nb][0]
    assert {nb for nb, _ in top_neighbours(row, 5)} == set(heavy)


def test_a_new_neighbour_can_displace_a_fading_one() -> None:
    # New habits show up: after the old partner stops, a new one overtakes it in a full row.
    row = apply_updates(None, [("old", 1.0)] * 10 + [("other", 1.0)] * 12, capacity=2)
    for _ in range(30):
        apply_updates(row, [("new", 1.0)], capacity=2)
    assert top_neighbours(row, 2)[0][0] == "new"


def test_rows_round_trip_and_reject_garbage() -> None:
    row = apply_updates(None, [("x", 1.5)], capacity=3)
    assert decode_row(orjson.loads(orjson.dumps(row))) == row
    assert decode_row(None) == {}
    with pytest.raises(CorruptState):
        decode_row({"x": "no"})
    with pytest.raises(ValueError, match="capacity"):
        apply_updates(None, [], capacity=0)
