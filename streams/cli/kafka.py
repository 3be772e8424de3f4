"""The operator commands' Kafka clients: a producer, and a reader of a topic's range by assignment.

The reader joins no consumer group and commits nothing, so it never moves the worker's offsets. It
reads every partition from the first offset at or after `since` (the broker's time index; a broker
without one, such as the embedded Tansu, answers the first offset, and the record times filter the
rest) up to the end offsets taken when it starts (corrected by the high watermark of the first fetch:
the embedded Tansu answers a list-offsets request with the start of the last batch + 1): records
written meanwhile are not read, so a command ends even while the service keeps writing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from streams.cli import OperatorError
from streams.cli.timerange import TimeRange
from streams.deadletter import max_dead_letter_bytes
from streams.records import SourceRecord
from streams.settings import Settings
from streams.topics import client_options

log = logging.getLogger(__name__)

STALL_S = 60.0  # no record and no progress this long while a partition is behind its end: give up


def max_request_bytes(settings: Settings) -> int:
    """The operator producers send inputs and whole dead letters, like the worker."""
    return max(1_048_576, max_dead_letter_bytes(settings.max_message_bytes))


async def start_producer(settings: Settings) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        linger_ms=5,
        compression_type=settings.producer_compression,
        max_request_size=max_request_bytes(settings),
    )
    await producer.start()
    return producer


async def existing_topics(settings: Settings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def read_range(
    settings: Settings, topics: Sequence[str], window: TimeRange | None = None
) -> AsyncIterator[Any]:
    """The records of `topics` (aiokafka ConsumerRecords) whose time lies in `window`, partition by
    partition in offset order, up to the ends the topics had when reading began."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    window = window or TimeRange()
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1_048_576, 2 * max_request_bytes(settings)),
    )
    await consumer.start()
    try:
        present = await consumer.topics()
        missing = [t for t in topics if t not in present]
        if missing:
            raise OperatorError(f"no such topic: {', '.join(missing)} (python -m streams create-topics?)")
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        if window.since is not None:
            try:
                found = await consumer.offsets_for_times(
                    {tp: int(window.since.timestamp() * 1000) for tp in tps}
                )
            except (KafkaError, ValueError) as exc:  # a broker without a time index: read it all
                log.info("offsets by time not available (%r): reading from the first offset", exc)
                found = {}
            for tp in tps:
                if tp in found:
                    at = found[tp]
                    starts[tp] = ends[tp] if at is None else max(starts[tp], at.offset)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        behind = {tp for tp in tps if starts[tp] < ends[tp]}
        checked: set[Any] = set()
        progress = time.monotonic()
        while behind:
            batches = await consumer.getmany(*behind, timeout_ms=500, max_records=500)
            for tp, messages in batches.items():
                if tp not in checked:
                    # The first fetch's high watermark: the end when reading began, also on a broker
                    # whose ListOffsets answers the start of the last batch + 1 (Tansu).
                    ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
                    checked.add(tp)
                for message in messages:
                    if message.offset >= ends[tp]:
                        break
                    if window.contains_ms(message.timestamp):
                        yield message
            for tp in list(behind):
                if await consumer.position(tp) >= ends[tp]:
                    behind.discard(tp)
            if batches:
                progress = time.monotonic()
            elif time.monotonic() - progress > STALL_S:
                stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(behind))
                raise OperatorError(f"no progress for {STALL_S:.0f}s reading {stuck}; is the broker up?")
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


def source_record(message: Any) -> SourceRecord:
    """An aiokafka ConsumerRecord as the pipeline takes it."""
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value or b"",
        timestamp=message.timestamp / 1000
        if message.timestamp is not None and message.timestamp >= 0
        else None,
        headers=tuple(message.headers or ()),
    )
