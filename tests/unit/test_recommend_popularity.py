"""Item statistics: popularity with and without time decay, repeat rate, per-partition boards."""

from __future__ import annotations

import orjson
import pytest

from streams.recommend.errors import CorruptState
from streams.recommend.popularity import (
    apply_item_event,
    decode_stats,
    merge_boards,
    popularity,
    repeat_rate,
    update_board,
)

DAY = 86400.0


def test_without_half_life_popularity_is_the_total_weight() -> None:
    s = None
    for ts in (0.0, 5 * DAY, 100 * DAY):
        s = apply_item_event(s, 1.0, True, False, ts, None)
    assert popularity(s, 1000 * DAY, None) == 3.0


def test_with_a_half_life_old_clicks_count_less_and_late_events_are_decayed() -> None:
    hl = 7 * DAY
    s = apply_item_event(None, 1.0, False, False, 0.0, hl)
    s = apply_item_event(s, 1.0, False, False, 7 * DAY, hl)
    assert popularity(s, 7 * DAY, hl) == pytest.approx(1.5)
    assert popularity(s, 14 * DAY, hl) == pytest.approx(0.75)
    # An event from day 0 that arrives late weighs what it would have weighed had it come in time.
    s = apply_item_event(s, 1.0, False, False, 0.0, hl)
    assert popularity(s, 7 * DAY, hl) == pytest.approx(2.0)
    assert s[0] == 3.0  # the undecayed total is kept for co-occurrence normalisation


def test_repeat_rate_is_smoothed_towards_one_half() -> None:
    assert repeat_rate(None, 2.0) == 0.5
    s = None
    for rep in (True, True, True, False):
        s = apply_item_event(s, 1.0, True, rep, 0.0, None)
    assert repeat_rate(s, 2.0) == pytest.approx((3 + 1) / (4 + 2))
    assert repeat_rate(s, 0.0) == pytest.approx(0.75)


def test_a_board_keeps_the_most_popular_items_of_its_partition() -> None:
    board = None
    stats: dict[str, list[float]] = {}
    for item, n in [("a", 5), ("b", 1), ("c", 3), ("d", 4)]:
        for _ in range(n):
            stats[item] = apply_item_event(stats.get(item), 1.0, False, False, 0.0, None)
            board = update_board(board, item, stats[item], 2, None)
    assert board is not None
    assert [e[0] for e in board] == ["a", "d"]
    # "b" climbs past "d" and enters.
    for _ in range(4):
        stats["b"] = apply_item_event(stats["b"], 1.0, False, False, 0.0, None)
        board = update_board(board, "b", stats["b"], 2, None)
    assert [e[0] for e in board] == ["a", "b"]
    assert orjson.loads(orjson.dumps(board)) == board


def test_merged_boards_give_the_global_top_list() -> None:
    boards = [[["a", 9.0, 0.0], ["b", 2.0, 0.0]], [["c", 5.0, 0.0]], []]
    assert merge_boards(boards, 0.0, 2, None) == [("a", 9.0), ("c", 5.0)]
    # With decay, a stale entry loses to a fresh one.
    decayed = merge_boards([[["old", 8.0, 0.0]], [["fresh", 5.0, 10 * DAY]]], 10 * DAY, 1, DAY)
    assert decayed[0][0] == "fresh"


def test_stats_decode_checks_their_shape() -> None:
    assert decode_stats([1, 1, 0, 1, 0]) == [1.0, 1.0, 0.0, 1.0, 0.0]
    with pytest.raises(CorruptState):
        decode_stats([1, 2])
    with pytest.raises(CorruptState):
        decode_stats(["x", 1, 1, 1, 1])
