"""Per-user state: sessions, purchase history, bounds, serialisation."""

from __future__ import annotations

import math

import orjson
import pytest

from streams.recommend.config import RecommenderConfig
from streams.recommend.errors import CorruptState, InvalidClick
from streams.recommend.state import UserState

CFG = RecommenderConfig()


def buy(
    state: UserState, items: list[str], session: str, ts: float = 0.0, cfg: RecommenderConfig = CFG
) -> None:
    for i, item in enumerate(items):
        state.observe(item, "add_to_cart", session, ts + i, cfg)


def test_a_new_session_id_starts_an_empty_session() -> None:
    s = UserState()
    buy(s, ["a", "b"], "s1")
    assert s.session_items() == ["a", "b"] and s.sessions == 1
    obs = s.observe("c", "add_to_cart", "s2", 10.0, CFG)
    assert obs.new_session and obs.session_before == ()
    assert s.session_items() == ["c"] and s.sessions == 2


def test_session_keeps_the_latest_items_only() -> None:
    cfg = RecommenderConfig(session_max_items=3)
    s = UserState()
    for i in range(10):
        s.observe(f"p{i}", "view", "s1", float(i), cfg)
    assert s.session_items() == ["p7", "p8", "p9"]


def test_a_clicked_item_moves_to_the_end_and_keeps_its_strongest_action() -> None:
    s = UserState()
    s.observe("a", "add_to_cart", "s1", 0.0, CFG)
    s.observe("b", "view", "s1", 1.0, CFG)
    obs = s.observe("a", "view", "s1", 2.0, CFG)
    assert s.session == [("b", 0.25), ("a", 1.0)]
    assert obs.old_weight == 1.0 and obs.new_weight == 1.0
    up = s.observe("b", "add_to_cart", "s1", 3.0, CFG)
    assert (up.old_weight, up.new_weight) == (0.25, 1.0)


def test_views_do_not_enter_the_purchase_history() -> None:
    s = UserState()
    s.observe("a", "view", "s1", 0.0, CFG)
    assert s.history == {}
    s.observe("a", "purchase", "s1", 1.0, CFG)
    assert s.history["a"][0] == 1


def test_history_counts_one_purchase_per_session_and_flags_repeats() -> None:
    s = UserState()
    first = s.observe("a", "add_to_cart", "s1", 0.0, CFG)
    again = s.observe("a", "purchase", "s1", 1.0, CFG)
    assert first.purchase and not first.repeat
    assert not again.purchase
    later = s.observe("a", "add_to_cart", "s2", 2.0, CFG)
    assert later.purchase and later.repeat
    assert s.history["a"][0] == 2


def test_history_score_is_the_recency_weighted_share_of_past_sessions() -> None:
    cfg = RecommenderConfig(history_decay=0.5)
    s = UserState()
    for n in range(4):  # "milk" in all four past sessions, "cake" only in the first
        buy(s, ["milk", "cake"] if n == 0 else ["milk"], f"s{n}", cfg=cfg)
    buy(s, ["bread"], "s4", cfg=cfg)  # the current session
    scores = s.history_scores(cfg)
    assert scores["milk"] == pytest.approx(1.0)
    # cake: bought 4 sessions before the current one: 0.5**4 / (0.5 + 0.25 + 0.125 + 0.0625)
    assert scores["cake"] == pytest.approx(0.5**4 / 0.9375)
    assert "bread" not in scores  # bought only in the current session: no past share


def test_history_scores_with_no_decay_are_plain_frequencies() -> None:
    cfg = RecommenderConfig(history_decay=1.0)
    s = UserState()
    buy(s, ["a", "b"], "s0", cfg=cfg)
    buy(s, ["a"], "s1", cfg=cfg)
    buy(s, ["c"], "s2", cfg=cfg)
    assert s.history_scores(cfg) == {"a": 1.0, "b": 0.5}


def test_history_is_bounded_and_keeps_the_strongest_items() -> None:
    cfg = RecommenderConfig(history_max_items=5)
    s = UserState()
    for n in range(30):
        # "staple" every session; a fresh one-off item each session.
        buy(s, ["staple", f"once-{n}"], f"s{n}", cfg=cfg)
        assert len(s.history) <= 5
    assert "staple" in s.history
    assert "once-29" in s.history and "once-0" not in s.history


def test_state_round_trips_through_orjson() -> None:
    s = UserState()
    buy(s, ["a", "b"], "s1", 100.0)
    s.observe("c", "view", "s2", 200.0, CFG)
    value = orjson.loads(orjson.dumps(s.to_json()))
    back = UserState.from_json(value)
    assert back == s
    assert UserState.from_json(None) == UserState()


def test_serialised_state_has_a_bounded_size() -> None:
    cfg = RecommenderConfig(session_max_items=20, history_max_items=50)
    s = UserState()
    for n in range(200):
        buy(s, [f"product-{n}-{i:03d}" for i in range(30)], f"session-{n}", float(n * 1000), cfg=cfg)
    size = len(orjson.dumps(s.to_json()))
    # 50 history entries and 20 session items of ~20-byte ids: a few kB, whatever the user did.
    assert len(s.history) == 50 and len(s.session) == 20
    assert size < 50 * 60 + 20 * 40 + 200


@pytest.mark.parametrize(
    "value",
    [
        {"v": 99, "sid": None, "ts": None, "n": 0, "s": [], "h": {}},
        {"v": 1},
        {"v": 1, "sid": 1, "ts": "x"},
        [],
    ],
)
def test_a_corrupt_value_raises_corrupt_state(value: object) -> None:
    with pytest.raises(CorruptState):
        UserState.from_json(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("product", "action", "session", "ts"),
    [("a", "like", "s", 0.0), ("", "view", "s", 0.0), ("a", "view", "", 0.0), ("a", "view", "s", math.nan)],
)
def test_an_unusable_click_raises_invalid_click(product: str, action: str, session: str, ts: float) -> None:
    s = UserState()
    with pytest.raises(InvalidClick):
        s.observe(product, action, session, ts, CFG)
    assert s == UserState()  # nothing half-applied
