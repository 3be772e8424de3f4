"""The recommender's parameters, with the values the offline evaluation chose.

Plain frozen dataclasses: the service builds one from its settings in `main()` and passes it down; the
offline evaluator builds variants of it for tuning. docs/recommendations.md explains every value and
how it was chosen (on the validation split, never on the test split).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

# Click actions (events.ClickAction) and how much one counts. A view is a weaker signal than putting
# the item in the cart; a purchase confirms a cart item and adds nothing new to a session that
# already holds the item as add_to_cart (the strongest weight per item and session counts once).
DEFAULT_ACTION_WEIGHTS: Final = MappingProxyType({"view": 0.25, "add_to_cart": 1.0, "purchase": 1.0})
# The actions that make an item part of the shopper's purchase history.
PURCHASE_ACTIONS: Final = frozenset({"add_to_cart", "purchase"})

SOURCES: Final = ("history", "cooccurrence", "content", "popular")


@dataclass(frozen=True, slots=True)
class Weights:
    """Linear blend of the candidate features (each feature lies in [0, 1]).

    score = history * h + history_repeat * h * r + cooccurrence * c + content * e + popularity * p

    h: recency-weighted share of the shopper's past sessions that held the item; r: how often the item
    is bought again by those who bought it (smoothed, learned online); c: the item's probability of being
    in a basket that holds the session's items (weighted to the latest); e: the best cosine similarity of
    its product embedding to the latest session items; p: log-popularity relative to the most popular item.
    """

    # Chosen on the validation split (`evaluate_offline --tune`), except `content`: the Instacart sample
    # has no product embeddings, so its weight is a prior (docs/recommendations.md).
    history: float = 1.0
    history_repeat: float = 3.0
    cooccurrence: float = 8.0
    content: float = 1.0
    popularity: float = 0.1

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.history, self.history_repeat, self.cooccurrence, self.content, self.popularity)


@dataclass(frozen=True, slots=True)
class RecommenderConfig:
    k: int = 10
    weights: Weights = field(default_factory=Weights)
    action_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_ACTION_WEIGHTS)

    # --- per-user state (bounded) ---
    session_max_items: int = 50  # the current session's latest items (older ones drop out)
    history_max_items: int = 200  # purchase history: the items with the highest decayed score stay
    history_decay: float = 0.8  # weight of a purchase, per later session of the same shopper

    # --- item-item co-occurrence (bounded) ---
    pair_window: int = 50  # a new item pairs with at most this many latest session items
    pair_distance_decay: float = 0.6  # weight of a pair, per item between the two in the session
    neighbour_capacity: int = 50  # neighbours kept per item (space-saving counters)

    # --- popularity ---
    popularity_half_life_s: float | None = None  # None: plain counts; else exponential time decay
    popular_board_size: int = 100  # most popular items kept per item partition

    # --- candidates and scoring ---
    score_session_items: int = 10  # latest session items whose neighbours are candidates
    session_position_decay: float = 0.5  # weight of a session item, per later item in the session
    content_query_items: int = 3  # latest session items whose embeddings query the content index
    content_candidates: int = 20  # nearest products per query
    popular_candidates: int = 50  # most popular items always in the candidate set (the fallback)
    repeat_prior_buys: float = 2.0  # repeat rate = (repeats + prior * 0.5) / (buys + prior)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        for name in (
            "session_max_items",
            "history_max_items",
            "pair_window",
            "neighbour_capacity",
            "popular_board_size",
            "score_session_items",
            "content_query_items",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("history_decay", "session_position_decay", "pair_distance_decay"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1]")
        if self.popularity_half_life_s is not None and self.popularity_half_life_s <= 0:
            raise ValueError("popularity_half_life_s must be positive (or None)")
        unknown = set(PURCHASE_ACTIONS) - set(self.action_weights)
        if unknown:
            raise ValueError(f"action_weights lacks {sorted(unknown)}")
        if any(w <= 0 for w in self.action_weights.values()):
            raise ValueError("action weights must be positive")
