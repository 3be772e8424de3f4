"""`backfill` and `reenrich`: input records processed again into the outputs, beside the live workers.

The records are read by assignment (no consumer group, nothing committed: the worker's offsets do not
move) and go through the worker's own pipeline (`streams.runtime.build_runtime` without a Faust app),
with the model on Triton and a producer of their own publishing to the outputs. Outputs carry the
input's `event_id` as always, so a consumer sees a reprocessed event as a repeat and keeps the newer
enrichment (a new model version, say).

- `backfill --topic T --since TIME [--until TIME]`: every record of input T written in the range.
- `reenrich`: the latest listing of every product (the last record per `product_id` on
  `product-uploads`), into `product-categories`; the workers index the new embeddings as they read
  that topic, so the recommender and the search follow the model.

Only inputs whose output depends on the event and the model alone can be reprocessed: a click's
recommendations depend on the shopper's state at the moment of the click, and a query's matches on the
catalogue at the moment of the query; both live in the workers' tables, which a reprocess neither has
nor may change (the clicks are in the state already). `backfill` refuses those topics (`REFUSED`).

An event that fails again is reported, not dead-lettered a second time (its dead letter from the live
run is on the dead-letter topic already), unless `--dead-letters` asks for new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from streams.cli import OperatorError
from streams.cli.kafka import read_range, source_record, start_producer
from streams.cli.send import route_named
from streams.cli.timerange import TimeRange
from streams.deadletter import read_dead_letter, rfc3339
from streams.errors import PublishFailed
from streams.lifecycle import Retry, RetryPolicy
from streams.records import Header, SourceRecord
from streams.settings import Settings
from streams.topics import TopicNames
from streams.topology import ROUTES

log = logging.getLogger(__name__)

REFUSED = {
    "clickstream": "a click's recommendations depend on the shopper's state at the moment of the click, "
    "held by the workers' tables (which already count these clicks); a reprocess can neither rebuild "
    "that state nor feed the clicks to it again without counting them twice",
    "product-queries": "a query's matches depend on the catalogue the workers held at the moment of the "
    "query; a reprocess has no catalogue of its own",
}
PRODUCT_UPLOADS = "product-uploads"


class ReprocessPublisher:
    """`streams.protocols.Publisher` over a plain aiokafka producer: outputs are sent (and retried while
    the broker does not acknowledge them); dead letters are counted, and sent only when asked."""

    def __init__(self, producer: Any, retry: Retry, timeout_s: float, *, dead_letters: bool) -> None:
        self.producer = producer
        self.retry = retry
        self.timeout = timeout_s
        self.dead_letters = dead_letters
        self.published: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.failed: list[str] = []  # the first few, "<coords>: <type>: <message>"

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        if topic.endswith(".dlq"):
            info = read_dead_letter(key, value, headers).info
            self.failures[info.error.type] += 1
            if len(self.failed) < 10:
                source = f"{info.source.topic}[{info.source.partition}]@{info.source.offset}"
                self.failed.append(
                    f"{source} ({info.event_id}): {info.error.type}: {info.error.message[:200]}"
                )
            if not self.dead_letters:
                return

        async def send() -> None:
            try:
                pending = await self.producer.send(
                    topic, value, key=key, partition=partition, headers=list(headers) or None
                )
                await asyncio.wait_for(pending, self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc

        await self.retry.call(send, what=f"publish to {topic}")
        self.published[topic] += 1


@dataclass
class Outcome:
    read: int = 0
    processed: Counter[str] = field(default_factory=Counter)  # "enriched" / "dead_lettered"
    skipped: int = 0  # records left out (reenrich: older listings)


async def process(
    settings: Settings,
    records: AsyncIterator[SourceRecord],
    *,
    dead_letters: bool,
    dry_run: bool,
    outcome: Outcome,
) -> ReprocessPublisher | None:
    """Run `records` through the worker's pipeline, up to ECOM_AGENT_CONCURRENCY at once (so they share
    micro-batches as in the worker)."""
    if dry_run:
        async for _ in records:
            outcome.read += 1
        return None
    from streams.runtime import build_runtime

    producer = await start_producer(settings)
    retry = Retry(RetryPolicy(settings.retry_backoff_initial_s, settings.retry_backoff_max_s))
    publisher = ReprocessPublisher(producer, retry, settings.publish_timeout_s, dead_letters=dead_letters)
    runtime = build_runtime(settings, None, publisher=publisher)
    slots = asyncio.Semaphore(settings.agent_concurrency)

    async def one(record: SourceRecord) -> None:
        try:
            outcome.processed[await runtime.pipeline.handle(record)] += 1
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            async for record in records:
                outcome.read += 1
                await slots.acquire()
                group.create_task(one(record))
    finally:
        await runtime.close()
        await producer.stop()
    return publisher


async def _records(
    settings: Settings, topic: str, window: TimeRange | None = None
) -> AsyncIterator[SourceRecord]:
    async for message in read_range(settings, [topic], window):
        yield source_record(message)


def _report(
    what: str, outcome: Outcome, publisher: ReprocessPublisher | None, out: IO[str], *, dry_run: bool
) -> int:
    if dry_run:
        out.write(f"{what}: would reprocess {outcome.read} records (dry run: nothing sent)\n")
        return 0
    enriched = outcome.processed["enriched"]
    failed = outcome.processed["dead_lettered"]
    out.write(f"{what}: {outcome.read} records reprocessed, {enriched} enriched, {failed} failed\n")
    if publisher is not None:
        for topic, n in sorted(publisher.published.items()):
            out.write(f"  published to {topic}: {n}\n")
        if failed:
            where = (
                "dead-lettered again"
                if publisher.dead_letters
                else "not dead-lettered again (--dead-letters)"
            )
            out.write(
                f"  failed, {where}: "
                + ", ".join(f"{t} {n}" for t, n in publisher.failures.most_common())
                + "\n"
            )
            for line in publisher.failed:
                out.write(f"    {line}\n")
    return 0


# --- backfill --------------------------------------------------------------------------------------
def backfill_command(
    settings: Settings, topic: str, window: TimeRange, *, dead_letters: bool, dry_run: bool, out: IO[str]
) -> int:
    names = TopicNames.from_settings(settings)
    route = route_named(topic, names)
    if route.input in REFUSED:
        raise OperatorError(f"backfill of {route.input} is refused: {REFUSED[route.input]}")
    if window.since is None:
        raise OperatorError("backfill needs --since (the time to reprocess from)")
    outcome = Outcome()

    async def run() -> ReprocessPublisher | None:
        return await process(
            settings,
            _records(settings, names(route.input), window),
            dead_letters=dead_letters,
            dry_run=dry_run,
            outcome=outcome,
        )

    publisher = asyncio.run(run())
    until = f" until {rfc3339(window.until)}" if window.until else ""
    return _report(
        f"backfill of {names(route.input)} from {rfc3339(window.since)}{until}",
        outcome,
        publisher,
        out,
        dry_run=dry_run,
    )


# --- reenrich --------------------------------------------------------------------------------------
def product_of(record: SourceRecord) -> str | None:
    """The product a listing is about: its key (listings are keyed by product_id), else its value's."""
    if record.key is not None:
        return "key:" + record.key.hex()
    try:
        obj = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    product = obj.get("product_id") if isinstance(obj, dict) else None
    return f"id:{product}" if isinstance(product, str | int) and not isinstance(product, bool) else None


@dataclass
class Latest:
    """The latest record of each product: on its partition, the highest offset (a product's listings
    share a partition through their key); across partitions, the later record time."""

    chosen: dict[str, tuple[int, int, float]] = field(
        default_factory=dict
    )  # product -> partition, offset, time
    loose: set[tuple[int, int]] = field(default_factory=set)  # records that name no product: all kept
    seen: int = 0

    def add(self, record: SourceRecord) -> None:
        self.seen += 1
        product = product_of(record)
        if product is None:
            self.loose.add((record.partition, record.offset))
            return
        mine = (record.partition, record.offset, record.timestamp or 0.0)
        other = self.chosen.get(product)
        if other is None or _newer(mine, other):
            self.chosen[product] = mine

    def keeps(self) -> Callable[[SourceRecord], bool]:
        kept = {(p, o) for p, o, _ in self.chosen.values()} | self.loose
        return lambda record: (record.partition, record.offset) in kept


def _newer(a: tuple[int, int, float], b: tuple[int, int, float]) -> bool:
    if a[0] == b[0]:
        return a[1] > b[1]
    return (a[2], a[0]) > (b[2], b[0])


def reenrich_command(settings: Settings, *, dead_letters: bool, dry_run: bool, out: IO[str]) -> int:
    names = TopicNames.from_settings(settings)
    if PRODUCT_UPLOADS not in {r.input for r in ROUTES}:  # pragma: no cover  (the topology has it)
        raise OperatorError("this topology has no product-uploads input")
    topic = names(PRODUCT_UPLOADS)
    outcome = Outcome()
    latest = Latest()

    async def run() -> ReprocessPublisher | None:
        # Two reads of the same range: the first finds each product's latest listing, the second
        # processes only those (the listings themselves are never all held in memory).
        async for record in _records(settings, topic):
            latest.add(record)
        keeps = latest.keeps()

        async def chosen() -> AsyncIterator[SourceRecord]:
            async for record in _records(settings, topic):
                if keeps(record):
                    yield record
                else:
                    outcome.skipped += 1

        return await process(settings, chosen(), dead_letters=dead_letters, dry_run=dry_run, outcome=outcome)

    publisher = asyncio.run(run())
    out.write(f"{topic}: {latest.seen} listings, {len(latest.chosen)} products\n")
    return _report(f"reenrich of {topic}", outcome, publisher, out, dry_run=dry_run)
