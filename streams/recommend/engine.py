"""The recommender's user step, and the item updates it sends.

The service splits the work by key, because clicks are keyed by user and neighbour rows by item:

    clickstream (key user_id) --> user_step(state, click) --> new user state (user table)
                                   |                 \\--> recommend(state, global view) --> recommendations
                                   v
            item updates (internal topic, key item, partition `partition_of`)
                --> ItemUpdateApplier (streams.recommend.service): the item's neighbour row and stats, and
                    its partition's popularity board (global tables: one writer, every worker reads)

`streams.recommend.wiring` wires them over the tables, for the worker and in one process.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.recommend.config import RecommenderConfig
from streams.recommend.cooccurrence import group_by_item, pair_updates
from streams.recommend.errors import CorruptState, InvalidClick
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


def partition_of(item: str, partitions: int) -> int:
    """The partition of the internal topic an item's updates go to: a stable map, so each item's rows
    keep one writer (not Kafka's murmur2: the sender picks the partition)."""
    return zlib.crc32(item.encode()) % partitions
