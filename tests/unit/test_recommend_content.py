"""Content similarity over product embeddings, and the cold start it gives new products."""

from __future__ import annotations

import numpy as np
import pytest

from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.content import ContentIndex, check_embedding
from streams.recommend.engine import Click
from streams.recommend.errors import InvalidEmbedding
from tooling.recommend_eval.local import LocalRecommender


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    out: list[float] = (v / np.linalg.norm(v)).tolist()
    return out


def test_nearest_ranks_by_cosine_and_excludes_the_queries() -> None:
    index = ContentIndex()
    index.upsert("shirt", unit(1, 0, 0))
    index.upsert("blouse", unit(0.9, 0.1, 0))
    index.upsert("boots", unit(0, 1, 0))
    index.upsert("socks", unit(0.2, 0.9, 0.1))
    assert [p for p, _ in index.nearest(["shirt"], 2)] == ["blouse", "socks"]
    assert [p for p, _ in index.nearest(["shirt", "boots"], 2, exclude=["socks"])] == ["blouse"]
    assert index.nearest(["unknown"], 3) == []


def test_upsert_replaces_and_remove_forgets() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ContentIndex()
    for i, v in enumerate(vectors):  # past the first growth of the matrix
        index.upsert(f"p{i}", v.tolist())
    index.upsert("p0", unit(*([0.0] * 15 + [1.0])))
    assert index.vector("p0") == pytest.approx(np.eye(16)[15])
    index.remove("p5")  # the last row moves into the hole
    assert "p5" not in index and len(index) == 39
    assert index.vector("p39") == pytest.approx(vectors[39].astype(np.float32), abs=1e-6)
    index.upsert("twin", vectors[39].tolist())
    assert index.nearest(["twin"], 1)[0][0] == "p39"


@pytest.mark.parametrize(
    ("values", "dim", "message"),
    [
        ([0.6, 0.8, 0.0], 2, "dimensions"),
        ([float("nan"), 1.0], None, "NaN"),
        ([3.0, 4.0], None, "normalised"),
        ([0.0, 0.0], None, "normalised"),
        ([], None, "non-empty"),
        ("abc", None, "numbers"),
    ],
)
def test_bad_embeddings_are_rejected_with_the_reason(values: object, dim: int | None, message: str) -> None:
    with pytest.raises(InvalidEmbedding, match=message):
        check_embedding(values, dim)  # type: ignore[arg-type]


def test_rounding_noise_is_renormalised() -> None:
    v = check_embedding([0.6001, 0.8], None)
    assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-6)


def test_a_product_nobody_clicked_is_recommended_from_its_embedding() -> None:
    """Cold start: a new product with an embedding and no clicks reaches the top through content."""
    weights = Weights(history=1.0, history_repeat=1.0, cooccurrence=0.5, content=0.3, popularity=0.05)
    rec = LocalRecommender(RecommenderConfig(k=5, weights=weights))
    # Some history so that popularity and co-occurrence have something to say.
    for i in range(20):
        rec.on_click(Click(f"e{i}", f"u{i % 4}", f"s{i // 2}", f"grocery-{i % 6}", "add_to_cart", float(i)))
    rec.on_product("red-dress", unit(1, 0.1, 0, 0))
    rec.on_product("new-red-dress", unit(1, 0.12, 0.02, 0))  # uploaded, never clicked
    rec.on_product("garden-hose", unit(0, 0, 0, 1))
    recs = rec.on_click(Click("x", "shopper", "s-new", "red-dress", "view", 100.0))
    assert recs is not None
    by_id = {r.product_id: r for r in recs}
    assert "new-red-dress" in by_id
    assert by_id["new-red-dress"].source == "content"
    assert recs[0].product_id == "new-red-dress"
    assert "garden-hose" not in by_id or by_id["garden-hose"].source != "content"


def test_with_the_default_weights_a_close_new_product_reaches_the_top_k() -> None:
    rec = LocalRecommender(RecommenderConfig())
    t = 0.0
    for n in range(30):  # a busy shop: dresses bought with belts and bags
        for p in ("dress", "belt", "bag", f"other-{n % 9}"):
            t += 1
            rec.on_click(Click(f"{n}-{p}", f"u{n}", f"s{n}", p, "add_to_cart", t))
    rec.on_product("dress", unit(1, 0.2, 0))
    rec.on_product("new-dress", unit(1, 0.25, 0.05))  # just uploaded: no clicks, no pairs
    recs = rec.on_click(Click("x", "newcomer", "s-x", "dress", "view", t + 1))
    assert recs is not None
    top = [r.product_id for r in recs]
    assert "new-dress" in top and {"belt", "bag"} <= set(top[:3])
    assert next(r.source for r in recs if r.product_id == "new-dress") == "content"
