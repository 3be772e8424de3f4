"""Content similarity over the product embeddings published on `product-categories`.

The upload enrichment publishes an L2-normalised `embedding` and a category per product; every worker
keeps all of them (a replicated table in the service) in one `ContentIndex`, which answers two
questions: "which products look like these?" (the recommender's content source, the cold-start path:
a product nobody has clicked yet is found as soon as its upload is enriched) and "which products look
like this query vector?", optionally within one category (search by photo or by words).

The index is an HNSW graph (hnswlib, inner product = cosine on unit vectors), updated as listings
arrive: a new product is inserted, a product listed again gets its vector replaced in place, a removed
one is marked deleted and its slot reused by the next new product. hnswlib was chosen by measurement
against FAISS and USearch (`python -m benchmarks ann`, docs/recommendations.md "Content similarity at
scale"): at 1 M products x 128 dims, recall@10 0.957 against exact search at the query breadth used
here, 0.44 ms of CPU per query at p99, 762 MB per worker. It replaces a vector in place (0.5 ms;
FAISS's HNSW cannot, USearch took 60 ms), filters by category during the search (USearch's Python API
cannot), grows from an empty index without training (FAISS IVF needs cells trained on a catalogue),
and gives exact float32 vectors back (the recommender scores arbitrary candidates by exact dot
products). The brute-force cosine it replaces cost 27 ms of CPU per query at 1 M.

Each product's category (a taxonomy leaf) is stored next to its vector, as a small integer per graph
slot; a product indexed from another worker's writes gets its category from `category_source` (the
replicated table of categories) the first time a filtered search meets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import hnswlib  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import orjson

from streams.recommend.errors import CorruptState, InvalidEmbedding

# An embedding whose norm is this far from 1 is renormalised (float rounding on the way through JSON);
# one further off than NORM_TOLERANCE breaks the contract and is rejected.
NORM_TOLERANCE = 0.05

# Graph and search parameters, chosen with `python -m benchmarks ann` (docs/recommendations.md).
GRAPH_M = 16  # links per node
EF_CONSTRUCTION = 64  # breadth of the search that places a new node
EF_SEARCH = 128  # breadth of a query: recall@10 0.957 at 1 M synthetic products (0.95 needs about 96)
INITIAL_CAPACITY = 1024
GROWTH = 1.5  # the graph's preallocated slots grow by this factor when full

FloatArray = npt.NDArray[np.float32]

_UNKNOWN = -1  # category code of a product whose category is not known (yet)
_FREE = -2  # category code of a slot whose product was removed


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


def listing_category(value: bytes) -> str | None:
    """The category label of a `product-categories` record (`category.label`), None without one."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    category = obj.get("category") if isinstance(obj, dict) else None
    label = category.get("label") if isinstance(category, dict) else None
    return label if isinstance(label, str) and label else None


def _new_graph(dim: int, capacity: int) -> Any:
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(
        max_elements=capacity, M=GRAPH_M, ef_construction=EF_CONSTRUCTION, allow_replace_deleted=True
    )
    graph.set_num_threads(1)  # one query at a time, on the worker's event loop
    return graph


class ContentIndex:
    """Product id -> unit vector (and category), with approximate nearest neighbours by cosine."""

    def __init__(self, dim: int | None = None, *, ef_search: int = EF_SEARCH) -> None:
        self.dim = dim
        self.ef_search = ef_search
        # Where the category of a product indexed without one is looked up (the replicated table of
        # categories in the service); values are labels.
        self.category_source: Mapping[str, Any] | None = None
        self._graph: Any = None
        self._capacity = 0
        self._label: dict[str, int] = {}  # product id -> graph label (its slot)
        self._product: dict[int, str] = {}  # graph label -> product id
        self._free = 0  # slots of removed products, waiting for reuse
        self._next = 0  # the next label (labels are never reused; slots are)
        self._codes = np.zeros(0, dtype=np.int16)  # graph label -> category code
        self._categories: list[str] = []  # category code -> label
        self._code_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._label

    # --- writes ---------------------------------------------------------------------------------------
    def upsert(
        self,
        product_id: str,
        embedding: Sequence[float] | npt.NDArray[np.floating[Any]],
        category: str | None = None,
    ) -> None:
        """Index the product's vector, replacing the one it had; `category`, when given, replaces its
        category (None keeps the one it has). Raises InvalidEmbedding before changing anything."""
        vec = check_embedding(embedding, self.dim)
        if self._graph is None:
            self.dim = int(vec.size)
            self._grow(INITIAL_CAPACITY)
        label = self._label.get(product_id)
        if label is not None:
            self._graph.add_items(vec[None, :], [label], num_threads=1)  # replaced in place
        else:
            # A removed product's slot is reused (replace_deleted); else the graph takes a new slot.
            if self._free == 0 and self._graph.element_count >= self._capacity:
                self._grow(max(self._capacity + 1, math.ceil(self._capacity * GROWTH)))
            label = self._next
            self._next += 1
            self._graph.add_items(vec[None, :], [label], num_threads=1, replace_deleted=True)
            self._free = max(0, self._free - 1)
            self._label[product_id] = label
            self._product[label] = product_id
            self._ensure_code_slot(label)
            self._codes[label] = _UNKNOWN
        if category is not None:
            self._codes[label] = self._code(category)

    def set_category(self, product_id: str, category: str) -> None:
        label = self._label.get(product_id)
        if label is not None:
            self._codes[label] = self._code(category)

    def remove(self, product_id: str) -> None:
        label = self._label.pop(product_id, None)
        if label is None:
            return
        del self._product[label]
        self._graph.mark_deleted(label)
        self._codes[label] = _FREE
        self._free += 1

    # --- reads ----------------------------------------------------------------------------------------
    def vector(self, product_id: str) -> FloatArray | None:
        label = self._label.get(product_id)
        if label is None:
            return None
        out: FloatArray = np.asarray(self._graph.get_items([label], return_type="numpy")[0], dtype=np.float32)
        return out

    def vectors(self, product_ids: Sequence[str]) -> tuple[list[str], FloatArray]:
        """The indexed ones among `product_ids` and their vectors, one row each."""
        known = [p for p in product_ids if p in self._label]
        if not known:
            return [], np.zeros((0, self.dim or 0), dtype=np.float32)
        rows = self._graph.get_items([self._label[p] for p in known], return_type="numpy")
        return known, np.asarray(rows, dtype=np.float32)

    def category(self, product_id: str) -> str | None:
        label = self._label.get(product_id)
        if label is None:
            return None
        return self._category_of_label(label)

    def search(
        self,
        vector: Sequence[float] | npt.NDArray[np.floating[Any]],
        k: int,
        *,
        category: str | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """The `k` indexed products closest to `vector` (a unit vector of the index's size), best first,
        with their cosine; only products of `category` when given; never those in `exclude`."""
        if k < 1 or not self._label:
            return []
        query = check_embedding(vector, self.dim)
        skip = {self._label[p] for p in exclude if p in self._label}
        accept: Callable[[int], bool] | None = None
        if category is None:
            available = len(self._label)
        else:
            code = self._code_of.get(category)
            if code is None and self.category_source is None:
                return []
            self._resolve_unknown_categories()
            code = self._code_of.get(category)
            if code is None:
                return []
            codes = self._codes
            available = int(np.count_nonzero(codes[: self._next] == code))
            accept = _accept_code(codes, code)
        skip_in_scope = len(skip) if accept is None else sum(1 for s in skip if accept(s))
        want = min(k + skip_in_scope, available)
        if want <= 0:
            return []
        self._graph.set_ef(max(self.ef_search, want))
        try:
            labels, distances = self._graph.knn_query(query[None, :], k=want, num_threads=1, filter=accept)
            found = [(int(lb), 1.0 - float(d)) for lb, d in zip(labels[0], distances[0], strict=True)]
        except RuntimeError:
            # hnswlib found fewer than `want` (a filter that leaves few reachable nodes): exact search.
            found = self._exact(query, want, accept)
        ranked = sorted(
            ((self._product[lb], score) for lb, score in found if lb not in skip and lb in self._product),
            key=lambda x: (-x[1], x[0]),
        )
        return ranked[:k]

    def query(self, query_ids: Iterable[str]) -> ContentQuery | None:
        """Similarity to the closest of the query products, for any product. None when none of the
        queries has an embedding."""
        ids, vectors = self.vectors(list(dict.fromkeys(query_ids)))
        if not ids:
            return None
        return ContentQuery(self, ids, vectors)

    def nearest(
        self, query_ids: Iterable[str], k: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """The `k` products most similar to the queries, the queries themselves excluded."""
        q = self.query(query_ids)
        return [] if q is None else q.top(k, exclude)

    @property
    def slots(self) -> int:
        """The graph's preallocated slots (it grows by GROWTH when they are all taken)."""
        return self._capacity

    def memory_bytes(self) -> int:
        """The graph's preallocated slots (vectors, links, labels) and the category codes; the id maps
        (Python objects) come on top."""
        if self._graph is None or self.dim is None:
            return 0
        per_slot = self.dim * 4 + (2 * GRAPH_M + 1) * 4 + 8 + 8  # vector, level-0 links, label, lock
        return self._capacity * per_slot + self._codes.nbytes

    # --- internals ------------------------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        assert self.dim is not None
        if self._graph is None:
            self._graph = _new_graph(self.dim, capacity)
        else:
            self._graph.resize_index(capacity)
        self._capacity = capacity

    def _ensure_code_slot(self, label: int) -> None:
        if label >= self._codes.size:
            grown = np.full(max(label + 1, 2 * self._codes.size, self._capacity), _FREE, dtype=np.int16)
            grown[: self._codes.size] = self._codes
            self._codes = grown

    def _code(self, category: str) -> int:
        code = self._code_of.get(category)
        if code is None:
            code = len(self._categories)
            if code >= np.iinfo(np.int16).max:
                raise InvalidEmbedding(f"too many distinct categories ({code}) for the content index")
            self._categories.append(category)
            self._code_of[category] = code
        return code

    def _category_of_label(self, label: int) -> str | None:
        code = int(self._codes[label])
        if code == _UNKNOWN:
            code = self._resolve(label)
        return self._categories[code] if code >= 0 else None

    def _resolve(self, label: int) -> int:
        if self.category_source is None:
            return _UNKNOWN
        try:
            value = self.category_source.get(self._product[label])
        except CorruptState:  # a foreign writer on the table: the category stays unknown
            return _UNKNOWN
        if not isinstance(value, str) or not value:
            return _UNKNOWN
        code = self._code(value)
        self._codes[label] = code
        return code

    def _resolve_unknown_categories(self) -> None:
        if self.category_source is None:
            return
        for label in np.flatnonzero(self._codes[: self._next] == _UNKNOWN):
            self._resolve(int(label))

    def _exact(
        self, query: FloatArray, k: int, accept: Callable[[int], bool] | None
    ) -> list[tuple[int, float]]:
        labels = [lb for lb in self._product if accept is None or accept(lb)]
        if not labels:
            return []
        sims = np.asarray(self._graph.get_items(labels, return_type="numpy"), dtype=np.float32) @ query
        order = np.argsort(-sims, kind="stable")[:k]
        return [(labels[i], float(sims[i])) for i in order]


def _accept_code(codes: npt.NDArray[np.int16], code: int) -> Callable[[int], bool]:
    def accept(label: int) -> bool:
        return bool(codes[label] == code)

    return accept


class ContentQuery:
    """The answer of one query: the similarity of any product to the closest query product."""

    def __init__(self, index: ContentIndex, ids: list[str], vectors: FloatArray) -> None:
        self._index = index
        self._ids = ids
        self._vectors = vectors

    def score(self, product_id: str) -> float:
        """The product's similarity, clipped at 0 (an unknown product or an opposite one scores 0);
        exact: a dot product with the stored vector."""
        vec = self._index.vector(product_id)
        if vec is None:
            return 0.0
        return max(0.0, float((self._vectors @ vec).max()))

    def top(self, k: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The `k` products most similar to any query product (the queries and `exclude` left out)."""
        if k < 1:
            return []
        skip = [*self._ids, *exclude]
        best: dict[str, float] = {}
        for vec in self._vectors:
            for product_id, score in self._index.search(vec, k, exclude=skip):
                if score > best.get(product_id, -math.inf):
                    best[product_id] = score
        ranked = sorted(best.items(), key=lambda x: (-x[1], x[0]))
        return ranked[:k]
