"""Content similarity over the product embeddings published on `product-categories`.

The upload enrichment publishes an L2-normalised `embedding` per product; every worker keeps all of them
(a global table in the service) and this index answers "which products look like these?" by brute-force
cosine (one matrix-vector product). A product that nobody has clicked yet is found here as soon as its
upload has been enriched: the cold-start path.

Brute force costs N x D multiply-adds per query: 14k products x 384 dims is about 5 M (well under a
millisecond with BLAS); at 1 M products it is 384 M per query, tens of milliseconds, too slow for a
per-click answer. There the same interface would sit on an approximate index (HNSW, e.g. hnswlib or
FAISS IVF-PQ), or on precomputed top-k content neighbours per product refreshed as uploads arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.recommend.errors import InvalidEmbedding

# An embedding whose norm is this far from 1 is renormalised (float rounding on the way through JSON);
# one further off than NORM_TOLERANCE breaks the contract and is rejected.
NORM_TOLERANCE = 0.05

FloatArray = npt.NDArray[np.float32]


def check_embedding(values: Sequence[float] | npt.NDArray[np.floating[Any]], dim: int | None) -> FloatArray:
    """The embedding as a float32 unit vector, or InvalidEmbedding saying what is wrong with it."""
    try:
        vec = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidEmbedding(f"embedding is not a list of numbers: {exc}") from None
    if vec.ndim != 1 or vec.size == 0:
        raise InvalidEmbedding(f"embedding must be a non-empty vector, got shape {vec.shape}")
    if dim is not None and vec.size != dim:
        raise InvalidEmbedding(f"embedding has {vec.size} dimensions, the index holds {dim}")
    if not np.all(np.isfinite(vec)):
        raise InvalidEmbedding("embedding holds NaN or infinite values")
    norm = float(np.linalg.norm(vec))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise InvalidEmbedding(f"embedding is not L2-normalised (norm {norm:.4f})")
    out: FloatArray = vec / np.float32(norm)
    return out


class ContentIndex:
    """Product id -> unit vector, with brute-force nearest neighbours by cosine."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._matrix: FloatArray = np.zeros((0, dim or 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._pos

    def upsert(self, product_id: str, embedding: Sequence[float] | npt.NDArray[np.floating[Any]]) -> None:
        vec = check_embedding(embedding, self.dim)
        if self.dim is None:
            self.dim = int(vec.size)
            self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        pos = self._pos.get(product_id)
        if pos is not None:
            self._matrix[pos] = vec
            return
        n = len(self._ids)
        if n == self._matrix.shape[0]:  # grow by doubling: amortised O(1) per insert
            grown = np.zeros((max(16, 2 * n), self.dim), dtype=np.float32)
            grown[:n] = self._matrix[:n]
            self._matrix = grown
        self._matrix[n] = vec
        self._ids.append(product_id)
        self._pos[product_id] = n

    def remove(self, product_id: str) -> None:
        pos = self._pos.pop(product_id, None)
        if pos is None:
            return
        last = len(self._ids) - 1
        if pos != last:  # move the last row into the hole
            moved = self._ids[last]
            self._matrix[pos] = self._matrix[last]
            self._ids[pos] = moved
            self._pos[moved] = pos
        self._ids.pop()

    def vector(self, product_id: str) -> FloatArray | None:
        pos = self._pos.get(product_id)
        return None if pos is None else self._matrix[pos]

    def query(self, query_ids: Iterable[str]) -> ContentQuery | None:
        """Cosine of every indexed product to the closest of the query products (one matrix product).

        None when none of the queries has an embedding.
        """
        rows = [self._pos[q] for q in query_ids if q in self._pos]
        n = len(self._ids)
        if not rows or n == 0:
            return None
        best = (self._matrix[:n] @ self._matrix[rows].T).max(axis=1)
        return ContentQuery(self._ids[:n], self._pos, best, {self._ids[r] for r in rows})

    def nearest(
        self, query_ids: Iterable[str], k: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """The `k` products most similar to the queries, the queries themselves excluded."""
        q = self.query(query_ids)
        return [] if q is None else q.top(k, exclude)


class ContentQuery:
    """The answer of one query: a similarity per indexed product."""

    def __init__(self, ids: list[str], pos: dict[str, int], best: FloatArray, queries: set[str]) -> None:
        self._ids = ids
        self._pos = pos
        self._best = best
        self._queries = queries

    def score(self, product_id: str) -> float:
        """The product's similarity, clipped at 0 (an unknown product or an opposite one scores 0)."""
        pos = self._pos.get(product_id)
        if pos is None or pos >= self._best.size:
            return 0.0
        return max(0.0, float(self._best[pos]))

    def top(self, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        n = self._best.size
        if k < 1 or n == 0:
            return []
        skip = {self._pos[x] for x in (*self._queries, *exclude) if x in self._pos}
        take = min(n, k + len(skip))
        idx = np.argpartition(-self._best, take - 1)[:take] if take < n else np.arange(n)
        ranked = sorted(
            ((float(self._best[i]), self._ids[i]) for i in idx if int(i) not in skip),
            key=lambda x: (-x[0], x[1]),
        )
        return [(pid, score) for score, pid in ranked[:k]]
