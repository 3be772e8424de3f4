"""The content index as a search engine: approximate neighbours against exact ones, categories, growth,
removal and replacement (the recommender's own use is in test_recommend_content.py)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from benchmarks.ann import DataShape, clustered_unit_vectors, exact_top_k, recall_at_k
from streams.recommend.content import INITIAL_CAPACITY, ContentIndex, listing_category
from streams.recommend.errors import CorruptState, InvalidEmbedding


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_search_agrees_with_exact_search_past_the_first_growth() -> None:
    base = clustered_unit_vectors(3000, DataShape(dim=32, groups=5, clusters=60), seed=1)
    queries = clustered_unit_vectors(100, DataShape(dim=32, groups=5, clusters=60), seed=1, draw_seed=9)
    index = ContentIndex()
    for i, v in enumerate(base):
        index.upsert(f"p{i}", v)
    assert len(index) == 3000 > INITIAL_CAPACITY
    found = [[int(p[1:]) for p, _ in index.search(q, 10)] for q in queries]
    assert recall_at_k(found, exact_top_k(base, queries, 10), 10) >= 0.95
    # Scores are the cosines, best first.
    hits = index.search(queries[0], 5)
    for product_id, score in hits:
        assert score == pytest.approx(float(base[int(product_id[1:])] @ queries[0]), abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_small_indexes_answer_exactly_and_never_more_than_they_hold() -> None:
    rows = unit_rows(5, 8, seed=2)
    index = ContentIndex()
    for i, v in enumerate(rows):
        index.upsert(f"p{i}", v)
    sims = rows @ rows[0]
    assert [p for p, _ in index.search(rows[0], 10)] == [f"p{i}" for i in np.argsort(-sims)]
    assert [p for p, _ in index.search(rows[0], 2, exclude=["p0"])] == [
        f"p{i}" for i in np.argsort(-sims)[1:3]
    ]
    assert ContentIndex().search(rows[0], 3) == []
    assert index.search(rows[0], 0) == []


def test_a_category_filter_returns_only_that_category_even_a_rare_one() -> None:
    rows = unit_rows(1200, 16, seed=3)
    index = ContentIndex()
    for i, v in enumerate(rows):
        index.upsert(f"p{i}", v, category="bag" if i % 400 == 7 else ("dress" if i % 2 else "coat"))
    dresses = index.search(rows[1], 20, category="dress")
    assert len(dresses) == 20 and all(index.category(p) == "dress" for p, _ in dresses)
    expected = sorted(range(1, 1200, 2), key=lambda i: -float(rows[i] @ rows[1]))[:20]
    assert len({int(p[1:]) for p, _ in dresses} & set(expected)) >= 18
    # Three bags among 1,200: the filter still finds all of them, best first.
    bags = index.search(rows[0], 10, category="bag")
    assert sorted(p for p, _ in bags) == ["p407", "p7", "p807"]
    assert index.search(rows[0], 5, category="sandal") == []


def test_categories_of_products_indexed_without_one_come_from_the_source() -> None:
    rows = unit_rows(20, 8, seed=4)
    index = ContentIndex()
    source = {f"p{i}": ("shirt" if i < 10 else "skirt") for i in range(20)}
    for i, v in enumerate(rows):
        index.upsert(f"p{i}", v)  # as the sync of other workers' embeddings does: no category
    assert index.category("p3") is None and index.search(rows[0], 5, category="shirt") == []
    index.category_source = source
    assert index.category("p3") == "shirt"
    found = index.search(rows[0], 30, category="skirt")
    assert sorted(p for p, _ in found) == sorted(f"p{i}" for i in range(10, 20))

    class Corrupt(dict[str, object]):
        def get(self, key: str, default: object = None) -> object:
            raise CorruptState("not [version, value]")

    other = ContentIndex()
    other.upsert("x", rows[0])
    other.category_source = Corrupt()
    assert other.category("x") is None


def test_a_product_listed_again_replaces_its_vector_and_keeps_its_category() -> None:
    rows = unit_rows(50, 8, seed=5)
    index = ContentIndex()
    for i, v in enumerate(rows):
        index.upsert(f"p{i}", v, category="a")
    index.upsert("p0", rows[49])  # listed again, looking like p49 now
    assert index.vector("p0") == pytest.approx(rows[49], abs=1e-6)
    assert index.category("p0") == "a" and len(index) == 50
    assert {p for p, _ in index.search(rows[49], 2)} == {"p0", "p49"}
    index.upsert("p0", rows[49], category="b")
    assert index.category("p0") == "b"
    index.set_category("p1", "b")
    assert {p for p, _ in index.search(rows[1], 5, category="b")} == {"p0", "p1"}
    with pytest.raises(InvalidEmbedding):
        index.upsert("p2", [1.0, 0.0])  # wrong size: nothing changes
    assert index.vector("p2") == pytest.approx(rows[2], abs=1e-6)


def test_removed_products_are_never_returned_and_their_slots_are_reused() -> None:
    rows = unit_rows(INITIAL_CAPACITY, 8, seed=6)
    index = ContentIndex()
    for i, v in enumerate(rows):
        index.upsert(f"p{i}", v, category="c")
    slots = index.slots
    for i in range(0, 100):
        index.remove(f"p{i}")
    index.remove("never-there")
    assert len(index) == INITIAL_CAPACITY - 100 and "p5" not in index and index.vector("p5") is None
    found = {p for p, _ in index.search(rows[5], 50)}
    assert not found & {f"p{i}" for i in range(100)}
    assert not {p for p, _ in index.search(rows[5], 50, category="c")} & {f"p{i}" for i in range(100)}
    for i in range(100):  # new products take the removed ones' slots: the graph does not grow
        index.upsert(f"new{i}", rows[i], category="c")
    assert index.slots == slots and len(index) == INITIAL_CAPACITY
    assert index.search(rows[5], 1)[0][0] == "new5"
    index.upsert("p5", rows[5])  # a removed product listed again comes back
    assert {p for p, _ in index.search(rows[5], 2)} == {"p5", "new5"}


def test_the_category_of_a_product_categories_record() -> None:
    record = {"product_id": "p", "category": {"label": "dress", "score": 0.9}, "embedding": [1.0]}
    assert listing_category(orjson.dumps(record)) == "dress"
    assert listing_category(orjson.dumps({"product_id": "p"})) is None
    assert listing_category(orjson.dumps({"category": {"label": ""}})) is None
    assert listing_category(b"not json") is None
    assert listing_category(b"[1, 2]") is None
