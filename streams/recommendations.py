"""The recommendation call of the clickstream agent, behind one interface.

`Recommender` is what the agent calls for every click. `RecentPopular` is the simple first version:
each shopper's recent items live in a Faust table (keyed by user_id, like the clickstream, so a user's
state sits on the worker that owns their partition and is restored from its changelog after a crash);
item popularity is counted by each worker over the clicks it sees. It recommends the most popular items
the user has not touched recently. The real recommender (`streams/recommend/`) replaces it by providing
another `Recommender` to `build_recommender`.
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping
from typing import Any, Protocol

from streams.events import ClickEvent, ModelRef, ScoredItem

ACTION_WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


class Recommender(Protocol):
    model: ModelRef

    async def recommend(self, click: ClickEvent, k: int) -> list[ScoredItem]:
        """Record the click and return up to `k` items for its user, best first."""
        ...


class RecentPopular:
    model = ModelRef(name="recent-popular", version="1")

    def __init__(self, recent: MutableMapping[str, Any], recent_n: int) -> None:
        self.recent = recent  # user_id -> list of product ids, most recent last (a Faust table)
        self.recent_n = recent_n
        self.popularity: dict[str, float] = {}

    async def recommend(self, click: ClickEvent, k: int) -> list[ScoredItem]:
        seen = [p for p in (self.recent.get(click.user_id) or []) if p != click.product_id]
        seen.append(click.product_id)
        # Assigning (not mutating in place) is what writes the table's changelog.
        self.recent[click.user_id] = seen[-self.recent_n :]
        self.popularity[click.product_id] = (
            self.popularity.get(click.product_id, 0.0) + ACTION_WEIGHTS[click.action]
        )

        exclude = set(seen)
        top = heapq.nlargest(k + len(exclude), self.popularity.items(), key=lambda item: item[1])
        if not top:
            return []
        best = top[0][1]
        items = [ScoredItem(product_id=p, score=round(c / best, 6)) for p, c in top if p not in exclude]
        return items[:k]
