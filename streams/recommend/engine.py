"""The recommender's two processing steps, and an in-process runner that wires them like the service.

The service splits the work by key, because clicks are keyed by user and neighbour rows by item:

    clickstream (key user_id) --> user_step(state, click) --> new user state (user table)
                                   |                 \\--> recommend(state, global view) --> recommendations
                                   v
            item updates (internal topic, key item) --> item_step(row, stats, update)
                                      --> the item's neighbour row and stats, and its partition's
                                          popularity board (global tables: one writer, every worker reads)

`LocalRecommender` runs exactly these steps on plain dicts in one process (the offline evaluator and
the unit tests use it). Like the service, it ranks a click before the click's own item updates reach
the global state: they travel through a topic there.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streams.recommend.config import RecommenderConfig
from streams.recommend.content import ContentIndex
from streams.recommend.cooccurrence import Row, apply_updates, decode_row, group_by_item, pair_updates
from streams.recommend.errors import CorruptState, InvalidClick
from streams.recommend.popularity import (
    BoardEntry,
    Stats,
    apply_item_event,
    decode_stats,
    merge_boards,
    update_board,
)
from streams.recommend.ranker import GlobalView, ScoredProduct, recommend
from streams.recommend.state import UserState


@dataclass(frozen=True, slots=True)
class Click:
    event_id: str
    user_id: str
    session_id: str
    product_id: str
    action: str
    ts: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """One message on the internal item-keyed topic: everything one click changes in one item's rows."""

    item: str
    pairs: tuple[tuple[str, float], ...]  # neighbour, weight to add
    weight: float  # popularity increment (the item's action weight delta in its session)
    purchase: bool
    repeat: bool
    ts: float

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "pairs": [[nb, w] for nb, w in self.pairs],
            "w": self.weight,
            "buy": self.purchase,
            "rep": self.repeat,
            "ts": self.ts,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ItemUpdate:
        try:
            return cls(
                item=str(value["item"]),
                pairs=tuple((str(nb), float(w)) for nb, w in value["pairs"]),
                weight=float(value["w"]),
                purchase=bool(value["buy"]),
                repeat=bool(value["rep"]),
                ts=float(value["ts"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptState(f"item update does not decode: {type(exc).__name__}: {exc}") from None


def user_step(state: UserState, click: Click, config: RecommenderConfig) -> list[ItemUpdate]:
    """Record the click in the shopper's state (in place); return the item updates it causes."""
    if not click.user_id:
        raise InvalidClick("user_id must not be empty")
    obs = state.observe(click.product_id, click.action, click.session_id, click.ts, config)
    grouped = group_by_item(
        pair_updates(
            obs.session_before,
            obs.product_id,
            obs.old_weight,
            obs.new_weight,
            config.pair_window,
            config.pair_distance_decay,
        )
    )
    updates: list[ItemUpdate] = []
    own_pairs = tuple(grouped.pop(obs.product_id, ()))
    delta = obs.new_weight - obs.old_weight
    if own_pairs or delta > 0 or obs.purchase:
        updates.append(ItemUpdate(obs.product_id, own_pairs, delta, obs.purchase, obs.repeat, click.ts))
    for item, pairs in grouped.items():
        updates.append(ItemUpdate(item, tuple(pairs), 0.0, False, False, click.ts))
    return updates


def item_step(
    row: Row | None, stats: Stats | None, update: ItemUpdate, config: RecommenderConfig
) -> tuple[Row, Stats]:
    """Apply one item update to the item's neighbour row and stats (both modified in place)."""
    if update.pairs:
        row = apply_updates(row, update.pairs, config.neighbour_capacity)
    stats = apply_item_event(
        stats, update.weight, update.purchase, update.repeat, update.ts, config.popularity_half_life_s
    )
    return row or {}, stats


def partition_of(item: str, partitions: int) -> int:
    """A stable item -> partition map for the in-process runner (Kafka uses murmur2 on the key)."""
    return zlib.crc32(item.encode()) % partitions


class LocalRecommender:
    """Every table of the service as a dict, and the steps applied in the service's order."""

    def __init__(self, config: RecommenderConfig, partitions: int = 4) -> None:
        self.config = config
        self.partitions = partitions
        self.users: dict[str, UserState] = {}  # table, keyed by user
        self.neighbours: dict[str, Row] = {}  # global table, keyed by item (space-saving rows)
        self.stats: dict[str, Stats] = {}  # global table
        self.boards: dict[int, list[BoardEntry]] = {}  # global table, keyed by item partition
        self.embeddings: dict[str, list[float]] = {}  # global table, from product-categories
        self.content = ContentIndex()  # built from the embeddings
        self._popular: list[tuple[str, float]] | None = None
        self._now = 0.0

    def observe(self, click: Click) -> tuple[UserState, list[ItemUpdate]]:
        state = self.users.get(click.user_id) or UserState()
        updates = user_step(state, click, self.config)  # raises before changing anything
        self.users[click.user_id] = state
        self._now = max(self._now, click.ts)
        return state, updates

    def apply(self, updates: Iterable[ItemUpdate]) -> None:
        for u in updates:
            row, stats = item_step(self.neighbours.get(u.item), self.stats.get(u.item), u, self.config)
            if row:
                self.neighbours[u.item] = row
            self.stats[u.item] = stats
            if u.weight > 0:
                p = partition_of(u.item, self.partitions)
                self.boards[p] = update_board(
                    self.boards.get(p),
                    u.item,
                    stats,
                    self.config.popular_board_size,
                    self.config.popularity_half_life_s,
                )
                self._popular = None

    def view(self, now: float | None = None) -> GlobalView:
        now = self._now if now is None else now
        if self._popular is None or self.config.popularity_half_life_s is not None:
            self._popular = merge_boards(
                self.boards.values(), now, self.config.popular_board_size, self.config.popularity_half_life_s
            )
        return GlobalView(self.neighbours, self.stats, self._popular, self.content, now)

    def recommend(self, user_id: str, now: float | None = None) -> list[ScoredProduct]:
        state = self.users.get(user_id) or UserState()
        return recommend(state, self.view(now), self.config)

    def on_click(self, click: Click, rank: bool = True) -> list[ScoredProduct] | None:
        """The whole path of one click: state, recommendation, then the global updates."""
        state, updates = self.observe(click)
        recs = recommend(state, self.view(click.ts), self.config) if rank else None
        self.apply(updates)
        return recs

    def on_product(self, product_id: str, embedding: Any) -> None:
        self.content.upsert(product_id, embedding)  # raises InvalidEmbedding before storing
        vector = self.content.vector(product_id)
        assert vector is not None
        self.embeddings[product_id] = [round(float(x), 7) for x in vector]

    # --- the tables as their changelogs hold them ---------------------------------------------------
    def tables(self) -> dict[str, dict[str, Any]]:
        """Every table as JSON-able key -> value, exactly what its changelog would replay."""
        return {
            "users": {k: v.to_json() for k, v in self.users.items()},
            "neighbours": self.neighbours,
            "item_stats": self.stats,
            "popular_boards": {str(k): v for k, v in self.boards.items()},
            "embeddings": self.embeddings,
        }

    @classmethod
    def from_tables(
        cls, config: RecommenderConfig, tables: Mapping[str, Mapping[str, Any]], partitions: int = 4
    ) -> LocalRecommender:
        """A recommender rebuilt from table values only (what a restarted worker recovers)."""
        rec = cls(config, partitions)
        rec.users = {k: UserState.from_json(v) for k, v in tables["users"].items()}
        rec.neighbours = {k: decode_row(v) for k, v in tables["neighbours"].items()}
        rec.stats = {k: decode_stats(v) for k, v in tables["item_stats"].items()}
        rec.boards = {int(k): [list(e) for e in v] for k, v in tables["popular_boards"].items()}
        for product_id, vector in tables["embeddings"].items():
            rec.on_product(product_id, vector)
        rec._now = max((s.last_ts or 0.0 for s in rec.users.values()), default=0.0)
        return rec

    def table_bytes(self) -> dict[str, dict[str, int]]:
        """Serialised size (orjson, keys + values) and entries of each table."""
        return {
            name: {
                "entries": len(table),
                "bytes": sum(len(k.encode()) + len(orjson.dumps(v)) for k, v in table.items()),
            }
            for name, table in self.tables().items()
        }
