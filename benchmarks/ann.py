"""`python -m benchmarks ann`: approximate nearest-neighbour libraries for content similarity, measured.

Every candidate in one run, on the same vectors, with the same graph parameters, each in its own
process (memory is measured as the growth of that process's resident set, so one candidate's freed
memory cannot hide another's):

    python -m benchmarks ann                          # 100,000 vectors, every candidate
    python -m benchmarks ann --n 1000000 --candidates hnswlib,usearch-f16,faiss-ivf

What is measured, per candidate:

- build: the first `n - live` vectors added in one bulk call (`--threads`), then `live` vectors inserted
  one call each (single-threaded): how listings arriving one by one are indexed; p50/p99 per insert;
- memory: resident-set growth of the process over the build (vectors + graph), and the serialised size;
- queries: one query vector per call, single-threaded, top `k`; for each search breadth (`ef`) the
  recall@k against exact search and the latency p50/p99; the figure reported is the smallest breadth
  whose recall reaches `--target-recall`;
- replace: `replace` products get a new vector one call each (a product listed again); p50/p99.

Exact search (numpy, the brute-force `ContentIndex` before this benchmark) is measured beside them.

The vectors are synthetic, shaped like the model's embeddings (`DataShape`): unit vectors in 128
dimensions, in 20 groups (like the model's leaves) of 1,000 clusters (styles) with Zipf-like sizes,
each point varying around its cluster along 16 directions of its group plus a little noise in all
128 (the model's own embeddings of Fashion-MNIST test photos put 99% of their variance in 9
directions, and sit closer together than these). Queries are fresh draws from the same mixture, not
in the index. Seeded: every run with the same options indexes the same vectors. `--noise-dims 128
--isotropic 0` gives the hard case of clusters that vary in every direction.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from benchmarks.stats import latency_summary

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

CANDIDATES = ("hnswlib", "faiss-hnsw", "faiss-ivf", "usearch-f32", "usearch-f16")
# The module each candidate needs, and the versions measured (docs/recommendations.md).
LIBRARY = {c: c.split("-")[0] for c in CANDIDATES}
PINS = {"hnswlib": "hnswlib==0.8.0", "faiss": "faiss-cpu==1.15.1", "usearch": "usearch==2.26.6"}
DEFAULT_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256)
DEFAULT_NPROBES = (4, 8, 16, 32, 64, 128)


# --- data -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataShape:
    """Hierarchical clusters of unit vectors: `groups` broad kinds (like the model's leaves), `clusters`
    styles spread over them with Zipf-like sizes (exponent `zipf`), points around their style. Within a
    group, points vary along `noise_dims` directions of its own (plus a little isotropic noise): the
    model's embeddings live on a low-dimensional surface (docs/recommendations.md), not in all 128."""

    dim: int = 128
    groups: int = 20
    clusters: int = 1000
    style_spread: float = 0.6  # style centre = normalise(group + style_spread * gaussian / sqrt(dim))
    spread: float = 0.3  # point = normalise(style + spread * basis @ gaussian / sqrt(noise_dims) + ...)
    noise_dims: int = 16
    isotropic: float = 0.05  # ... + isotropic * gaussian / sqrt(dim)
    zipf: float = 0.5

    def describe(self) -> str:
        return (
            f"hierarchical clustered unit vectors: {self.groups} groups, {self.clusters} clusters "
            f"(Zipf {self.zipf} sizes), style spread {self.style_spread}, point spread {self.spread} "
            f"in {self.noise_dims} dims per group + {self.isotropic} isotropic"
        )


def clustered_unit_vectors(
    n: int, shape: DataShape, seed: int, *, draw_seed: int | None = None
) -> FloatArray:
    """`n` unit vectors of `shape`. The groups and clusters come from `seed`, the draws from `draw_seed`
    (default `seed`): queries are fresh draws of the same mixture. Float32, generated in chunks."""
    dim, r = shape.dim, min(shape.noise_dims, shape.dim)
    rng = np.random.default_rng(seed)
    groups = rng.standard_normal((shape.groups, dim), dtype=np.float32)
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    # An orthonormal basis of each group's own directions of variation.
    bases = np.stack([np.linalg.qr(rng.standard_normal((dim, r)))[0] for _ in range(shape.groups)])
    bases = bases.astype(np.float32)
    owner = rng.integers(0, shape.groups, size=shape.clusters)
    centres = groups[owner] + np.float32(shape.style_spread / np.sqrt(dim)) * rng.standard_normal(
        (shape.clusters, dim), dtype=np.float32
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, shape.clusters + 1, dtype=np.float64) ** shape.zipf
    weights /= weights.sum()
    draws = np.random.default_rng((seed if draw_seed is None else draw_seed) + 1_000_003)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = draws.choice(shape.clusters, size=stop - start, p=weights)
        local = draws.standard_normal((stop - start, r), dtype=np.float32) * np.float32(
            shape.spread / np.sqrt(r)
        )
        block = centres[which] + np.einsum("nij,nj->ni", bases[owner[which]], local)
        block += np.float32(shape.isotropic / np.sqrt(dim)) * draws.standard_normal(
            (stop - start, dim), dtype=np.float32
        )
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def exact_top_k(base: FloatArray, queries: FloatArray, k: int, block: int = 65_536) -> IntArray:
    """Row ids of the `k` largest inner products of each query, best first (blocked matrix products)."""
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    best_sim = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start in range(0, len(base), block):
        sims = queries @ base[start : start + block].T
        take = min(k, sims.shape[1])
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, part, 1)], axis=1)
        cand_ids = np.concatenate([best_ids, part + start], axis=1)
        order = np.argsort(-cand_sim, axis=1, kind="stable")[:, :k]
        best_sim = np.take_along_axis(cand_sim, order, 1)
        best_ids = np.take_along_axis(cand_ids, order, 1)
    return best_ids


def recall_at_k(found: Sequence[Sequence[int]], truth: IntArray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    if len(found) != len(truth):
        raise ValueError("one answer per query")
    hits = sum(len(set(map(int, f[:k])) & set(map(int, t[:k]))) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth)) if len(truth) else float("nan")


# --- candidates -----------------------------------------------------------------------------------------
class Candidate(Protocol):
    name: str
    knob: str  # the search-breadth parameter's name

    def build(self, vectors: FloatArray, ids: IntArray, threads: int) -> None: ...

    def insert(self, key: int, vector: FloatArray) -> None: ...

    def replace(self, key: int, vector: FloatArray) -> None: ...

    def set_breadth(self, value: int) -> None: ...

    def search(self, vector: FloatArray, k: int) -> list[int]: ...

    def serialised_bytes(self) -> int: ...


@dataclass(frozen=True)
class GraphParams:
    m: int = 16  # links per node (hnswlib M, usearch connectivity, faiss M)
    ef_construction: int = 128


class Hnswlib:
    name, knob = "hnswlib", "ef"

    def __init__(self, dim: int, capacity: int, params: GraphParams) -> None:
        hnswlib = import_module("hnswlib")
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=capacity, M=params.m, ef_construction=params.ef_construction)

    def build(self, vectors: FloatArray, ids: IntArray, threads: int) -> None:
        self.index.add_items(vectors, ids, num_threads=threads)

    def insert(self, key: int, vector: FloatArray) -> None:
        self.index.add_items(vector[None, :], [key], num_threads=1)

    def replace(self, key: int, vector: FloatArray) -> None:
        self.index.add_items(vector[None, :], [key], num_threads=1)  # an existing label: updated in place

    def set_breadth(self, value: int) -> None:
        self.index.set_ef(value)

    def search(self, vector: FloatArray, k: int) -> list[int]:
        labels, _ = self.index.knn_query(vector[None, :], k=k, num_threads=1)
        return [int(x) for x in labels[0]]

    def serialised_bytes(self) -> int:
        return int(self.index.index_file_size())


class UsearchIndex:
    knob = "expansion_search"

    def __init__(self, dim: int, capacity: int, params: GraphParams, dtype: str) -> None:
        index_type: Any = import_module("usearch.index").Index
        self.name = f"usearch-{dtype}"
        self.index = index_type(
            ndim=dim,
            metric="ip",
            dtype=dtype,
            connectivity=params.m,
            expansion_add=params.ef_construction,
        )

    def build(self, vectors: FloatArray, ids: IntArray, threads: int) -> None:
        self.index.add(ids, vectors, threads=threads)

    def insert(self, key: int, vector: FloatArray) -> None:
        self.index.add(key, vector, threads=1)

    def replace(self, key: int, vector: FloatArray) -> None:
        self.index.remove(key)
        self.index.add(key, vector, threads=1)

    def set_breadth(self, value: int) -> None:
        self.index.expansion_search = value

    def search(self, vector: FloatArray, k: int) -> list[int]:
        matches = self.index.search(vector, k, threads=1)
        return [int(x) for x in matches.keys]

    def serialised_bytes(self) -> int:
        return int(self.index.serialized_length)


class FaissHnsw:
    name, knob = "faiss-hnsw", "efSearch"

    def __init__(self, dim: int, capacity: int, params: GraphParams) -> None:
        self.faiss = faiss = import_module("faiss")
        self.index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = params.ef_construction

    def build(self, vectors: FloatArray, ids: IntArray, threads: int) -> None:
        # IndexHNSWFlat numbers vectors in insertion order; the ids are 0..n-1 in order here.
        self.faiss.omp_set_num_threads(threads)
        self.index.add(vectors)
        self.faiss.omp_set_num_threads(1)

    def insert(self, key: int, vector: FloatArray) -> None:
        if key != self.index.ntotal:
            raise ValueError("faiss HNSW numbers vectors in insertion order")
        self.index.add(vector[None, :])

    def replace(self, key: int, vector: FloatArray) -> None:
        raise NotImplementedError("IndexHNSWFlat cannot remove or replace a vector")

    def set_breadth(self, value: int) -> None:
        self.index.hnsw.efSearch = value

    def search(self, vector: FloatArray, k: int) -> list[int]:
        _, labels = self.index.search(vector[None, :], k)
        return [int(x) for x in labels[0]]

    def serialised_bytes(self) -> int:
        return int(self.faiss.serialize_index(self.index).size)


class FaissIvf:
    """IVF-Flat: k-means cells trained on the first vectors; the only FAISS index here that removes."""

    name, knob = "faiss-ivf", "nprobe"

    def __init__(self, dim: int, capacity: int, params: GraphParams) -> None:
        self.faiss = faiss = import_module("faiss")
        self.nlist = max(16, int(np.sqrt(capacity)))  # cells of about sqrt(n) vectors
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.max_points_per_centroid = 64  # k-means on at most 64 x nlist vectors

    def build(self, vectors: FloatArray, ids: IntArray, threads: int) -> None:
        self.faiss.omp_set_num_threads(threads)
        self.index.train(vectors[: 64 * self.nlist])  # the first listings fix the cells for good
        self.index.set_direct_map_type(self.faiss.DirectMap.Hashtable)
        self.index.add_with_ids(vectors, ids)
        self.faiss.omp_set_num_threads(1)

    def insert(self, key: int, vector: FloatArray) -> None:
        self.index.add_with_ids(vector[None, :], np.asarray([key], dtype=np.int64))

    def replace(self, key: int, vector: FloatArray) -> None:
        self.index.remove_ids(np.asarray([key], dtype=np.int64))
        self.insert(key, vector)

    def set_breadth(self, value: int) -> None:
        self.index.nprobe = value

    def search(self, vector: FloatArray, k: int) -> list[int]:
        _, labels = self.index.search(vector[None, :], k)
        return [int(x) for x in labels[0]]

    def serialised_bytes(self) -> int:
        return int(self.faiss.serialize_index(self.index).size)


def make_candidate(name: str, dim: int, capacity: int, params: GraphParams) -> Candidate:
    if name == "hnswlib":
        return Hnswlib(dim, capacity, params)
    if name == "faiss-hnsw":
        return FaissHnsw(dim, capacity, params)
    if name == "faiss-ivf":
        return FaissIvf(dim, capacity, params)
    if name.startswith("usearch-"):
        return UsearchIndex(dim, capacity, params, name.removeprefix("usearch-"))
    raise ValueError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")


# --- one candidate's measurement (in its own process) ---------------------------------------------------
@dataclass(frozen=True)
class Job:
    candidate: str
    data_dir: str
    k: int
    live: int
    replace: int
    threads: int
    params: GraphParams
    breadths: tuple[int, ...]
    target_recall: float


def installed(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def rss_bytes() -> int:
    """The resident set of this process (Linux /proc); 0 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Timings:
    """Wall and thread-CPU seconds of single calls: on a shared machine the CPU time is the call's own
    cost, the wall time adds waiting for a core."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, fn: Callable[[], Any]) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.thread_time() - cpu)
        return out

    def summary(self) -> dict[str, Any]:
        cpu = latency_summary(self.cpu)
        return {**latency_summary(self.wall), "cpu_p50_ms": cpu["p50_ms"], "cpu_p99_ms": cpu["p99_ms"]}


def measure(job: Job) -> dict[str, Any]:
    """Build, insert, query and replace with one candidate; every figure of its row."""
    data = Path(job.data_dir)
    base = np.load(data / "base.npy")  # in anonymous memory before the index exists
    queries = np.load(data / "queries.npy")
    truth = np.load(data / "truth.npy")
    extra = np.load(data / "replacements.npy")
    n, dim = base.shape
    ids = np.arange(n, dtype=np.int64)
    bulk = n - job.live
    gc.collect()
    rss_before = rss_bytes()
    index = make_candidate(job.candidate, dim, n, job.params)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    index.build(base[:bulk], ids[:bulk], job.threads)
    bulk_s, bulk_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    inserts = Timings()
    for i in range(bulk, n):
        inserts.time(lambda i=i: index.insert(i, base[i]))  # type: ignore[misc]
    rss_after = rss_bytes()
    row: dict[str, Any] = {
        "candidate": job.candidate,
        "n": n,
        "dim": dim,
        "bulk_vectors": bulk,
        "bulk_build_s": bulk_s,
        "bulk_build_cpu_s": bulk_cpu_s,
        "threads": job.threads,
        "insert": inserts.summary(),
        "memory_rss_bytes": rss_after - rss_before,
        "serialised_bytes": index.serialised_bytes(),
        "knob": index.knob,
        "sweep": [],
    }
    for breadth in job.breadths:
        index.set_breadth(breadth)
        for q in queries[: min(20, len(queries))]:  # warm the caches
            index.search(q, job.k)
        times = Timings()
        found = [times.time(lambda q=q: index.search(q, job.k)) for q in queries]  # type: ignore[misc]
        recall = recall_at_k(found, truth, job.k)
        row["sweep"].append({"breadth": breadth, "recall": recall, **times.summary()})
        if recall >= max(job.target_recall, 0.99):
            break  # wider searches only cost time
    row["chosen"] = next((s for s in row["sweep"] if s["recall"] >= job.target_recall), None)
    replaced = Timings()
    try:
        for j in np.linspace(0, n - 1, job.replace, dtype=np.int64):
            replaced.time(lambda j=j: index.replace(int(j), extra[int(j) % len(extra)]))  # type: ignore[misc]
        row["replace"] = replaced.summary()
    except NotImplementedError as exc:
        row["replace"] = None
        row["replace_error"] = str(exc)
    return row


def exact_row(base: FloatArray, queries: FloatArray, k: int, count: int) -> dict[str, Any]:
    """The brute-force baseline (the `ContentIndex` before this benchmark): one matrix-vector product
    and a partial sort per query."""

    def search(q: FloatArray) -> None:
        sims = base @ q
        top = np.argpartition(-sims, k - 1)[:k]
        top[np.argsort(-sims[top])]

    times = Timings()
    for q in queries[:count]:
        times.time(lambda q=q: search(q))  # type: ignore[misc]
    return {
        "candidate": "exact (numpy)",
        "n": len(base),
        "dim": base.shape[1],
        "memory_rss_bytes": int(base.nbytes),
        "serialised_bytes": int(base.nbytes),
        "chosen": {"breadth": None, "recall": 1.0, **times.summary()},
        "insert": None,
        "replace": None,
    }


# --- the run --------------------------------------------------------------------------------------------
@dataclass
class AnnOptions:
    n: int = 100_000
    shape: DataShape = field(default_factory=DataShape)
    queries: int = 1000
    k: int = 10
    live: int = 2000
    replace: int = 500
    threads: int = 2
    m: int = 16
    ef_construction: int = 64
    target_recall: float = 0.95
    seed: int = 0
    exact_queries: int = 50
    candidates: tuple[str, ...] = CANDIDATES
    out: Path | None = None


def breadths_for(candidate: str, k: int) -> tuple[int, ...]:
    if candidate == "faiss-ivf":
        return DEFAULT_NPROBES
    return tuple(b for b in DEFAULT_EFS if b >= k)


def run_ann(options: AnnOptions, *, in_process: bool = False) -> dict[str, Any]:
    """Every candidate on the same data; returns (and writes to `options.out`) the results.

    Each candidate runs in a fresh process unless `in_process` (tests)."""
    unknown = set(options.candidates) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown candidates {sorted(unknown)}; known: {', '.join(CANDIDATES)}")
    missing = sorted({LIBRARY[c] for c in options.candidates if not installed(LIBRARY[c])})
    if missing:
        raise ValueError(
            f"not installed: {', '.join(missing)}; pip install {' '.join(PINS[m] for m in missing)} "
            "(only hnswlib, the chosen index, is a dependency of the project)"
        )
    if options.n < 2 or options.k < 1 or options.queries < 1:
        raise ValueError("need n >= 2, k >= 1 and at least one query")
    started, cpu_started = time.perf_counter(), time.process_time()
    shape, seed = options.shape, options.seed
    base = clustered_unit_vectors(options.n, shape, seed)
    queries = clustered_unit_vectors(options.queries, shape, seed, draw_seed=seed + 7)
    replacements = clustered_unit_vectors(max(1, options.replace), shape, seed, draw_seed=seed + 13)
    log.info("data %d x %d ready after %.1fs; exact search", *base.shape, time.perf_counter() - started)
    t0 = time.perf_counter()
    truth = exact_top_k(base, queries, options.k)
    truth_s = time.perf_counter() - t0
    sample = base[: min(len(base), 200_000)]
    sims = -np.sort(-(queries[:200] @ sample.T), axis=1)
    data = {
        "kind": shape.describe(),
        "exact_search_s": truth_s,
        # How close neighbours are, to compare with the model's real embeddings (docs/recommendations.md).
        "top1_cosine_mean": float(sims[:, 0].mean()),
        "top10_cosine_mean": float(sims[:, min(9, sims.shape[1] - 1)].mean()),
        "median_cosine": float(np.median(sims)),
        "sample_for_cosines": len(sample),
    }
    rows: list[dict[str, Any]] = [exact_row(base, queries, options.k, options.exact_queries)]
    with tempfile.TemporaryDirectory(prefix="ann-bench-") as tmp:
        for name, array in (
            ("base", base),
            ("queries", queries),
            ("truth", truth),
            ("replacements", replacements),
        ):
            np.save(Path(tmp) / f"{name}.npy", array)
        del base, sample, sims
        gc.collect()
        for candidate in options.candidates:
            job = Job(
                candidate=candidate,
                data_dir=tmp,
                k=options.k,
                live=min(options.live, options.n - 1),
                replace=min(options.replace, options.n),
                threads=options.threads,
                params=GraphParams(options.m, options.ef_construction),
                breadths=breadths_for(candidate, options.k),
                target_recall=options.target_recall,
            )
            log.info("measuring %s", candidate)
            if in_process:
                row = measure(job)
            else:
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    row = pool.apply(measure, (job,))
            rows.append(row)
            log.info("%s: %s", candidate, summary_line(row))
    options_json = asdict(options)
    options_json["out"] = str(options.out) if options.out else None
    result = {
        "options": options_json,
        "data": data,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "libraries": library_versions(),
        "rows": rows,
        "wall_s": time.perf_counter() - started,
        "parent_cpu_s": time.process_time() - cpu_started,
    }
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "ann.json").write_text(json.dumps(result, indent=2))
        (options.out / "ann.md").write_text(markdown(result))
    return result


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hnswlib", "faiss-cpu", "usearch", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.0f}"


def _pair(summary: dict[str, Any] | None, a: str, b: str) -> str:
    if not summary:
        return "-"
    return f"{summary[a]:.3f} / {summary[b]:.3f}"


def summary_line(row: dict[str, Any]) -> str:
    chosen = row.get("chosen")
    if not chosen:
        return (
            f"recall target not reached (best {best(row):.3f}); memory {_mb(row.get('memory_rss_bytes'))} MB"
        )
    return (
        f"recall {chosen['recall']:.3f} at {row.get('knob', '')}={chosen.get('breadth')}, query p50/p99 "
        f"{_pair(chosen, 'p50_ms', 'p99_ms')} ms (CPU {_pair(chosen, 'cpu_p50_ms', 'cpu_p99_ms')} ms), "
        f"memory {_mb(row.get('memory_rss_bytes'))} MB"
    )


def best(row: dict[str, Any]) -> float:
    return max((s["recall"] for s in row.get("sweep", [])), default=float("nan"))


def markdown(result: dict[str, Any]) -> str:
    opts = result["options"]
    data = result["data"]
    load = result["machine"].get("load_average")
    lines = [
        f"{opts['n']:,} vectors x {opts['shape']['dim']} dims ({data['kind']}); {opts['queries']} queries "
        f"(fresh draws), top {opts['k']}, recall target {opts['target_recall']}; graphs M={opts['m']}, "
        f"construction breadth {opts['ef_construction']}; bulk build with {opts['threads']} threads, "
        f"then {opts['live']} single inserts; queries, inserts and replacements one call each, one thread.",
        f"Neighbour cosines of the data: top-1 {data['top1_cosine_mean']:.3f}, 10th "
        f"{data['top10_cosine_mean']:.3f}, median {data['median_cosine']:.3f}. Wall {result['wall_s']:.0f} s"
        + (f"; load average at the end {load[0]:.1f} on {result['machine']['cpus']} CPUs." if load else "."),
        "",
        "| index | search breadth | recall@k | query p50 / p99 ms | query CPU p50 / p99 ms | memory MB (RSS) "
        "| serialised MB | bulk build s (CPU s) | insert p50 / p99 ms | replace p50 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        chosen = row.get("chosen")
        knob = f"{row.get('knob', '')}={chosen['breadth']}" if chosen and chosen.get("breadth") else "-"
        recall = f"{chosen['recall']:.3f}" if chosen else f"< {opts['target_recall']} (best {best(row):.3f})"
        build = f"{row['bulk_build_s']:.1f} ({row['bulk_build_cpu_s']:.1f})" if "bulk_build_s" in row else "-"
        if row.get("replace"):
            replace = _pair(row["replace"], "p50_ms", "p99_ms")
        else:
            replace = "not supported" if row.get("replace_error") else "-"
        lines.append(
            f"| {row['candidate']} | {knob} | {recall} | {_pair(chosen, 'p50_ms', 'p99_ms')} "
            f"| {_pair(chosen, 'cpu_p50_ms', 'cpu_p99_ms')} | {_mb(row['memory_rss_bytes'])} "
            f"| {_mb(row['serialised_bytes'])} | {build} | {_pair(row.get('insert'), 'p50_ms', 'p99_ms')} "
            f"| {replace} |"
        )
    lines += ["", "Recall and latency by search breadth:", ""]
    for row in result["rows"]:
        for s in row.get("sweep", []):
            lines.append(
                f"- {row['candidate']} {row['knob']}={s['breadth']}: recall {s['recall']:.3f}, "
                f"p50 / p99 {_pair(s, 'p50_ms', 'p99_ms')} ms, CPU {_pair(s, 'cpu_p50_ms', 'cpu_p99_ms')} ms"
            )
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d, shape = AnnOptions(), DataShape()
    p = argparse.ArgumentParser(prog="python -m benchmarks ann", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--n", type=int, default=d.n, help="vectors in the index")
    p.add_argument("--dim", type=int, default=shape.dim, help="dimensions (the model's embedding_dim: 128)")
    p.add_argument("--groups", type=int, default=shape.groups)
    p.add_argument("--clusters", type=int, default=shape.clusters)
    p.add_argument("--style-spread", type=float, default=shape.style_spread)
    p.add_argument("--spread", type=float, default=shape.spread, help="noise around a cluster centre")
    p.add_argument(
        "--noise-dims", type=int, default=shape.noise_dims, help="directions of variation per group"
    )
    p.add_argument("--isotropic", type=float, default=shape.isotropic, help="noise in all directions")
    p.add_argument("--zipf", type=float, default=shape.zipf, help="cluster size exponent (0: equal sizes)")
    p.add_argument("--queries", type=int, default=d.queries)
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--live", type=int, default=d.live, help="vectors inserted one call each after the bulk")
    p.add_argument("--replace", type=int, default=d.replace, help="vectors replaced one call each")
    p.add_argument("--threads", type=int, default=d.threads, help="threads of the bulk build")
    p.add_argument("--m", type=int, default=d.m, help="graph links per node")
    p.add_argument("--ef-construction", type=int, default=d.ef_construction)
    p.add_argument("--target-recall", type=float, default=d.target_recall)
    p.add_argument("--exact-queries", type=int, default=d.exact_queries, help="queries timed by brute force")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--candidates", default=",".join(d.candidates), help=f"comma list of {','.join(CANDIDATES)}"
    )
    p.add_argument("--out", type=Path, help="folder for ann.json and ann.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    options = AnnOptions(
        n=args.n,
        shape=DataShape(
            dim=args.dim,
            groups=args.groups,
            clusters=args.clusters,
            style_spread=args.style_spread,
            spread=args.spread,
            noise_dims=args.noise_dims,
            isotropic=args.isotropic,
            zipf=args.zipf,
        ),
        queries=args.queries,
        k=args.k,
        live=args.live,
        replace=args.replace,
        threads=args.threads,
        m=args.m,
        ef_construction=args.ef_construction,
        target_recall=args.target_recall,
        exact_queries=args.exact_queries,
        seed=args.seed,
        candidates=tuple(c.strip() for c in args.candidates.split(",") if c.strip()),
        out=args.out,
    )
    from tooling.embedded.process import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # a killed run also ends the candidate's process (the pool's exit)
            result = run_ann(options)
    except ValueError as exc:
        raise SystemExit(f"benchmarks ann: {exc}") from None
    sys.stdout.write(markdown(result))
    if options.out is not None:
        sys.stdout.write(f"wrote {options.out / 'ann.json'} and ann.md\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
