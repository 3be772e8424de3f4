"""Candidates and ranking: the four sources blended with documented weights.

Candidates come from the shopper's purchase history, the neighbours of the latest session items
(co-occurrence), the products whose embeddings are closest to the latest session items (content), and
the most popular items (the fallback that is always there). Every candidate gets the five features of
`Weights`, each in [0, 1]; the score is their weighted sum and the item's `source` is the source whose
weighted features contribute most to it. Items already in the current session are never recommended.

`candidate_features` and `blend` are separate so the evaluator can extract features once and try many
weight vectors (tuning on the validation split) without replaying the stream again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.recommend.config import SOURCES, RecommenderConfig, Weights
from streams.recommend.content import ContentIndex
from streams.recommend.cooccurrence import neighbour_counts
from streams.recommend.popularity import popularity, repeat_rate
from streams.recommend.state import UserState

# Feature columns and the source each belongs to.
FEATURES = ("history", "history_repeat", "cooccurrence", "content", "popularity")
_SOURCE_OF_FEATURE = np.array([0, 0, 1, 2, 3])  # index into SOURCES
N_FEATURES = len(FEATURES)


@dataclass(frozen=True, slots=True)
class ScoredProduct:
    product_id: str
    score: float
    source: str  # one of SOURCES


@dataclass(frozen=True, slots=True)
class GlobalView:
    """The read side of the global state; in the service each field is backed by a global table.

    neighbours: item -> neighbour row {neighbour: [count, error]} (cooccurrence.apply_updates)
    item_stats: item -> stats row (popularity.apply_item_event)
    popular: the most popular items, best first, with their popularity at `now` (popularity.merge_boards)
    content: the product embeddings, or None where there are none
    """

    neighbours: Mapping[str, Any]
    item_stats: Mapping[str, Any]
    popular: Sequence[tuple[str, float]]
    content: ContentIndex | None
    now: float


@dataclass(frozen=True, slots=True)
class Candidates:
    ids: list[str]
    features: npt.NDArray[np.float64]  # (len(ids), N_FEATURES)


def candidate_features(user: UserState, view: GlobalView, config: RecommenderConfig) -> Candidates:
    session = user.session
    exclude = {item for item, _ in session}
    half_life = config.popularity_half_life_s

    history = user.history_scores(config)

    # Co-occurrence: a weighted average, over the latest session items, of P(candidate | item), the
    # share of the item's sessions that also held the candidate. The latest item weighs most.
    cooc: dict[str, float] = {}
    total = 0.0
    position_weight = 1.0
    for item, action_weight in reversed(session[-config.score_session_items :]):
        w = position_weight * action_weight
        position_weight *= config.session_position_decay
        total += w
        stats = view.item_stats.get(item)
        base = float(stats[0]) if stats else 0.0
        if base <= 0.0:
            continue
        for neighbour, count in neighbour_counts(view.neighbours.get(item)):
            cooc[neighbour] = cooc.get(neighbour, 0.0) + w * min(1.0, count / base)
    if total > 0.0:
        cooc = {k: v / total for k, v in cooc.items()}

    content_query = None
    content_top: list[tuple[str, float]] = []
    if view.content is not None and len(view.content) > 0:
        recent = [item for item, _ in session[-config.content_query_items :]]
        content_query = view.content.query(recent)
        if content_query is not None:
            content_top = content_query.top(config.content_candidates, exclude)

    popular = list(view.popular[: config.popular_candidates])
    log_max = math.log1p(popular[0][1]) if popular and popular[0][1] > 0 else 0.0

    ids = [
        c
        for c in dict.fromkeys([*history, *cooc, *(p for p, _ in content_top), *(p for p, _ in popular)])
        if c not in exclude
    ]
    features = np.zeros((len(ids), N_FEATURES), dtype=np.float64)
    for i, c in enumerate(ids):
        stats = view.item_stats.get(c)
        h = history.get(c, 0.0)
        features[i, 0] = h
        if h > 0.0:
            features[i, 1] = h * repeat_rate(stats, config.repeat_prior_buys)
        features[i, 2] = cooc.get(c, 0.0)
        if content_query is not None:
            features[i, 3] = content_query.score(c)
        if log_max > 0.0 and stats:
            features[i, 4] = min(1.0, math.log1p(popularity(stats, view.now, half_life)) / log_max)
    return Candidates(ids, features)


def blend(candidates: Candidates, weights: Weights, k: int) -> list[ScoredProduct]:
    """The top `k` candidates by weighted score, each named by its strongest source."""
    if not candidates.ids:
        return []
    w = np.asarray(weights.as_tuple(), dtype=np.float64)
    contributions = candidates.features * w
    scores = contributions.sum(axis=1)
    n = len(candidates.ids)
    # Everything that scores at least the k-th best, ordered by score and then product id, so that
    # ties (at the cut too) always resolve the same way.
    pool = np.nonzero(scores >= np.partition(scores, n - k)[n - k])[0] if k < n else np.arange(n)
    top = sorted(pool.tolist(), key=lambda i: (-scores[i], candidates.ids[i]))[:k]
    by_source = np.zeros((n, len(SOURCES)))
    np.add.at(by_source.T, _SOURCE_OF_FEATURE, contributions.T)
    out = []
    for i in top:
        source = SOURCES[int(np.argmax(by_source[i]))] if scores[i] > 0 else "popular"
        out.append(ScoredProduct(candidates.ids[i], round(float(scores[i]), 6), source))
    return out


def recommend(user: UserState, view: GlobalView, config: RecommenderConfig) -> list[ScoredProduct]:
    return blend(candidate_features(user, view, config), config.weights, config.k)
