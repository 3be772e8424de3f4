"""The evaluation protocol: timestamps, the hold-out split, prediction points, HR/MRR, baselines, tuning."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.engine import Click
from tooling.recommend_eval.offline import FeatureBank, evaluate_split
from tooling.recommend_eval.protocol import (
    EVAL_WEEK_START,
    CoOccurrence,
    MostPopular,
    PredictionPoint,
    Split,
    holdout_split,
    prediction_points,
    replay,
    score,
    synthesise_clicks,
)


def orders_frame() -> pd.DataFrame:
    """Two users; user 1 has three orders, user 2 has two. Product ids repeat across users."""
    rows = []

    def order(oid: int, uid: int, n: int, dow: int, hour: int, gap: float | None, items: list[int]) -> None:
        for pos, pid in enumerate(items, start=1):
            rows.append((oid, uid, n, dow, hour, gap, pid, pos))

    order(10, 1, 1, 0, 9, None, [1, 2, 3])
    order(11, 1, 2, 3, 10, 3.0, [1, 4])
    order(12, 1, 3, 3, 8, 0.0, [1, 2, 5])  # same day as the previous order, but an earlier hour
    order(20, 2, 1, 5, 20, None, [2, 3])
    order(21, 2, 2, 1, 12, 30.0, [3, 2, 1])
    return pd.DataFrame(
        rows,
        columns=[
            "order_id",
            "user_id",
            "order_number",
            "order_dow",
            "order_hour_of_day",
            "days_since_prior_order",
            "product_id",
            "add_to_cart_order",
        ],
    )


def test_synthetic_times_follow_each_users_timeline() -> None:
    clicks = synthesise_clicks(orders_frame())
    assert list(clicks["ts"]) == sorted(clicks["ts"])
    first = clicks.groupby("session_id")["ts"].min()
    last = clicks.groupby("session_id")["ts"].max()
    # Last orders land on their weekday of the evaluation week, at their hour.
    week0 = EVAL_WEEK_START.timestamp()
    assert first["order-21"] == week0 + 1 * 86400 + 12 * 3600
    assert datetime.fromtimestamp(first["order-12"], UTC).weekday() == 2  # dow 3 from a Sunday: Wednesday
    # Earlier orders lie days_since_prior_order before the next; the same-day conflict is pushed after.
    assert first["order-20"] == first["order-21"] - 30 * 86400 - 12 * 3600 + 20 * 3600
    assert first["order-12"] == last["order-11"] + 3600
    # Items within an order are a minute apart in cart order.
    o10 = clicks[clicks["session_id"] == "order-10"].sort_values("position")
    assert np.diff(o10["ts"]).tolist() == [60.0, 60.0]
    assert set(clicks["user_id"]) == {"ic-1", "ic-2"}


def test_the_split_holds_out_each_users_last_or_second_to_last_order() -> None:
    clicks = synthesise_clicks(orders_frame())
    test = holdout_split(clicks, 0)
    assert {c.session_id for c in test.heldout} == {"order-12", "order-21"}
    assert {c.session_id for c in test.history} == {"order-10", "order-11", "order-20"}
    val = holdout_split(clicks, 1)
    assert {c.session_id for c in val.heldout} == {"order-11", "order-20"}
    assert {c.session_id for c in val.history} == {"order-10"}  # the last orders are not used at all
    with pytest.raises(ValueError, match="offset"):
        holdout_split(clicks, -1)


def test_prediction_points_pair_each_add_to_cart_with_the_next_item() -> None:
    test = holdout_split(synthesise_clicks(orders_frame()), 0)
    points = prediction_points(test.heldout)
    assert sorted(points, key=lambda p: p.event_id) == [
        PredictionPoint("ic-12-1", "ic-1", "ic-2"),
        PredictionPoint("ic-12-2", "ic-1", "ic-5"),
        PredictionPoint("ic-21-1", "ic-2", "ic-2"),
        PredictionPoint("ic-21-2", "ic-2", "ic-1"),
    ]


def test_hr_and_mrr_and_unanswered_points() -> None:
    points = [
        PredictionPoint("e1", "u", "a"),
        PredictionPoint("e2", "u", "b"),
        PredictionPoint("e3", "u", "c"),
    ]
    recs = {"e1": ["a", "x"], "e2": ["x", "y", "b"]}  # e3 was never answered
    s = score(points, recs, k=10, name="t")
    assert (s.n, s.answered) == (3, 2)
    assert s.hr == pytest.approx(2 / 3)
    assert s.mrr == pytest.approx((1 + 1 / 3) / 3)
    cut = score(points, recs, k=2)
    assert cut.hr == pytest.approx(1 / 3) and cut.mrr == pytest.approx(1 / 3)


def stream(sessions: list[tuple[str, str, list[str]]]) -> list[Click]:
    out, t = [], 0.0
    for user, sid, items in sessions:
        for i, p in enumerate(items):
            t += 1
            out.append(Click(f"{sid}-{i}", user, sid, p, "add_to_cart", t))
    return out


def test_baselines_learn_online_and_filter_the_session() -> None:
    clicks = stream([("u1", "s1", ["a", "b", "c"]), ("u2", "s2", ["a", "b"]), ("u3", "s3", ["b", "d"])])
    pop, last, total = MostPopular(2), CoOccurrence(5, "last"), CoOccurrence(5, "session")
    for c in clicks[:-1]:
        for r in (pop, last, total):
            r.on_click(c, rank=False)
    final = clicks[-1]  # u3 adds "d" after "b"
    assert pop.on_click(final, rank=True) == ["a", "c"]  # b (3) and d are in the session
    assert last.on_click(final, rank=True) == []  # "d" has never been seen with anything else
    assert total.on_click(final, rank=True) == ["a", "c"]  # via "b": a twice, c once
    with pytest.raises(ValueError, match="mode"):
        CoOccurrence(5, "both")


def test_replay_answers_only_the_prediction_points() -> None:
    clicks = stream([("u1", "s1", ["a", "b", "c"]), ("u2", "s2", ["a", "b", "c"])])
    split = Split("t", clicks[:3], clicks[3:])
    points = prediction_points(split.heldout)
    answers = replay(split, {"co": CoOccurrence(10, "last")}, points)
    assert set(answers["co"]) == {"s2-0", "s2-1"}
    assert answers["co"]["s2-0"] == ["b", "c"]
    assert score(points, answers["co"]).hr == 1.0


def test_the_fast_tuner_scores_exactly_like_the_blend() -> None:
    """FeatureBank.evaluate must give what scoring blend()'s own lists gives, for any weights."""
    rng = np.random.default_rng(3)
    sessions = []
    for n in range(120):
        user = f"u{n % 12}"
        items = [f"p{int(x)}" for x in rng.choice(25, size=int(rng.integers(2, 6)), replace=False)]
        sessions.append((user, f"s{n}", items))
    clicks = stream(sessions)
    last_session = {u: sid for u, sid, _ in sessions}
    held = [c for c in clicks if last_session[c.user_id] == c.session_id]
    hist = [c for c in clicks if last_session[c.user_id] != c.session_id]
    split = Split("t", hist, held)
    for weights in (Weights(), Weights(history_repeat=0.0, cooccurrence=2.0, popularity=0.2)):
        config = RecommenderConfig(k=5, weights=weights)
        scores, blended, points = evaluate_split(split, config, 5, keep_features=True)
        bank = FeatureBank(points, blended.features, 5)
        hr, mrr = bank.evaluate(weights)
        assert scores[0].name == "blended"
        assert hr == pytest.approx(scores[0].hr) and mrr == pytest.approx(scores[0].mrr)
        assert scores[0].n == len(points) > 0


def test_the_service_evaluator_sends_the_clicks_as_the_shop_would_and_reads_first_answers() -> None:
    from streams.events import ClickEvent
    from tooling.recommend_eval.through_service import (
        Phase,
        click_event,
        select_users,
        served_recommendations,
    )
    from tooling.replay import Received, new_accounting

    c = Click("ic-7-2", "ic-1", "order-7", "ic-196", "add_to_cart", 1494151260.0)
    event = click_event(c)
    assert event.key == b"ic-1" and event.topic == "clickstream" and event.expect == "output"
    parsed = ClickEvent.model_validate_json(event.render())
    assert parsed.ts.timestamp() == c.ts and parsed.product_id == "ic-196" and parsed.event_id == c.event_id

    accounting = new_accounting([event])

    def answer(items: list[str], offset: int) -> Received:
        value = {"event_id": c.event_id, "items": [{"product_id": p} for p in items], "latency_ms": 5.0}
        return Received("recommendations", 0, offset, b"ic-1", value, 0)

    accounting.add(answer(["a", "b"], 0))
    accounting.add(answer(["c"], 1))  # a repeat after a crash: the first answer counts
    phase = Phase("held-out", 1, 2.0, accounting, 0)
    assert served_recommendations(phase) == {c.event_id: ["a", "b"]}
    summary = phase.summary()
    assert summary["answered"] == 1 and summary["repeated_records"] == 1 and summary["missing"] == 0
    assert summary["latency_ms"]["p50"] == 5.0

    clicks = synthesise_clicks(orders_frame())
    assert select_users(clicks, None, 0) is clicks
    one = select_users(clicks, 1, 0)
    assert one["user_id"].nunique() == 1 and set(one["user_id"]) < set(clicks["user_id"])
