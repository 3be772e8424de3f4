"""Ranking: the blend of sources, session filtering, source attribution, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.engine import Click
from streams.recommend.ranker import Candidates, GlobalView, blend, candidate_features, recommend
from streams.recommend.state import UserState
from tooling.recommend_eval.local import LocalRecommender

# Explicit weights and plain "bought together" counts: these tests are about the mechanics, not
# about the tuned values.
CFG = RecommenderConfig(
    k=5,
    weights=Weights(history=1.0, history_repeat=1.0, cooccurrence=0.5, content=0.3, popularity=0.05),
    pair_distance_decay=1.0,
)


def click(eid: str, user: str, session: str, product: str, ts: float, action: str = "add_to_cart") -> Click:
    return Click(eid, user, session, product, action, ts)


def trained() -> LocalRecommender:
    """Other shoppers: chips go with salsa (often) and with beer (once); bananas are bought by all."""
    rec = LocalRecommender(CFG)
    t = 0.0
    for u in range(6):
        basket = ["chips", "salsa", "bananas"] if u < 5 else ["chips", "beer", "bananas"]
        for p in basket:
            t += 1
            rec.on_click(click(f"o{u}-{p}", f"other{u}", f"o{u}", p, t))
    return rec


def test_a_new_shopper_gets_co_occurrence_then_popularity() -> None:
    rec = trained()
    recs = rec.on_click(click("n1", "new", "n", "chips", 100.0))
    assert recs is not None
    # P(bananas | chips) = 6/6, P(salsa | chips) = 5/6, P(beer | chips) = 1/6
    assert [r.product_id for r in recs[:3]] == ["bananas", "salsa", "beer"]
    assert {r.source for r in recs[:3]} == {"cooccurrence"}
    assert "chips" not in [r.product_id for r in recs]


def test_the_current_session_is_always_filtered_out() -> None:
    rec = trained()
    for n in range(3):  # "salsa" is this shopper's strongest habit ...
        rec.on_click(click(f"h{n}", "fan", f"h{n}", "salsa", 50.0 + n))
    rec.on_click(click("c1", "fan", "now", "salsa", 90.0))  # ... and already in the current cart
    recs = rec.on_click(click("c2", "fan", "now", "chips", 91.0))
    assert recs is not None
    assert not {"salsa", "chips"} & {r.product_id for r in recs}


def test_the_shoppers_own_history_comes_first_and_says_so() -> None:
    rec = trained()
    for n in range(3):
        rec.on_click(click(f"h{n}", "regular", f"h{n}", "oat-milk", 50.0 + n))
    recs = rec.on_click(click("c", "regular", "now", "chips", 90.0))
    assert recs is not None
    assert recs[0].product_id == "oat-milk" and recs[0].source == "history"
    assert recs[1].product_id == "bananas" and recs[1].source == "cooccurrence"


def test_an_empty_world_gives_an_empty_answer() -> None:
    view = GlobalView({}, {}, [], None, 0.0)
    state = UserState()
    state.observe("x", "view", "s", 0.0, CFG)
    assert recommend(state, view, CFG) == []


def test_popularity_is_the_fallback() -> None:
    view = GlobalView({}, {"a": [5.0, 5.0, 0.0, 0.0, 0.0]}, [("a", 5.0), ("b", 2.0)], None, 0.0)
    state = UserState()
    state.observe("x", "view", "s", 0.0, CFG)
    recs = recommend(state, view, CFG)
    assert [(r.product_id, r.source) for r in recs] == [("a", "popular"), ("b", "popular")]


def test_blend_scores_are_the_weighted_sum_and_ties_break_by_id() -> None:
    feats = np.array([[0.5, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    cands = Candidates(["b", "a", "c"], feats)
    out = blend(
        cands, Weights(history=1.0, history_repeat=0.0, cooccurrence=1.0, content=0.0, popularity=0.1), 3
    )
    assert [(r.product_id, r.score, r.source) for r in out] == [
        ("a", 0.5, "cooccurrence"),
        ("b", 0.5, "history"),
        ("c", 0.1, "popular"),
    ]
    assert len(blend(cands, Weights(), 1)) == 1


def test_features_lie_in_the_unit_interval() -> None:
    rec = trained()
    rec.on_click(click("h", "u", "h", "salsa", 60.0))
    ranked_on: list[Candidates] = []
    rec.on_click(
        click("c", "u", "now", "chips", 90.0),
        ranked_on=lambda state, view: ranked_on.append(candidate_features(state, view, CFG)),
    )
    (cands,) = ranked_on
    assert cands.features.shape == (len(cands.ids), 5)
    assert float(cands.features.min()) >= 0.0 and float(cands.features.max()) <= 1.0 + 1e-9


@pytest.mark.parametrize("w", [0.0, 5.0])
def test_the_weights_change_the_order(w: float) -> None:
    feats = np.array([[0.4, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0, 0.0]])
    cands = Candidates(["hist", "cooc"], feats)
    out = blend(cands, Weights(cooccurrence=w), 2)
    assert out[0].product_id == ("cooc" if w > 1 else "hist")
