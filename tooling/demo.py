"""`python -m streams demo`: the embedded default, end to end, on real data.

Starts the Kafka-compatible broker and Triton (tooling.embedded), creates the topics, starts the worker
as a separate process (as in production), replays real reviews, product photos and clicks plus a few
broken events, waits until every event has its output or dead letter, prints a summary, and stops
everything it started (by PID), also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings
from streams.topics import create_topics
from tooling.embedded import TritonServer, embedded_stack
from tooling.embedded.process import sigterm_as_interrupt
from tooling.embedded.worker import WorkerProcess, http_get
from tooling.promtext import metric_sum
from tooling.replay import Accounting, Collector, Received, latency_of, new_accounting, produce
from tooling.sample import SampleEvent, build_sample
from tooling.stats import percentile

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoOptions:
    reviews: int = 300
    products: int = 200
    clicks: int = 500
    broken: bool = True
    duplicates: int = 3
    seed: int = 0
    timeout: float = 600
    log_dir: str | None = None
    rate: float | None = None  # events/s; None: one burst, as fast as the producer goes
    model_repository: str | None = None  # default: the project's triton_models/
    queries: bool = True  # after the replay: a few searches by photo and by words over the listings


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def http_text(url: str) -> str:
    return http_get(url, timeout=5)[1]


def run_demo(settings: Settings, options: DemoOptions) -> int:
    # SIGTERM stops the demo like Ctrl-C: everything it started is stopped by PID on the way out.
    with sigterm_as_interrupt():
        return _run_demo(settings, options)


def _run_demo(settings: Settings, options: DemoOptions) -> int:
    log_dir = Path(options.log_dir or tempfile.mkdtemp(prefix="ecom-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    # The demo's own broker is fresh: the defaults are fine, but a smaller message limit keeps the
    # oversize-message example small.
    settings = settings.model_copy(update={"max_message_bytes": min(settings.max_message_bytes, 300_000)})
    say(f"ecom-enrichment demo; logs in {log_dir}")
    repository = Path(options.model_repository) if options.model_repository else REPO_ROOT / "triton_models"
    say("starting the broker, then Triton with model ecom_fusion (loads the fusion network on the CPU) ...")
    try:
        with embedded_stack(log_dir, model_repository=repository) as servers:
            broker, triton = servers.broker, servers.triton
            say(f"[1/6] Kafka-compatible broker (Tansu) on {broker.bootstrap}")
            up = sum(servers.started_s.values())
            say(f"[2/6] Triton ready on {triton.grpc_url} (gRPC) after {up:.0f}s")

            settings = settings.model_copy(
                update={"kafka_bootstrap": broker.url, "triton_grpc_url": triton.grpc_url}
            )
            ready = asyncio.run(create_topics(settings))
            say(f"[3/6] created {len(ready.created)} topics with {settings.partitions} partitions each")

            worker = servers.start_worker(settings)
            web_port = worker.web_port
            say(f"[4/6] worker running (pid {worker.pid}); health and metrics on {worker.url}")

            events = build_sample(
                reviews=options.reviews,
                products=options.products,
                clicks=options.clicks,
                broken=options.broken,
                seed=options.seed,
                max_message_bytes=settings.max_message_bytes,
                duplicate=options.duplicates,
            )
            by_topic = Counter(e.topic for e in events)
            say(
                f"[5/6] replaying {len(events)} events: " + ", ".join(f"{t} {n}" for t, n in by_topic.items())
            )
            accounting, wall = asyncio.run(_replay(settings, events, options.timeout, options.rate))
            say("[6/6] summary")
            summary(accounting, wall, web_port, triton, burst=options.rate is None)
            ok = not accounting.missing and not accounting.misrouted()
            if options.queries:
                ok = search(settings, options, events, worker) and ok
            return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted: the worker, Triton and the broker are stopped")
        return 130


async def _replay(
    settings: Settings, events: list[SampleEvent], wait_s: float, rate: float | None
) -> tuple[Accounting, float]:
    collector = Collector(settings)
    await collector.start()
    try:
        accounting = new_accounting(events)
        started = time.perf_counter()

        async def send() -> None:
            produced = await produce(settings, events, progress=True, rate=rate)
            accounting.forget(produced.refused)
            for event, reason in produced.refused:
                say(f"  the broker refused {event.event_id}: {reason}")

        await asyncio.gather(send(), collector.collect(accounting, wait_s=wait_s, settle=1.0, progress=True))
        return accounting, time.perf_counter() - started
    finally:
        await collector.stop()


def search(
    settings: Settings, options: DemoOptions, events: list[SampleEvent], worker: WorkerProcess
) -> bool:
    """A few `product-queries` against the listings just enriched (photos that are not among them, held-out
    reviews, a written query within one category, one empty query), paced at 2 per second; prints the
    answers by the Fashion-MNIST class of each product found, and the query latency. Returns whether
    every query was accounted for as expected."""
    from tooling.search_eval import query_events

    catalogue = {
        e.key.decode(): str(e.truth["fmnist_class"])
        for e in events
        if e.topic == "product-uploads" and e.expect == "output" and e.key
    }
    indexed = _wait_until_indexed(worker, len(catalogue))
    photos = {int(pid.rsplit("-", 1)[1]) for pid in catalogue}
    queries = query_events(f"demo{options.seed}", photos=3, texts=2, exclude_photos=photos, seed=options.seed)
    say(f"search by photo or by words: {len(queries)} queries against {indexed} indexed listings")
    accounting, _ = asyncio.run(_replay(settings, queries, options.timeout, 2.0))
    latencies: list[float] = []
    for event, r in accounting.records():
        if r.is_dead_letter:
            error = r.value["error"]
            say(f"    {r.topic}: {r.value['event_id']} -> {error['type']}: {error['message'][:70]}")
            continue
        latencies.append(float(r.value["latency_ms"]) / 1000)
        found = ", ".join(
            f"{catalogue.get(m['product_id'], '?')} {m['score']:.2f}" for m in r.value["matches"]
        )
        if "fmnist_class" in event.truth:
            asked = f"photo of a {event.truth['fmnist_class']}"
        else:
            asked = f'"{str(event.truth["text"])[:60]}" ({event.truth["leaf"]})'
            if r.value["category_filter"]:
                asked += f" within {r.value['category_filter']}"
        say(f"    {asked} -> {found or '(nothing)'}")
    if latencies:
        say(
            f"  query latency:   {_percentiles(latencies)}, record to publish, 2 queries/s on the idle worker"
        )
    ok = not accounting.missing and not accounting.misrouted()
    say(
        f"  queries:         {len(queries) - len(accounting.missing)}/{len(queries)} accounted for "
        f"(missing {len(accounting.missing)}, not as expected {len(accounting.misrouted())})"
    )
    return ok


def _wait_until_indexed(worker: WorkerProcess, listings: int, wait_s: float = 30.0) -> int:
    """The listings in the worker's content index, once they are all there (or after `wait_s`)."""
    deadline = time.monotonic() + wait_s
    entries = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            tables = json.loads(worker.state("/recommend/tables")[1])
            entries = int(tables.get("recommend-embeddings", {}).get("entries", 0))
        if entries >= listings:
            break
        time.sleep(0.5)
    return entries


def _quality(records: list[tuple[SampleEvent, Received]]) -> None:
    """Agreement with the data sets' own labels on this sample (held-out reviews, Fashion-MNIST test)."""
    from fusion.taxonomy import FMNIST_TO_LEAF, SENTIMENT_LABELS, sentiment_from_rating

    sentiment_hits = sentiment_n = category_hits = category_n = 0
    seen: set[str] = set()
    for event, r in records:
        if r.is_dead_letter or event.event_id in seen:
            continue
        seen.add(event.event_id)
        if "sentiment" in r.value and event.truth.get("rating"):
            sentiment_n += 1
            expected = SENTIMENT_LABELS[sentiment_from_rating(int(event.truth["rating"]))]
            sentiment_hits += r.value["sentiment"]["label"] == expected
        elif "category" in r.value and "fmnist_label" in event.truth:
            category_n += 1
            predicted = str(r.value["category"]["label"]).rsplit("/", 1)[-1]
            category_hits += predicted == FMNIST_TO_LEAF[int(event.truth["fmnist_label"])]
    if sentiment_n:
        say(
            f"  sentiment:       {sentiment_hits / sentiment_n:.1%} agree with the star rating "
            f"({sentiment_n} held-out reviews; 1-2 negative, 3 neutral, 4-5 positive)"
        )
    if category_n:
        say(
            f"  category:        {category_hits / category_n:.1%} top-1 = the Fashion-MNIST class "
            f"({category_n} test images)"
        )


def _percentiles(values: list[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:.0f} ms, p99 {percentile(values, 99) * 1000:.0f} ms"


def summary(accounting: Accounting, wall: float, web_port: int, triton: TritonServer, burst: bool) -> None:
    inputs: Counter[str] = Counter()
    for event_id, times in accounting.produced.items():
        inputs[accounting.expected[event_id].topic] += times
    produced = sum(accounting.produced.values())
    records = list(accounting.records())
    per_topic = Counter(r.topic for _, r in records)
    duplicates = produced - len(accounting.produced)
    say(
        f"  events in:       {produced} ({', '.join(f'{t} {n}' for t, n in sorted(inputs.items()))}; "
        f"{duplicates} of them exact duplicates of others)"
    )
    say("  records out:     " + ", ".join(f"{t} {n}" for t, n in sorted(per_topic.items())))
    say(
        f"  throughput:      {produced / wall:.1f} events/s ({produced} events in {wall:.1f}s, "
        "from the first send to the last output)"
    )
    by_topic: dict[str, list[float]] = defaultdict(list)
    for records_of in accounting.received.values():
        first = next((r for r in records_of if not r.is_dead_letter), None)
        if first is not None:
            by_topic[first.topic].append(latency_of(first))
    every = [x for xs in by_topic.values() for x in xs]
    if every:
        note = " (one burst: includes the wait behind the events sent before)" if burst else ""
        say(f"  latency:         {_percentiles(every)}, event ts to publish{note}")
        for topic, xs in sorted(by_topic.items()):
            say(f"                   {topic}: {_percentiles(xs)}")
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for _, r in records:
        if r.is_dead_letter:
            reasons[r.topic][r.value["error"]["type"]] += 1
    for topic, counts in sorted(reasons.items()):
        say(f"  dead letters:    {topic}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    _quality(records)
    say(
        f"  accounted for:   {produced - len(accounting.missing)}/{produced} "
        f"(missing {len(accounting.missing)}, not as expected {len(accounting.misrouted())}, "
        f"repeated records {sum(accounting.repeats.values())})"
    )

    with contextlib.suppress(Exception):
        worker = http_text(f"http://127.0.0.1:{web_port}/metrics")
        for kind in ("review", "product"):
            n = metric_sum(worker, "ecom_inference_batch_size_count", kind=kind)
            s = metric_sum(worker, "ecom_inference_batch_size_sum", kind=kind)
            if n:
                say(f"  inference:       {kind}: {n:.0f} requests, mean batch {s / n:.1f} rows")
    with contextlib.suppress(Exception):
        server = http_text(triton.metrics_url)
        count = metric_sum(server, "nv_inference_count")
        execs = metric_sum(server, "nv_inference_exec_count")
        if execs:
            say(
                f"  triton:          {count:.0f} rows in {execs:.0f} model executions "
                f"(mean {count / execs:.1f} rows per execution)"
            )

    say("  examples:")
    shown: Counter[str] = Counter()
    seen: set[str] = set()
    for event, r in records:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        kind = r.topic.rsplit(".", 1)[0] if r.is_dead_letter else r.topic
        if shown[kind + str(r.is_dead_letter)] >= 2:
            continue
        shown[kind + str(r.is_dead_letter)] += 1
        v = r.value
        if r.is_dead_letter:
            say(f"    {r.topic}: {v['event_id']} -> {v['error']['type']}: {v['error']['message'][:90]}")
        elif "sentiment" in v:
            text = str(event.truth.get("text", ""))[:70]
            probs = v["sentiment"]["probabilities"]
            say(
                f'    review ({event.truth.get("rating")} stars) "{text}..." -> {v["sentiment"]["label"]} '
                f"(neg {probs['negative']:.2f} / neu {probs['neutral']:.2f} / pos {probs['positive']:.2f})"
            )
        elif "category" in v:
            top = ", ".join(f"{c['label']} {c['score']:.2f}" for c in v["top_categories"][:3])
            say(
                f"    listing {v['product_id']} (Fashion-MNIST: {event.truth.get('fmnist_class')}) -> {top}; "
                f"embedding of {len(v['embedding'])} dims"
            )
        elif "items" in v:
            items = ", ".join(i["product_id"] for i in v["items"][:5])
            say(f"    click {v['user_id']} added {v['product_id']} -> recommends {items or '(nothing yet)'}")
