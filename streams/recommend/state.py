"""Per-user state: the current session and the purchase history, both bounded.

One `UserState` per shopper is the value of the user-keyed table (the clickstream is keyed by user_id,
so a shopper's state lives on the worker that owns their partition and is restored from the table's
changelog after a restart or a rebalance). `to_json()` gives plain lists/dicts for the changelog:

    {"v": 1, "sid": "order-42", "ts": 1494151200.0, "n": 17,
     "s": [["196", 1.0], ["14084", 1.0]],            # session items, latest last, strongest action weight
     "h": {"196": [5, 2.31, 16], ...}}               # item -> [sessions bought, decayed score, last session]

Sizes are bounded by `session_max_items` and `history_max_items` whatever the shopper does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.recommend.config import PURCHASE_ACTIONS, RecommenderConfig
from streams.recommend.errors import CorruptState, InvalidClick

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Observation:
    """What one click changed, for the global (item-keyed) updates that follow it."""

    product_id: str
    new_session: bool
    # The other items of the session before this click, oldest first, with their action weights.
    session_before: tuple[tuple[str, float], ...]
    old_weight: float  # the item's strongest action weight in this session before the click (0: new)
    new_weight: float  # ... and after it
    purchase: bool  # first purchase-type action on this item in this session
    repeat: bool  # ... and the shopper had bought the item in an earlier session


@dataclass(slots=True)
class UserState:
    session_id: str | None = None
    last_ts: float | None = None
    sessions: int = 0  # sessions seen; the current one has index sessions - 1
    session: list[tuple[str, float]] = field(default_factory=list)  # latest last
    history: dict[str, list[float]] = field(default_factory=dict)  # [count, decayed score, ref session]

    # --- updates --------------------------------------------------------------------------------
    def observe(
        self, product_id: str, action: str, session_id: str, ts: float, config: RecommenderConfig
    ) -> Observation:
        """Record one click; return what changed."""
        if not product_id or not session_id:
            raise InvalidClick("product_id and session_id must not be empty")
        weight = config.action_weights.get(action)
        if weight is None:
            raise InvalidClick(f"unknown action {action!r}; known: {sorted(config.action_weights)}")
        if not math.isfinite(ts):
            raise InvalidClick(f"click time is not finite: {ts!r}")

        new_session = session_id != self.session_id
        if new_session:
            self.session_id = session_id
            self.sessions += 1
            self.session = []
        # Clicks may arrive slightly out of order (retries, several producers): keep the latest time.
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

        old_weight = 0.0
        before: list[tuple[str, float]] = []
        for item, w in self.session:
            if item == product_id:
                old_weight = w
            else:
                before.append((item, w))
        new_weight = max(old_weight, weight)
        # The clicked item moves to the end: position in the session means recency of interest.
        before.append((product_id, new_weight))
        self.session = before[-config.session_max_items :]

        purchase = repeat = False
        if action in PURCHASE_ACTIONS:
            purchase, repeat = self._buy(product_id, config)
        return Observation(
            product_id=product_id,
            new_session=new_session,
            session_before=tuple(before[:-1]),
            old_weight=old_weight,
            new_weight=new_weight,
            purchase=purchase,
            repeat=repeat,
        )

    def _buy(self, product_id: str, config: RecommenderConfig) -> tuple[bool, bool]:
        current = self.sessions - 1
        entry = self.history.get(product_id)
        if entry is not None and int(entry[2]) == current:
            return False, False  # already bought in this session: one count per session
        if entry is None:
            entry = [0, 0.0, current]
            repeat = False
        else:
            repeat = True
        count, score, ref = int(entry[0]), float(entry[1]), int(entry[2])
        self.history[product_id] = [count + 1, score * config.history_decay ** (current - ref) + 1.0, current]
        if len(self.history) > config.history_max_items:
            self._evict(config)
        return True, repeat

    def _evict(self, config: RecommenderConfig) -> None:
        # Drop the item with the lowest current decayed score; the item just bought scores >= 1 and
        # every other item's score decays, so the newest purchase is never the one evicted unless all
        # scores tie, in which case the oldest purchase goes.
        current = self.sessions - 1
        worst = min(
            self.history.items(),
            key=lambda kv: (kv[1][1] * config.history_decay ** (current - kv[1][2]), kv[1][2]),
        )
        del self.history[worst[0]]

    # --- reads ------------------------------------------------------------------------------------
    def session_items(self) -> list[str]:
        return [item for item, _ in self.session]

    def history_scores(self, config: RecommenderConfig) -> dict[str, float]:
        """Each history item's recency-weighted share of the past sessions that held it, in [0, 1].

        A purchase in the session before the current one counts `decay`, two sessions back `decay**2`,
        and so on; the sum is divided by what an item bought in every past session would have.
        """
        current = self.sessions - 1
        if current < 1:
            return {}
        d = config.history_decay
        norm = float(current) if d == 1.0 else d * (1.0 - d**current) / (1.0 - d)
        scores: dict[str, float] = {}
        for item, (_, score, ref) in self.history.items():
            age = current - int(ref)
            # Bought in the current session: its stored score holds this session's 1 plus the past.
            past = score * d**age if age >= 1 else score - 1.0
            if past > 0.0:
                scores[item] = past / norm
        return scores

    # --- serialisation ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "sid": self.session_id,
            "ts": self.last_ts,
            "n": self.sessions,
            "s": [[item, w] for item, w in self.session],
            "h": {item: [int(c), round(float(s), 6), int(r)] for item, (c, s, r) in self.history.items()},
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> UserState:
        if value is None:
            return cls()
        try:
            if value["v"] != STATE_VERSION:
                raise CorruptState(f"user state version {value['v']!r}, expected {STATE_VERSION}")
            return cls(
                session_id=None if value["sid"] is None else str(value["sid"]),
                last_ts=None if value["ts"] is None else float(value["ts"]),
                sessions=int(value["n"]),
                session=[(str(item), float(w)) for item, w in value["s"]],
                history={str(k): [int(c), float(s), int(r)] for k, (c, s, r) in value["h"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptState(f"user state does not decode: {type(exc).__name__}: {exc}") from None
