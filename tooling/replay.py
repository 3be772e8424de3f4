"""Produce a sample into the input topics; read the outputs and dead letters back and account for them.

Used by the demo, the integration tests and the `produce-sample` / `collect` commands. Accounting is by
event_id: every produced event must come back as an output (or, for a broken one, a dead letter with
the expected reason); an event_id seen more often than it was produced is a repeat (at-least-once after
a crash, or a duplicate input), counted and reported, never hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from streams.deadletter import NotADeadLetter, read_dead_letter
from streams.settings import Settings
from streams.topics import TopicNames, client_options
from tooling.sample import SampleEvent, build_sample, physical_topic

log = logging.getLogger(__name__)


@dataclass
class Produced:
    seconds: float
    refused: list[tuple[SampleEvent, str]]  # events the broker would not take, with its reason


async def produce(
    settings: Settings,
    events: Sequence[SampleEvent],
    *,
    progress: bool = False,
    desc: str = "replay",
    rate: float | None = None,
) -> Produced:
    """Send `events` in order (acks=all), as fast as possible or at `rate` events/s.

    An event the broker refuses (most often: larger than its message.max.bytes) is reported in
    `refused`, not raised: the rest of the replay goes on.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from tqdm import tqdm

    names = TopicNames.from_settings(settings)
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=5,
        compression_type=settings.producer_compression,
        max_request_size=max(2_000_000, settings.max_message_bytes * 2),
    )
    await producer.start()
    started = time.perf_counter()
    bar = tqdm(total=len(events), desc=desc, unit="ev", disable=not progress, file=sys.stdout, position=0)
    refused: list[tuple[SampleEvent, str]] = []

    async def settle(batch: list[tuple[SampleEvent, asyncio.Future[Any]]]) -> None:
        results = await asyncio.gather(*(f for _, f in batch), return_exceptions=True)
        for (event, _), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                refused.append((event, f"{type(result).__name__}: {result}"))

    try:
        pending: list[tuple[SampleEvent, asyncio.Future[Any]]] = []
        for i, event in enumerate(events):
            if rate:
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            try:
                fut = await producer.send(physical_topic(names, event.topic), event.render(), key=event.key)
            except KafkaError as exc:
                refused.append((event, f"{type(exc).__name__}: {exc}"))
                bar.update(1)
                continue
            fut.add_done_callback(lambda _: bar.update(1))
            pending.append((event, fut))
            if len(pending) >= 256:
                await settle(pending)
                pending.clear()
        await settle(pending)
    finally:
        bar.close()
        await producer.stop()
    for event, reason in refused:
        log.warning("the broker refused %s (%s): %s", event.event_id, event.topic, reason)
    return Produced(time.perf_counter() - started, refused)


@dataclass
class Received:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any]
    timestamp_ms: int

    @property
    def is_dead_letter(self) -> bool:
        return self.topic.endswith(".dlq")


@dataclass
class Accounting:
    """What came back for each produced event."""

    produced: Counter[str]  # event_id -> times produced
    expected: dict[str, SampleEvent]
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    unattributed: list[Received] = field(default_factory=list)  # records without a known event_id

    def forget(self, refused: Iterable[tuple[SampleEvent, str]]) -> None:
        """Events the broker never took: nothing can come back for them."""
        for event, _ in refused:
            self.produced[event.event_id] -= 1
            if self.produced[event.event_id] <= 0:
                del self.produced[event.event_id]

    def add(self, record: Received) -> None:
        event_id = record.value.get("event_id")
        if isinstance(event_id, str) and event_id in self.produced:
            self.received[event_id].append(record)
        else:
            self.unattributed.append(record)

    @property
    def missing(self) -> list[str]:
        return [e for e in self.produced if not self.received.get(e)]

    @property
    def complete(self) -> bool:
        return all(len(self.received.get(e, ())) >= n for e, n in self.produced.items())

    @property
    def repeats(self) -> dict[str, int]:
        """event_id -> records beyond the number of times it was produced."""
        extra = {e: len(self.received.get(e, ())) - n for e, n in self.produced.items()}
        return {e: k for e, k in extra.items() if k > 0}

    def misrouted(self) -> list[str]:
        """Events whose records are not what the sample says they must be."""
        wrong: list[str] = []
        for event_id, records in self.received.items():
            event = self.expected[event_id]
            for r in records:
                if event.expect == "output" and r.is_dead_letter:
                    error = r.value["error"]
                    wrong.append(f"{event_id}: dead-lettered ({error['type']}: {error['message']})")
                elif event.expect == "dlq" and not r.is_dead_letter:
                    wrong.append(f"{event_id}: enriched, expected a dead letter ({event.reason})")
                elif event.expect == "dlq" and r.value["error"]["type"] != event.reason:
                    wrong.append(
                        f"{event_id}: dead-lettered as {r.value['error']['type']}, expected {event.reason}"
                    )
        return wrong

    def records(self) -> Iterable[tuple[SampleEvent, Received]]:
        for event_id, records in self.received.items():
            for r in records:
                yield self.expected[event_id], r


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def latency_of(output: Received) -> float:
    """Seconds from the event's ts to its output's processed_ts."""
    return (parse_ts(output.value["processed_ts"]) - parse_ts(output.value["source_ts"])).total_seconds()


async def assign_from_beginning(consumer: Any, topics: Sequence[str]) -> None:
    """Assign every partition of `topics` to a started group-less consumer, from the first offset."""
    from aiokafka import TopicPartition

    tps = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:  # not in the consumer's metadata yet
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps += [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)


def record_value(message: Any) -> dict[str, Any]:
    """An output's JSON value; for a dead letter (the input record, whole, with the error in its
    headers), what its headers say (`streams.events.DeadLetter`, as JSON)."""
    if message.topic.endswith(".dlq"):
        try:
            letter = read_dead_letter(message.key, message.value, message.headers or (), message.timestamp)
        except NotADeadLetter:
            return {"_undecodable": True}
        return letter.info.model_dump(mode="json")
    try:
        value = orjson.loads(message.value)
    except orjson.JSONDecodeError:
        return {"_undecodable": True}
    return value if isinstance(value, dict) else {"_undecodable": True}


class Collector:
    """Reads every output and dead-letter topic from the beginning (no consumer group)."""

    def __init__(self, settings: Settings) -> None:
        names = TopicNames.from_settings(settings)
        self.settings = settings
        self.topics = [*names.outputs, *names.dlqs]
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(1_048_576, self.settings.max_message_bytes * 2),
        )
        await consumer.start()
        await assign_from_beginning(consumer, self.topics)
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, wait_s: float = 0.5) -> list[Received]:
        batches = await self._consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=2000)
        out: list[Received] = []
        for tp, messages in batches.items():
            for m in messages:
                out.append(Received(tp.topic, tp.partition, m.offset, m.key, record_value(m), m.timestamp))
        return out

    async def collect(
        self,
        accounting: Accounting,
        *,
        wait_s: float,
        settle: float = 0.0,
        progress: bool = False,
        stop_when_complete: bool = True,
    ) -> Accounting:
        """Read until every produced event is accounted for (then `settle` more seconds, to catch
        repeats), or until `timeout`."""
        from tqdm import tqdm

        bar = tqdm(
            position=1,
            total=sum(accounting.produced.values()),
            desc="outputs",
            unit="ev",
            disable=not progress,
            file=sys.stdout,
        )
        deadline = time.monotonic() + wait_s
        settle_until: float | None = None
        try:
            while time.monotonic() < deadline:
                for record in await self.poll():
                    accounting.add(record)
                    bar.update(1)
                if stop_when_complete and accounting.complete:
                    if settle_until is None:
                        settle_until = time.monotonic() + settle
                    if time.monotonic() >= settle_until:
                        break
        finally:
            bar.close()
        return accounting


async def replay_and_collect(
    settings: Settings, events: Sequence[SampleEvent], *, wait_s: float, settle: float = 3.0
) -> Accounting:
    """Produce `events`, then read the outputs back until every event is accounted for (then `settle`
    seconds more, to catch repeats), or until `wait_s`. An event the broker refuses stays expected, so
    it shows as missing."""
    collector = Collector(settings)
    await collector.start()
    try:
        accounting = new_accounting(events)
        await produce(settings, events)
        return await collector.collect(accounting, wait_s=wait_s, settle=settle)
    finally:
        await collector.stop()


def new_accounting(events: Sequence[SampleEvent]) -> Accounting:
    return Accounting(produced=Counter(e.event_id for e in events), expected={e.event_id: e for e in events})


# --- commands ------------------------------------------------------------------------------------
def produce_sample_command(settings: Settings, args: argparse.Namespace) -> int:
    events = build_sample(
        reviews=args.reviews,
        products=args.products,
        clicks=args.clicks,
        broken=not args.no_broken,
        seed=args.seed,
        max_message_bytes=settings.max_message_bytes,
    )
    produced = asyncio.run(produce(settings, events, progress=True))
    refused = {id(e) for e, _ in produced.refused}
    sent = [e for e in events if id(e) not in refused]
    sys.stdout.write(f"produced {len(sent)} events in {produced.seconds:.1f}s\n")
    for event, reason in produced.refused:
        sys.stdout.write(f"  refused by the broker, left out of the manifest: {event.event_id}: {reason}\n")
    if args.manifest:
        Path(args.manifest).write_bytes(
            orjson.dumps([e.manifest_entry() for e in sent], option=orjson.OPT_INDENT_2)
        )
        sys.stdout.write(f"manifest: {args.manifest}\n")
    return 0


def collect_command(settings: Settings, args: argparse.Namespace) -> int:
    entries = orjson.loads(Path(args.manifest).read_bytes())
    events = [
        SampleEvent(e["topic"], None, b"", e["event_id"], e["expect"], e.get("reason"), e.get("truth") or {})
        for e in entries
    ]

    async def run() -> Accounting:
        collector = Collector(settings)
        await collector.start()
        try:
            return await collector.collect(
                new_accounting(events), wait_s=args.timeout, settle=2.0, progress=True
            )
        finally:
            await collector.stop()

    accounting = asyncio.run(run())
    missing, repeats, wrong = accounting.missing, accounting.repeats, accounting.misrouted()
    sys.stdout.write(
        f"{len(accounting.produced)} events: {len(missing)} missing, "
        f"{sum(repeats.values())} repeated records "
        f"over {len(repeats)} events, {len(wrong)} not as expected\n"
    )
    for line in [*missing[:20], *wrong[:20]]:
        sys.stdout.write(f"  {line}\n")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if not missing and not wrong else 1
