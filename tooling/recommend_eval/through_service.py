"""Evaluate the recommender through the running service, by the evaluation protocol (`protocol`).

    python -m tooling.recommend_eval.through_service                   # the whole Instacart sample
    python -m tooling.recommend_eval.through_service --users 100       # 100 random shoppers: a quick run
    python -m tooling.recommend_eval.through_service --json /tmp/eval.json --log-dir /tmp/eval-logs

What it does, all of it real: starts the embedded Kafka-compatible broker and Triton (the worker checks
Triton for its readiness and runs its other agents next to the clickstream one), creates the topics,
starts a worker process (`python -m streams worker`), and replays the sample's order lines as
`add_to_cart` clicks through the broker:

1. history: every click of every earlier order (each user's last order held out), in time order, as
   fast as the producer goes; it waits until every click has its recommendation and the worker has
   applied every item update (its group's committed offsets reach the end of the internal topic);
2. held out: the held-out orders' clicks in time order, paced at `--rate` clicks/s, so the latency is
   that of a service keeping up, not of a queue.

It reads the `recommendations` topic back, scores the recommendation answering each held-out
add-to-cart against the next item of the same cart (tooling.recommend_eval.protocol: the same points and
metrics as the offline evaluator), next to the most-popular and co-occurrence baselines computed here on
the same clicks and points, and the offline (in-process) recommender as a reference. It also reports
the recommendation events read against the clicks sent, the click-to-publish latency (the events'
`latency_ms`), the throughput and the worker's CPU time per click (a figure that does not depend on
what else the machine runs), and the size of the state: the tables' changelog topics read back (live
keys and bytes, and everything written), the worker's own copy of the tables, and process memory.
Settings in the environment (`ECOM_*`) reach the worker, e.g. `ECOM_CLICK_CONCURRENCY`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from streams.recommend.config import RecommenderConfig
from streams.recommend.engine import Click
from streams.settings import Settings
from streams.topics import changelog_topic, client_options, create_topics, internal_topic
from streams.topology import INTERNAL_TOPICS, TABLES
from tooling.procstats import cpu_seconds, rss_bytes
from tooling.recommend_eval.protocol import (
    CoOccurrence,
    MostPopular,
    OnlineRecommender,
    PredictionPoint,
    Scores,
    holdout_split,
    load_orders,
    prediction_points,
    replay,
    score,
    synthesise_clicks,
)
from tooling.replay import Accounting, Collector, new_accounting, produce
from tooling.sample import SampleEvent
from tooling.stats import percentile

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Options:
    users: int | None = None  # a random subset of shoppers; None: all 593
    seed: int = 0
    split: str = "test"
    rate: float = 20.0  # held-out clicks per second
    history_rate: float | None = None  # None: as fast as the producer goes
    partitions: int = 4
    click_concurrency: int = 32
    timeout_s: float = 3600.0
    log_dir: str | None = None
    reference: bool = True  # also score the in-process recommender on the same points


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def select_users(clicks: pd.DataFrame, users: int | None, seed: int) -> pd.DataFrame:
    if users is None:
        return clicks
    ids = sorted(clicks["user_id"].unique())
    if users >= len(ids):
        return clicks
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(ids, size=users, replace=False).tolist())
    return clicks[clicks["user_id"].isin(chosen)].reset_index(drop=True)


def click_event(click: Click) -> SampleEvent:
    """The click as the shop would send it; `ts` keeps the sample's (synthetic) time."""
    value = {
        "schema_version": 1,
        "event_id": click.event_id,
        "user_id": click.user_id,
        "session_id": click.session_id,
        "product_id": click.product_id,
        "action": click.action,
        "ts": click.ts,
    }
    return SampleEvent("clickstream", click.user_id.encode(), orjson.dumps(value), click.event_id, "output")


@dataclass
class Phase:
    name: str
    clicks: int
    seconds: float  # first send to the last recommendation read
    accounting: Accounting
    refused: int
    worker_cpu_s: float | None = None  # the worker's CPU from the first send until its updates are applied
    stages: dict[str, dict[str, float]] | None = None  # where a click's time went (ms), stage -> p50/p99

    @property
    def answered(self) -> int:
        return sum(1 for e in self.accounting.produced if self.accounting.received.get(e))

    def latencies_ms(self) -> list[float]:
        out = []
        for records in self.accounting.received.values():
            first = next((r for r in records if not r.is_dead_letter), None)
            if first is not None and "latency_ms" in first.value:
                out.append(float(first.value["latency_ms"]))
        return out

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms()
        dead = sum(1 for _, r in self.accounting.records() if r.is_dead_letter)
        return {
            "clicks_sent": self.clicks - self.refused,
            "refused_by_broker": self.refused,
            "answered": self.answered,
            "recommendation_events_read": sum(
                1 for _, r in self.accounting.records() if not r.is_dead_letter
            ),
            "dead_letters": dead,
            "repeated_records": sum(self.accounting.repeats.values()),
            "missing": len(self.accounting.missing),
            "seconds": round(self.seconds, 1),
            "clicks_per_s": round(self.clicks / self.seconds, 1) if self.seconds else None,
            "worker_cpu_s": None if self.worker_cpu_s is None else round(self.worker_cpu_s, 1),
            "worker_cpu_ms_per_click": (
                None if self.worker_cpu_s is None else round(1000 * self.worker_cpu_s / self.clicks, 2)
            ),
            "stages_ms": self.stages,
            "latency_ms": {
                "p50": percentile(lat, 50) if lat else None,
                "p99": percentile(lat, 99) if lat else None,
                "max": float(max(lat)) if lat else None,
            },
        }


def stage_latency(before: str, after: str, settings: Settings) -> dict[str, dict[str, float]]:
    """p50 and p99 (ms) of each stage of the clicks processed between two scrapes of the worker's
    `/metrics` (ecom_stage_latency_seconds: broker wait, step, publish, state writes)."""
    from streams.metrics import STAGES
    from streams.topics import TopicNames
    from tooling.promtext import histogram_buckets
    from tooling.stats import bucket_delta, bucket_quantile

    topic = TopicNames.from_settings(settings).clickstream
    out: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        name, labels = "ecom_stage_latency_seconds", {"topic": topic, "stage": stage}
        delta = bucket_delta(
            histogram_buckets(after, name, **labels), histogram_buckets(before, name, **labels)
        )
        out[stage] = {f"p{q}": round(1000 * bucket_quantile(delta, q / 100), 1) for q in (50, 99)}
    return out


async def run_phase(
    settings: Settings,
    collector: Collector,
    name: str,
    clicks: Sequence[Click],
    rate: float | None,
    wait_s: float,
    worker_pid: int | None = None,
) -> Phase:
    events = [click_event(c) for c in clicks]
    accounting = new_accounting(events)
    cpu0 = cpu_seconds(worker_pid) if worker_pid else None
    started = time.perf_counter()
    refused = 0

    async def send() -> None:
        nonlocal refused
        produced = await produce(settings, events, progress=True, desc=f"{name} clicks", rate=rate)
        accounting.forget(produced.refused)
        refused = len(produced.refused)

    await asyncio.gather(send(), collector.collect(accounting, wait_s=wait_s, progress=True))
    seconds = time.perf_counter() - started
    cpu1 = cpu_seconds(worker_pid) if worker_pid else None
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return Phase(name, len(events), seconds, accounting, refused, cpu)


async def wait_item_updates_applied(settings: Settings, wait_s: float = 600.0) -> float:
    """Until the worker's group has committed the end of every partition of the internal topic.

    Commits follow processing (streams.offsets), so at that point every item update sent by the
    clicks so far is in the global tables. Returns the seconds waited.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = [internal_topic(settings, name) for name in INTERNAL_TOPICS]
    admin = AIOKafkaAdminClient(**client_options(settings))
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    started = time.perf_counter()
    try:
        await consumer.topics()  # metadata of every topic
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        while True:
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
            behind = {
                tp: ends[tp] - (committed[tp].offset if tp in committed else 0)
                for tp in tps
                if ends[tp] > (committed[tp].offset if tp in committed else 0)
            }
            if not behind:
                return time.perf_counter() - started
            if time.perf_counter() - started > wait_s:
                raise TimeoutError(f"item updates not applied after {wait_s:.0f}s: {behind}")
            await asyncio.sleep(1.0)
    finally:
        await consumer.stop()
        await admin.close()


async def changelog_sizes(settings: Settings) -> dict[str, dict[str, int]]:
    """Each table's changelog read back: records and bytes written, live keys and their bytes.

    Live = the last value of each key, what a compacted changelog keeps and a restarted worker
    restores (the embedded broker keeps every record: it does not compact).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out: dict[str, dict[str, int]] = {}
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1_048_576,
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic (assigning partitions narrows it)
        topics = {table: changelog_topic(settings, table) for table in TABLES}
        partitions = {t: sorted(consumer.partitions_for_topic(t) or ()) for t in topics.values()}
        for table, topic in topics.items():
            tps = [TopicPartition(topic, p) for p in partitions[topic]]
            if not tps:
                continue
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            live: dict[bytes, int] = {}
            records = written = 0
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
                for tp, messages in batches.items():
                    for m in messages:
                        size = len(m.key or b"") + len(m.value or b"")
                        records += 1
                        written += size
                        if m.value is None:
                            live.pop(m.key or b"", None)
                        else:
                            live[m.key or b""] = size
                    if messages and messages[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            out[table] = {
                "records_written": records,
                "bytes_written": written,
                "live_keys": len(live),
                "live_bytes": sum(live.values()),
            }
    finally:
        await consumer.stop()
    return out


async def drain(settings: Settings, phase: Phase, worker_pid: int) -> float:
    """Wait for the phase's item updates to be applied; their CPU counts to the phase."""
    cpu0 = cpu_seconds(worker_pid)
    waited = await wait_item_updates_applied(settings)
    cpu1 = cpu_seconds(worker_pid)
    if phase.worker_cpu_s is not None:
        phase.worker_cpu_s += cpu1 - cpu0
    return waited


@dataclass
class Report:
    options: dict[str, Any]
    data: dict[str, Any]
    scores: list[Scores] = field(default_factory=list)
    phases: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "data": self.data,
            "scores": [dataclasses.asdict(s) for s in self.scores],
            "phases": self.phases,
            "state": self.state,
        }


def score_all(
    split: Any,
    points: Sequence[PredictionPoint],
    served: dict[str, list[str]],
    k: int,
    reference: bool,
) -> list[Scores]:
    """The service's answers and the baselines (and the offline recommender) at the same points."""
    recommenders: dict[str, OnlineRecommender] = {
        "most-popular": MostPopular(k),
        "co-occurrence (last item)": CoOccurrence(k, "last"),
        "co-occurrence (session sum)": CoOccurrence(k, "session"),
    }
    if reference:
        from tooling.recommend_eval.offline import Blended

        recommenders["blended, in process (offline reference)"] = Blended(RecommenderConfig(k=k))
    answers = replay(split, recommenders, points)
    scores = [score(points, served, k, "blended, through the service")]
    scores += [score(points, answers[name], k, name) for name in recommenders]
    return scores


def served_recommendations(phase: Phase) -> dict[str, list[str]]:
    """event_id -> product ids of the first recommendation read for it (later ones are repeats)."""
    out: dict[str, list[str]] = {}
    for event_id, records in phase.accounting.received.items():
        first = next((r for r in records if not r.is_dead_letter), None)
        if first is not None:
            out[event_id] = [str(i["product_id"]) for i in first.value["items"]]
    return out


def source_mix(phase: Phase) -> dict[str, float]:
    mix: Counter[str] = Counter()
    for _, r in phase.accounting.records():
        for item in r.value.get("items", ()):
            mix[str(item.get("source"))] += 1
    total = sum(mix.values()) or 1
    return {k: round(v / total, 4) for k, v in mix.most_common()}


def run(options: Options, out_json: Path | None) -> int:
    from tooling.embedded import embedded_stack
    from tooling.embedded.worker import QUICK_GROUP

    k = RecommenderConfig().k
    offset = {"test": 0, "validation": 1}[options.split]
    clicks_df = select_users(synthesise_clicks(load_orders()), options.users, options.seed)
    split = holdout_split(clicks_df, offset)
    points = prediction_points(split.heldout)
    data = {
        "users": int(clicks_df["user_id"].nunique()),
        "clicks": len(split.history) + len(split.heldout),
        "history_clicks": len(split.history),
        "heldout_clicks": len(split.heldout),
        "prediction_points": len(points),
    }
    say(
        f"{options.split} split: {data['users']} users, {data['history_clicks']} history clicks, "
        f"{data['heldout_clicks']} held-out clicks, {data['prediction_points']} prediction points"
    )
    report = Report({**dataclasses.asdict(options)}, data)
    log_dir = Path(options.log_dir or tempfile.mkdtemp(prefix="ecom-recommend-eval-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    say(f"logs in {log_dir}")
    run_id = f"eval-{int(time.time())}"

    # Stopped by PID on the way out, also on Ctrl-C and SIGTERM: the worker, Triton, the broker.
    with embedded_stack(log_dir, model_repository=REPO_ROOT / "triton_models") as servers:
        broker, triton = servers.broker, servers.triton
        up = sum(servers.started_s.values())
        say(f"broker {broker.bootstrap} and Triton {triton.grpc_url} up after {up:.0f}s")
        settings = Settings(
            kafka_bootstrap=broker.url,
            triton_grpc_url=triton.grpc_url,
            app_id=run_id,
            partitions=options.partitions,
            click_concurrency=options.click_concurrency,
            # The worker joins its group quickly (the evaluator's own clients do not use these).
            broker_rebalance_timeout_s=QUICK_GROUP["broker_rebalance_timeout_s"],
            broker_session_timeout_s=QUICK_GROUP["broker_session_timeout_s"],
        )
        asyncio.run(create_topics(settings))
        worker = servers.start_worker(settings)
        say(f"worker {worker.pid} consuming; replaying")

        async def replay_all() -> tuple[Phase, Phase, float]:
            collector = Collector(settings)
            await collector.start()
            try:
                history = await run_phase(
                    settings,
                    collector,
                    "history",
                    split.history,
                    options.history_rate,
                    options.timeout_s,
                    worker.pid,
                )
                say(f"history answered: {history.answered}/{history.clicks} in {history.seconds:.0f}s")
                drained = await drain(settings, history, worker.pid)
                say(f"item updates applied {drained:.1f}s after the last history recommendation")
                before = worker.metrics()
                heldout = await run_phase(
                    settings,
                    collector,
                    "held-out",
                    split.heldout,
                    options.rate,
                    options.timeout_s,
                    worker.pid,
                )
                heldout.stages = stage_latency(before, worker.metrics(), settings)
                await drain(settings, heldout, worker.pid)
                return history, heldout, drained
            finally:
                await collector.stop()

        history, heldout, drained = asyncio.run(replay_all())
        report.phases = {
            "history": history.summary(),
            "heldout": heldout.summary(),
            "item_updates_drain_s": round(drained, 1),
        }
        report.phases["heldout"]["sources"] = source_mix(heldout)
        worker_tables = json.loads(worker.state("/recommend/tables", timeout=60)[1])
        report.state = {
            "worker_tables": worker_tables,
            "worker_rss_bytes": rss_bytes(worker.pid),
            "broker_rss_bytes": rss_bytes(broker.process.pid),
        }
        report.state["changelogs"] = asyncio.run(changelog_sizes(settings))

    say("scoring (and replaying the baselines on the same clicks)")
    report.scores = score_all(split, points, served_recommendations(heldout), k, options.reference)
    print_report(report, k)
    if out_json:
        out_json.write_text(json.dumps(report.as_json(), indent=2))
        say(f"figures written to {out_json}")
    answered_all = history.answered == history.clicks - history.refused and (
        heldout.answered == heldout.clicks - heldout.refused
    )
    return 0 if answered_all else 1


def print_report(report: Report, k: int) -> None:
    say()
    say(f"{'recommender':<42} {'HR@' + str(k):>8} {'MRR@' + str(k):>8} {'answered':>9} {'points':>7}")
    for s in report.scores:
        say(f"{s.name:<42} {s.hr:>8.4f} {s.mrr:>8.4f} {s.answered:>9} {s.n:>7}")
    for name in ("history", "heldout"):
        p = report.phases[name]
        lat = p["latency_ms"]
        say(
            f"{name}: {p['clicks_sent']} clicks sent, {p['recommendation_events_read']} recommendation "
            f"events read ({p['answered']} clicks answered, {p['missing']} missing, "
            f"{p['repeated_records']} repeats, {p['dead_letters']} dead letters) in {p['seconds']}s "
            f"= {p['clicks_per_s']} clicks/s ({p['worker_cpu_ms_per_click']} ms of worker CPU per click); "
            f"click-to-publish latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
            + (f"; stages (ms) {p['stages_ms']}" if p.get("stages_ms") else "")
        )
    say(f"held-out sources: {report.phases['heldout']['sources']}")
    say("state: changelog topics (live = last value per key) and the worker's copy of the tables")
    for table, c in report.state["changelogs"].items():
        w = report.state["worker_tables"].get(table, {})
        say(
            f"  {table:<22} live {c['live_keys']:>7} keys {c['live_bytes'] / 1e6:>8.2f} MB; written "
            f"{c['records_written']:>8} records {c['bytes_written'] / 1e6:>8.1f} MB; worker copy "
            f"{w.get('entries', 0):>7} entries {w.get('bytes', 0) / 1e6:>7.2f} MB"
        )
    for proc in ("worker", "broker"):
        rss = report.state.get(f"{proc}_rss_bytes")
        if rss:
            say(f"  {proc} resident memory: {rss / 1e6:.0f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=None, help="a random subset of N shoppers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--rate", type=float, default=20.0, help="held-out clicks per second")
    parser.add_argument(
        "--history-rate", type=float, default=None, help="history clicks per second (default: burst)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--click-concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait per phase")
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the in-process recommender")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    options = Options(
        users=args.users,
        seed=args.seed,
        split=args.split,
        rate=args.rate,
        history_rate=args.history_rate,
        partitions=args.partitions,
        click_concurrency=args.click_concurrency,
        timeout_s=args.timeout,
        log_dir=args.log_dir,
        reference=not args.no_reference,
    )
    return run(options, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
