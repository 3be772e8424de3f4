"""The recommender behind the service's `Recommender` interface, over tables (no Faust import here).

The Faust app creates the tables and topics and hands them in as plain mappings and a send function;
the agents then only call these three entry points:

- `BlendedRecommender.recommend(click, k)`: the clickstream agent, once per click (user-keyed partition);
- `ItemUpdateApplier.apply(value, partition)`: the agent on the internal item-keyed topic;
- `EmbeddingSink.put(product_id, embedding)`: the agent on `product-categories`.

Tables (docs/recommendations.md, "State and partitioning"):

    users        Table        user_id -> UserState.to_json()     co-partitioned with clickstream
    neighbours   GlobalTable  item    -> {neighbour: [count, error]}      written by ItemUpdateApplier only
    item_stats   GlobalTable  item    -> [weight, decayed, ref_ts, buys, repeats]           "
    boards       GlobalTable  "p<partition>" -> most popular items of that item partition   "
    embeddings   GlobalTable  product_id -> unit vector                      written by EmbeddingSink only
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from streams.events import ClickEvent, ModelRef, ScoredItem
from streams.recommend.config import RecommenderConfig
from streams.recommend.content import ContentIndex
from streams.recommend.cooccurrence import decode_row
from streams.recommend.engine import Click, ItemUpdate, item_step, user_step
from streams.recommend.popularity import decode_stats, merge_boards, update_board
from streams.recommend.ranker import GlobalView, ScoredProduct, recommend
from streams.recommend.state import UserState

MODEL = ModelRef(name="blended-recommender", version="1")

SendUpdates = Callable[[Sequence[ItemUpdate]], Awaitable[None]]


class PopularCache:
    """The merged most-popular list, recomputed at most every `ttl_s` seconds (boards change often)."""

    def __init__(self, boards: Mapping[str, Any], config: RecommenderConfig, ttl_s: float = 1.0) -> None:
        self.boards = boards
        self.config = config
        self.ttl_s = ttl_s
        self._at = -float("inf")
        self._items: list[tuple[str, float]] = []

    def get(self, now: float) -> list[tuple[str, float]]:
        tick = time.monotonic()
        if tick - self._at >= self.ttl_s:
            self._items = merge_boards(
                self.boards.values(),
                now,
                self.config.popular_board_size,
                self.config.popularity_half_life_s,
            )
            self._at = tick
        return self._items


class BlendedRecommender:
    """streams.recommendations.Recommender: record the click, answer with the blended top k."""

    model = MODEL

    def __init__(
        self,
        config: RecommenderConfig,
        users: MutableMapping[str, Any],
        neighbours: Mapping[str, Any],
        item_stats: Mapping[str, Any],
        boards: Mapping[str, Any],
        content: ContentIndex,
        send_updates: SendUpdates,
    ) -> None:
        self.config = config
        self.users = users
        self.neighbours = neighbours
        self.item_stats = item_stats
        self.content = content
        self.popular = PopularCache(boards, config)
        self.send_updates = send_updates

    async def recommend(self, click: ClickEvent, k: int) -> list[ScoredItem]:
        c = Click(
            click.event_id,
            click.user_id,
            click.session_id,
            click.product_id,
            click.action,
            click.ts.timestamp(),
        )
        state = UserState.from_json(self.users.get(c.user_id))
        updates = user_step(state, c, self.config)
        # Assigning (not mutating in place) is what writes the table's changelog.
        self.users[c.user_id] = state.to_json()
        config = self.config if k == self.config.k else dataclasses.replace(self.config, k=k)
        view = GlobalView(self.neighbours, self.item_stats, self.popular.get(c.ts), self.content, c.ts)
        recs = recommend(state, view, config)
        # The global rows change after this click is answered, through the item-keyed topic.
        await self.send_updates(updates)
        return [scored_item(r) for r in recs]


def scored_item(r: ScoredProduct) -> ScoredItem:
    # The event names each item's source once the schema has the field (docs/recommendations.md).
    if "source" in ScoredItem.model_fields:
        return ScoredItem.model_validate({"product_id": r.product_id, "score": r.score, "source": r.source})
    return ScoredItem(product_id=r.product_id, score=r.score)


class ItemUpdateApplier:
    """The item-keyed agent's work: one writer per item row, stats row and partition board."""

    def __init__(
        self,
        config: RecommenderConfig,
        neighbours: MutableMapping[str, Any],
        item_stats: MutableMapping[str, Any],
        boards: MutableMapping[str, Any],
    ) -> None:
        self.config = config
        self.neighbours = neighbours
        self.item_stats = item_stats
        self.boards = boards

    def apply(self, value: Mapping[str, Any], partition: int) -> None:
        update = ItemUpdate.from_json(value)
        row, stats = item_step(
            decode_row(self.neighbours.get(update.item)),
            decode_stats(self.item_stats.get(update.item)),
            update,
            self.config,
        )
        if update.pairs:
            self.neighbours[update.item] = row
        self.item_stats[update.item] = stats
        if update.weight > 0:
            key = f"p{partition}"
            board = self.boards.get(key)
            new = update_board(
                board, update.item, stats, self.config.popular_board_size, self.config.popularity_half_life_s
            )
            if new is not board:
                self.boards[key] = new


class EmbeddingSink:
    """The `product-categories` agent's work: keep every product's embedding for content similarity."""

    def __init__(self, embeddings: MutableMapping[str, Any], content: ContentIndex) -> None:
        self.embeddings = embeddings
        self.content = content

    def put(self, product_id: str, embedding: Sequence[float]) -> None:
        self.content.upsert(product_id, embedding)  # InvalidEmbedding before anything is stored
        vector = self.content.vector(product_id)
        assert vector is not None
        self.embeddings[product_id] = [round(float(x), 7) for x in vector]

    def sync(self) -> int:
        """Index the embeddings that other workers wrote (a global table fills from its changelog).

        Run on a timer. It adds products the index lacks; a re-uploaded product whose new embedding
        came from another worker is picked up when the index is rebuilt (on restart).
        """
        added = 0
        for product_id, embedding in self.embeddings.items():
            if product_id not in self.content:
                self.content.upsert(product_id, embedding)
                added += 1
        return added
