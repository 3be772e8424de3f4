"""`python -m tooling.search_eval`: search by photo and by words, measured on held-out data.

The served model (the version folder Triton loads, through `fusion.serving.FusionService`: the same
decoding, validation, preprocessing and network as the Triton model) embeds every query and every
catalogue product; the catalogue goes into the service's own index (`ContentIndex`, with each
product's predicted category beside its vector, as the worker stores it); each query is answered like a
`product-queries` event (top 10 by cosine), and scored by the category of what comes back.

- Photo queries: Fashion-MNIST *test* images; the catalogue is the other test images (the split is a
  seeded permutation: the first `--photo-queries` are queries, the rest the catalogue). Relevant: a
  product of the query's class.
- Text queries: reviews of the model's *test* split (`fusion.data.review_splits`) whose class maps to a
  leaf that has catalogue photos (tops, shirts, pullovers, dresses, trousers, coats), against the same
  catalogue of photos. Relevant: a photo of the review's leaf.

Figures: precision@10 (share of the 10 answers that are relevant; a missing answer counts as wrong),
MRR@10 (1 / rank of the first relevant answer, 0 if none), and precision@10 by department. Beside the
service's index: exact search over the same embeddings (what the approximate index costs), and the
baselines: random products, and the query's predicted category then the most popular products of that
category (Fashion-MNIST has no popularity: each product gets a seeded Zipf view count, blind to its
content, so this ranks a category's products in a fixed arbitrary order). "Embedding within the
predicted category" is the service's index with the query's predicted category as its filter.

Nothing here trains: the model is the committed version; the data are the held-out splits only.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VERSION = REPO_ROOT / "triton_models" / "ecom_fusion" / "1"
K = 10
TARGETS = {"photo": 0.85, "text": 0.70}  # precision@10 of the category match

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Ranker = Callable[[int], Sequence[int]]  # query row -> catalogue rows, best first


@dataclass
class Embedded:
    embedding: FloatArray  # [n, D], unit rows
    category: FloatArray  # [n, C], probabilities over the leaves

    @property
    def predicted(self) -> IntArray:
        out: IntArray = self.category.argmax(axis=1).astype(np.int64)
        return out


# --- the model ------------------------------------------------------------------------------------------
def png_bytes(pixels: npt.NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def embed(service: Any, rows: Sequence[tuple[bytes, bytes]], batch: int = 64, what: str = "rows") -> Embedded:
    """Every (TEXT, IMAGE) row through the serving code, one request per row as Triton sends them,
    `batch` requests at a time (a dynamic batch)."""
    embeddings, categories = [], []
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        outcomes = service.run([[row] for row in rows[start : start + batch]])
        for outcome in outcomes:
            if outcome.error is not None:
                raise RuntimeError(f"the model refused a held-out {what[:-1]}: {outcome.error}")
            embeddings.append(outcome.outputs["EMBEDDING"][0])
            categories.append(outcome.outputs["CATEGORY"][0])
        if start // batch % 20 == 0:
            log.info("%s: %d / %d (%.0fs)", what, start + batch, len(rows), time.perf_counter() - started)
    return Embedded(np.asarray(embeddings, dtype=np.float32), np.asarray(categories, dtype=np.float32))


def model_version(version_dir: Path) -> str:
    config = version_dir.parent / "config.pbtxt"
    for line in config.read_text().splitlines() if config.exists() else []:
        if '"model_version_name"' in line and "string_value:" in line:
            return line.split("string_value:")[1].split('"')[1]
    return version_dir.name


# --- scoring --------------------------------------------------------------------------------------------
def precision_and_rr(
    ranked: Sequence[int], relevant: Callable[[int], bool], k: int = K
) -> tuple[float, float]:
    """Precision@k (missing answers count as wrong) and the reciprocal rank of the first relevant."""
    hits = [relevant(int(r)) for r in list(ranked)[:k]]
    first = next((i for i, h in enumerate(hits) if h), None)
    return sum(hits) / k, 0.0 if first is None else 1.0 / (first + 1)


@dataclass(frozen=True)
class Scores:
    precision: float
    mrr: float
    department_precision: float
    queries: int

    def as_dict(self) -> dict[str, float]:
        return {
            "precision_at_10": self.precision,
            "mrr_at_10": self.mrr,
            "department_precision_at_10": self.department_precision,
            "queries": self.queries,
        }


def score(
    rank: Ranker,
    query_leaf: IntArray,
    catalogue_leaf: IntArray,
    department_of: IntArray,
    k: int = K,
) -> Scores:
    """Mean precision@k, MRR@k and department precision@k of `rank` over every query."""
    p = rr = dp = 0.0
    for q, leaf in enumerate(query_leaf):
        ranked = list(rank(q))[:k]
        department = department_of[leaf]
        pq, rq = precision_and_rr(ranked, lambda c: bool(catalogue_leaf[c] == leaf), k)  # noqa: B023
        dq, _ = precision_and_rr(
            ranked,
            lambda c: bool(department_of[catalogue_leaf[c]] == department),  # noqa: B023
            k,
        )
        p, rr, dp = p + pq, rr + rq, dp + dq
    n = max(1, len(query_leaf))
    return Scores(p / n, rr / n, dp / n, len(query_leaf))


class Catalogue:
    """The catalogue's embeddings in the service's index, with the rankers to compare."""

    def __init__(self, embedded: Embedded, labels: Sequence[str], seed: int) -> None:
        from streams.recommend.content import ContentIndex

        self.embedded = embedded
        self.labels = labels
        self.predicted = embedded.predicted
        self.index = ContentIndex()
        started = time.perf_counter()
        for row, vector in enumerate(embedded.embedding):
            self.index.upsert(str(row), vector, category=labels[int(self.predicted[row])])
        self.build_s = time.perf_counter() - started
        rng = np.random.default_rng(seed)
        views = rng.zipf(1.5, size=len(embedded.embedding)).astype(np.float64)  # blind to content
        self.by_popularity = {
            leaf: [int(r) for r in sorted(np.flatnonzero(self.predicted == leaf), key=lambda r: -views[r])][
                :K
            ]
            for leaf in range(len(labels))
        }
        self.rng = rng

    def index_rank(self, query: FloatArray, category: str | None = None) -> list[int]:
        return [int(p) for p, _ in self.index.search(query, K, category=category)]

    def exact_rank(self, query: FloatArray) -> list[int]:
        sims = self.embedded.embedding @ query
        top = np.argpartition(-sims, K)[:K]
        return [int(i) for i in top[np.argsort(-sims[top], kind="stable")]]

    def random_rank(self) -> list[int]:
        return [int(i) for i in self.rng.choice(len(self.predicted), size=K, replace=False)]

    def popular_rank(self, predicted_leaf: int) -> list[int]:
        return self.by_popularity.get(predicted_leaf, [])


def evaluate_queries(
    catalogue: Catalogue, queries: Embedded, query_leaf: IntArray, catalogue_leaf: IntArray
) -> dict[str, Any]:
    from fusion.taxonomy import leaf_department_indices

    department_of = leaf_department_indices()
    predicted = queries.predicted
    rankers: dict[str, Ranker] = {
        "embedding, the service's index": lambda q: catalogue.index_rank(queries.embedding[q]),
        "embedding, exact search": lambda q: catalogue.exact_rank(queries.embedding[q]),
        "embedding within the predicted category": lambda q: catalogue.index_rank(
            queries.embedding[q], catalogue.labels[int(predicted[q])]
        ),
        "baseline: predicted category, then most popular": lambda q: catalogue.popular_rank(
            int(predicted[q])
        ),
        "baseline: random": lambda q: catalogue.random_rank(),
    }
    out: dict[str, Any] = {}
    latency: list[float] = []
    for name, rank in rankers.items():
        started = time.perf_counter()
        if name == "embedding, the service's index":

            def timed(q: int, rank: Ranker = rank) -> Sequence[int]:
                t0 = time.perf_counter()
                ranked = rank(q)
                latency.append(time.perf_counter() - t0)
                return ranked

            out[name] = score(timed, query_leaf, catalogue_leaf, department_of).as_dict()
        else:
            out[name] = score(rank, query_leaf, catalogue_leaf, department_of).as_dict()
        log.info("%s: %s (%.1fs)", name, out[name], time.perf_counter() - started)
    from tooling.stats import percentile

    out["_index_query_ms"] = {"p50": 1000 * percentile(latency, 50), "p99": 1000 * percentile(latency, 99)}
    out["_category_accuracy"] = float(np.mean(predicted == query_leaf)) if len(query_leaf) else float("nan")
    return out


# --- query events (the demo and the integration test) ----------------------------------------------------
# A query written by hand, and the leaf whose products answer it well.
WRITTEN_QUERIES: tuple[tuple[str, str], ...] = (("a warm wool coat for winter", "coat"),)


def query_events(
    run: str,
    *,
    photos: int,
    texts: int,
    exclude_photos: set[int],
    seed: int = 0,
    written: bool = True,
    broken: bool = True,
) -> list[Any]:
    """`product-queries` events: Fashion-MNIST test photos that are not in the catalogue (`exclude_photos`:
    test indices), held-out reviews of leaves with photos, a written query with a category filter, and
    one query with nothing to search with (dead-lettered). `truth` holds the class or leaf each answer is
    scored against."""
    import base64

    import orjson

    from fusion.data import load_fashion_mnist, load_reviews, review_splits
    from fusion.taxonomy import FMNIST_CLASSES, FMNIST_TO_LEAF, LEAF_NAMES
    from tooling.sample import Expect, SampleEvent, now_iso

    def event(
        tag: str, expect: Expect, truth: dict[str, Any], reason: str | None = None, **fields: Any
    ) -> Any:
        body = {"schema_version": 1, "event_id": f"{run}-query-{tag}", "query_id": f"q-{run}-{tag}"}
        body.update(fields, ts=now_iso())
        key = str(body["query_id"]).encode()
        return SampleEvent(
            "product-queries", key, orjson.dumps(body), str(body["event_id"]), expect, reason, truth, True
        )

    rng = np.random.default_rng(seed + 17)
    out = []
    fmnist = load_fashion_mnist("test")
    candidates = [i for i in rng.permutation(len(fmnist)) if int(i) not in exclude_photos][:photos]
    for i in candidates:
        label = int(fmnist.labels[i])
        image = base64.b64encode(png_bytes(fmnist.images[i])).decode("ascii")
        truth = {"fmnist_class": FMNIST_CLASSES[label], "leaf": FMNIST_TO_LEAF[label], "photo": int(i)}
        out.append(event(f"photo-{i}", "output", truth, image=image, k=5))
    if texts:
        reviews = load_reviews()
        with_photos = set(FMNIST_TO_LEAF)
        test = [int(i) for i in review_splits(reviews)["test"]]
        eligible = [i for i in test if reviews.leaf[i] >= 0 and LEAF_NAMES[reviews.leaf[i]] in with_photos]
        for i in rng.choice(eligible, size=min(texts, len(eligible)), replace=False):
            truth = {"leaf": LEAF_NAMES[reviews.leaf[int(i)]], "text": reviews.texts[int(i)]}
            out.append(event(f"review-{i}", "output", truth, text=reviews.texts[int(i)], k=5))
    if written:
        for j, (text, leaf) in enumerate(WRITTEN_QUERIES):
            truth = {"leaf": leaf, "text": text, "category": leaf}
            out.append(event(f"written-{j}", "output", truth, text=text, category=leaf, k=5))
    if broken:
        out.append(event("empty", "dlq", {}, "SchemaViolation", text="", k=5))
    return out


# --- the run --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalOptions:
    version_dir: Path = DEFAULT_VERSION
    photo_queries: int = 1000
    text_queries: int = 0  # 0: every eligible held-out review
    catalogue: int = 0  # 0: every test image that is not a query
    seed: int = 0
    threads: int = 1
    out: Path | None = None


def run(options: EvalOptions) -> dict[str, Any]:
    import torch

    from fusion.data import load_fashion_mnist, load_reviews, review_splits
    from fusion.serving import FusionService
    from fusion.taxonomy import FMNIST_TO_LEAF, LEAF_INDEX, LEAF_NAMES

    if options.threads > 0:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    service = FusionService(options.version_dir)
    version = model_version(options.version_dir)
    fmnist = load_fashion_mnist("test")
    order = np.random.default_rng(options.seed).permutation(len(fmnist))
    n_photo = min(options.photo_queries, len(order) - K)
    photo_rows, catalogue_rows = order[:n_photo], order[n_photo:]
    if options.catalogue:
        catalogue_rows = catalogue_rows[: options.catalogue]
    leaf_of_class = np.array([LEAF_INDEX[name] for name in FMNIST_TO_LEAF], dtype=np.int64)
    catalogue_leaf = leaf_of_class[fmnist.labels[catalogue_rows]]
    photo_leaf = leaf_of_class[fmnist.labels[photo_rows]]

    reviews = load_reviews()
    test = review_splits(reviews)["test"]
    with_photos = set(int(x) for x in np.unique(catalogue_leaf))
    eligible = np.array([i for i in test if int(reviews.leaf[i]) in with_photos], dtype=np.int64)
    if options.text_queries and options.text_queries < len(eligible):
        eligible = np.sort(
            np.random.default_rng(options.seed).choice(eligible, options.text_queries, replace=False)
        )
    text_leaf = reviews.leaf[eligible]
    log.info(
        "catalogue %d test photos; %d photo queries; %d text queries (of %d test reviews)",
        len(catalogue_rows),
        n_photo,
        len(eligible),
        len(test),
    )

    catalogue_emb = embed(
        service, [(b"", png_bytes(fmnist.images[i])) for i in catalogue_rows], what="photos"
    )
    photo_emb = embed(service, [(b"", png_bytes(fmnist.images[i])) for i in photo_rows], what="photo queries")
    text_emb = embed(service, [(reviews.texts[i].encode(), b"") for i in eligible], what="text queries")
    embed_s = time.perf_counter() - started

    catalogue = Catalogue(catalogue_emb, LEAF_NAMES, options.seed)
    result: dict[str, Any] = {
        "model": {"version": version, "version_dir": str(options.version_dir)},
        "data": {
            "catalogue": len(catalogue_rows),
            "photo_queries": int(n_photo),
            "text_queries": len(eligible),
            "text_leaves": sorted(LEAF_NAMES[i] for i in with_photos if i in set(text_leaf.tolist())),
            "seed": options.seed,
        },
        "photo": evaluate_queries(catalogue, photo_emb, photo_leaf, catalogue_leaf),
        "text": evaluate_queries(catalogue, text_emb, text_leaf, catalogue_leaf),
        "targets": TARGETS,
        "seconds": {
            "embedding": embed_s,
            "index_build": catalogue.build_s,
            "total": time.perf_counter() - started,
        },
        "catalogue_category_accuracy": float(np.mean(catalogue.predicted == catalogue_leaf)),
        "catalogue_embeddings": embedding_shape(catalogue_emb.embedding),
    }
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "search_eval.json").write_text(json.dumps(result, indent=2))
    return result


def embedding_shape(vectors: FloatArray, sample: int = 3000) -> dict[str, float]:
    """How close the catalogue's neighbours are and how many directions its variance needs: what the
    nearest-neighbour benchmark's synthetic data are compared with (docs/recommendations.md)."""
    x = vectors[:sample]
    sims = x @ x.T
    np.fill_diagonal(sims, -2.0)
    ordered = -np.sort(-sims, axis=1)
    eigen = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    share = np.cumsum(eigen) / eigen.sum()
    return {
        "sample": len(x),
        "top1_cosine_mean": float(ordered[:, 0].mean()),
        "top10_cosine_mean": float(ordered[:, min(9, len(x) - 2)].mean()),
        "directions_for_90pct_variance": int(np.searchsorted(share, 0.90) + 1),
        "directions_for_99pct_variance": int(np.searchsorted(share, 0.99) + 1),
    }


def report(result: dict[str, Any]) -> str:
    data = result["data"]
    lines = [
        f"model {result['model']['version']}; catalogue: {data['catalogue']:,} Fashion-MNIST test photos "
        f"(category predicted right for {result['catalogue_category_accuracy']:.1%})",
        "",
        "| queries | method | P@10 | MRR@10 | department P@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, what in (
        ("photo", f"{data['photo_queries']:,} photos (other test images)"),
        ("text", f"{data['text_queries']:,} held-out reviews"),
    ):
        for method, s in result[kind].items():
            if method.startswith("_"):
                continue
            bold = method == "embedding, the service's index"
            p = f"**{s['precision_at_10']:.3f}**" if bold else f"{s['precision_at_10']:.3f}"
            lines.append(
                f"| {what} | {method} | {p} | {s['mrr_at_10']:.3f} | {s['department_precision_at_10']:.3f} |"
            )
            what = ""
    lines.append("")
    for kind in ("photo", "text"):
        got = result[kind]["embedding, the service's index"]["precision_at_10"]
        target = result["targets"][kind]
        verdict = "met" if got >= target else f"missed by {target - got:.3f}"
        ms = result[kind]["_index_query_ms"]
        lines.append(
            f"{kind} queries: P@10 {got:.3f} against the target {target} ({verdict}); the query's own "
            f"category predicted right for {result[kind]['_category_accuracy']:.1%}; index search "
            f"p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms"
        )
    shape = result["catalogue_embeddings"]
    lines.append(
        f"catalogue embeddings ({shape['sample']:,}): nearest neighbour at cosine "
        f"{shape['top1_cosine_mean']:.3f}, 10th {shape['top10_cosine_mean']:.3f}; "
        f"90% / 99% of the variance in {shape['directions_for_90pct_variance']} / "
        f"{shape['directions_for_99pct_variance']} directions"
    )
    secs = result["seconds"]
    lines.append(
        f"time: embedding {secs['embedding']:.0f}s, index build {secs['index_build']:.1f}s, "
        f"total {secs['total']:.0f}s"
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    d = EvalOptions()
    p = argparse.ArgumentParser(
        prog="python -m tooling.search_eval", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--version-dir", type=Path, default=d.version_dir, help="the served model version folder")
    p.add_argument("--photo-queries", type=int, default=d.photo_queries)
    p.add_argument("--text-queries", type=int, default=d.text_queries, help="0: every eligible test review")
    p.add_argument("--catalogue", type=int, default=d.catalogue, help="0: every test image not a query")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "search-eval")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result = run(
        EvalOptions(
            version_dir=args.version_dir,
            photo_queries=args.photo_queries,
            text_queries=args.text_queries,
            catalogue=args.catalogue,
            seed=args.seed,
            threads=args.threads,
            out=args.out,
        )
    )
    sys.stdout.write(report(result))
    if args.out is not None:
        sys.stdout.write(f"wrote {args.out / 'search_eval.json'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
