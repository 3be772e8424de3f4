"""The user step, its item updates, and the recommender in one process: ordering, bad input, recovery from
the stored table values."""

from __future__ import annotations

import orjson
import pytest

from streams.recommend.config import RecommenderConfig
from streams.recommend.engine import Click, ItemUpdate, user_step
from streams.recommend.errors import CorruptState, InvalidClick, InvalidEmbedding
from streams.recommend.service import ItemMessage, ItemUpdateApplier
from streams.recommend.state import UserState
from streams.recommend.versioned import Versioned, version_of
from streams.topology import TABLE_NEIGHBOURS, TABLE_USERS
from tooling.recommend_eval.local import LocalRecommender

CFG = RecommenderConfig(k=5)


def click(eid: str, user: str, session: str, product: str, ts: float, action: str = "add_to_cart") -> Click:
    return Click(eid, user, session, product, action, ts)


def test_user_step_sends_one_update_per_touched_item() -> None:
    state = UserState()
    assert [u.item for u in user_step(state, click("1", "u", "s", "a", 1.0), CFG)] == ["a"]
    ups = user_step(state, click("2", "u", "s", "b", 2.0), CFG)
    assert ups == [
        ItemUpdate("b", (("a", 1.0),), 1.0, True, False, 2.0),
        ItemUpdate("a", (("b", 1.0),), 0.0, False, False, 2.0),
    ]
    # Clicking an item again at the same strength changes nothing global.
    assert user_step(state, click("3", "u", "s", "b", 3.0), CFG) == []


def test_item_updates_round_trip_through_json() -> None:
    u = ItemUpdate("b", (("a", 0.25), ("c", 1.0)), 0.75, True, True, 12.5)
    assert ItemUpdate.from_json(orjson.loads(orjson.dumps(u.to_json()))) == u
    with pytest.raises(CorruptState):
        ItemUpdate.from_json({"item": "b"})


def test_item_updates_build_rows_and_stats() -> None:
    rows: dict[str, object] = {}
    stats: dict[str, object] = {}
    applier = ItemUpdateApplier(CFG, Versioned(rows), Versioned(stats), {})
    applier.apply_message(ItemMessage([ItemUpdate("a", (("b", 1.0),), 1.0, True, False, 5.0)], None, 0), 0)
    assert Versioned(rows)["a"] == {"b": [1.0, 0.0]} and Versioned(stats)["a"] == [1.0, 1.0, 5.0, 1.0, 0.0]
    update = ItemUpdate("a", (("b", 1.0), ("c", 1.0)), 0.0, False, False, 6.0)
    applier.apply_message(ItemMessage([update], None, 0), 0)
    assert Versioned(rows)["a"] == {"b": [2.0, 0.0], "c": [1.0, 0.0]} and Versioned(stats)["a"][0] == 1.0


def test_a_click_is_ranked_before_its_own_updates_arrive() -> None:
    rec = LocalRecommender(CFG)
    rec.on_click(click("1", "u1", "s1", "a", 1.0))
    # Ranked on the state before this click's pair a-b existed: the only known item, "a", is in the cart.
    assert rec.on_click(click("2", "u1", "s1", "b", 2.0)) == []
    assert rec.neighbours["a"] == {"b": [1.0, 0.0]}  # ... and the pair is applied right after
    later = rec.on_click(click("3", "u2", "s2", "a", 3.0))
    assert later is not None and later[0].product_id == "b" and later[0].source == "cooccurrence"


def test_a_bad_click_changes_nothing() -> None:
    rec = LocalRecommender(CFG)
    with pytest.raises(InvalidClick):
        rec.on_click(click("1", "", "s", "a", 1.0))
    with pytest.raises(InvalidClick):
        rec.on_click(click("1", "u", "s", "a", 1.0, action="wishlist"))
    with pytest.raises(InvalidClick):
        rec.on_click(click("1", "u", "s", "a", float("nan")))
    assert rec.users == {} and rec.stats == {}
    with pytest.raises(InvalidEmbedding):
        rec.on_product("p", [1.0, 1.0])
    assert rec.embeddings == {} and len(rec.content) == 0


def test_a_recommender_rebuilt_from_its_table_values_answers_the_same() -> None:
    """What a restarted worker recovers from the changelogs is enough to carry on identically."""
    rec = LocalRecommender(CFG)
    t = 0.0
    for n in range(40):
        for p in (f"p{n % 7}", f"p{(n * 3) % 11}", f"p{(n * 5) % 13}"):
            t += 1
            rec.on_click(click(f"{n}-{p}", f"u{n % 5}", f"s{n}", p, t))
    rec.on_product("p1", [0.6, 0.8])
    rec.on_product("new", [0.8, 0.6])
    tables = orjson.loads(orjson.dumps(rec.tables()))
    # The stored forms: user records as the users table holds them, replicated values versioned.
    assert UserState.from_json(tables[TABLE_USERS]["u1"]) == rec.user("u1")
    assert all(version_of(v) >= 1 for v in tables[TABLE_NEIGHBOURS].values())
    twin = LocalRecommender.from_tables(CFG, tables)
    for n, (user, p) in enumerate([("u1", "p1"), ("u2", "p3"), ("stranger", "p1"), ("u1", "p4")]):
        t += 1
        a = rec.on_click(click(f"x{n}", user, "next", p, t))
        b = twin.on_click(click(f"x{n}", user, "next", p, t))
        assert a == b and a
    assert twin.embeddings == rec.embeddings and "new" in twin.content
