"""The search evaluation's scoring and rankers, on made-up embeddings (the figures come from
`python -m tooling.search_eval` on the held-out data)."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.taxonomy import LEAF_NAMES, leaf_department_indices
from tooling.search_eval import (
    Catalogue,
    Embedded,
    embedding_shape,
    evaluate_queries,
    precision_and_rr,
    score,
)


def test_precision_counts_missing_answers_as_wrong_and_rr_the_first_hit() -> None:
    relevant = {3, 5}.__contains__
    assert precision_and_rr([1, 3, 5, 7], relevant, k=4) == (0.5, 0.5)
    assert precision_and_rr([3], relevant, k=10) == (0.1, 1.0)
    assert precision_and_rr([1, 2], relevant, k=10) == (0.0, 0.0)
    assert precision_and_rr(list(range(20)), relevant, k=4) == (0.25, 0.25)


def test_score_averages_over_queries_with_the_department_too() -> None:
    departments = leaf_department_indices()
    shirt, tshirt, dress = (
        LEAF_NAMES.index("shirt"),
        LEAF_NAMES.index("tshirt_top"),
        LEAF_NAMES.index("dress"),
    )
    assert departments[shirt] == departments[tshirt] != departments[dress]
    catalogue_leaf = np.array([shirt, tshirt, dress, dress])
    answers = {0: [0, 1, 2], 1: [3, 2]}
    s = score(lambda q: answers[q], np.array([shirt, dress]), catalogue_leaf, departments, k=2)
    assert s.precision == pytest.approx((0.5 + 1.0) / 2)
    assert s.mrr == pytest.approx(1.0)
    assert s.department_precision == pytest.approx((1.0 + 1.0) / 2)
    assert s.queries == 2


def clustered(n_per_leaf: int, leaves: list[int], seed: int) -> tuple[Embedded, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(len(LEAF_NAMES), 32, dtype=np.float32)
    leaf = np.repeat(np.array(leaves), n_per_leaf)
    x = centres[leaf] + 0.05 * rng.standard_normal((len(leaf), 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    probs = np.full((len(leaf), len(LEAF_NAMES)), 0.01, np.float32)
    probs[np.arange(len(leaf)), leaf] = 0.8
    return Embedded(x, probs), leaf


def test_the_rankers_on_separable_embeddings_beat_random() -> None:
    leaves = [0, 3, 7, 15]
    catalogue_emb, catalogue_leaf = clustered(30, leaves, seed=0)
    queries, query_leaf = clustered(5, leaves, seed=1)
    catalogue = Catalogue(catalogue_emb, LEAF_NAMES, seed=0)
    result = evaluate_queries(catalogue, queries, query_leaf, catalogue_leaf)
    for method in (
        "embedding, the service's index",
        "embedding, exact search",
        "embedding within the predicted category",
        "baseline: predicted category, then most popular",
    ):
        assert result[method]["precision_at_10"] == 1.0, method
        assert result[method]["mrr_at_10"] == 1.0
    assert result["baseline: random"]["precision_at_10"] < 0.6
    assert result["_category_accuracy"] == 1.0
    shape = embedding_shape(catalogue_emb.embedding)
    assert shape["top1_cosine_mean"] > 0.9
    assert 3 <= shape["directions_for_90pct_variance"] <= shape["directions_for_99pct_variance"] <= 32
