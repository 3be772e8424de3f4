"""Compressed batches through the real broker and a real worker.

1. Producers of the kind a shop runs, one per codec Kafka defines, each with aiokafka's plain
   `compression_type`, send events of every input kind (and the broken ones): every event comes out
   enriched or dead-lettered, and the worker, which compresses its own outputs, stays up.
2. A batch that cannot be decoded (a corrupt lz4 payload, written by a raw producer): the worker stops
   that partition at it and says where, the other partitions go on; restarted with the batch listed in
   ECOM_SKIP_UNDECODABLE, it moves past it, writes one dead letter for it, and enriches what follows.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.util import calc_crc32c

from streams.settings import Settings
from streams.topics import TopicNames, client_options, create_topics
from tooling.embedded.worker import WorkerProcess, http_get
from tooling.promtext import metric_sum
from tooling.replay import Accounting, Collector, new_accounting
from tooling.sample import SampleEvent, build_sample, click_events, physical_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CODECS = ("gzip", "snappy", "lz4", "zstd")
CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
CRC_AT, ATTRIBUTES_AT, HEADER = 17, 21, 61


def batch_codec(buf: bytes | bytearray) -> int:
    return int(buf[ATTRIBUTES_AT + 1]) & 0x07


async def produce_compressed(
    settings: Settings, events: Sequence[SampleEvent], codec: str
) -> tuple[list[SampleEvent], Counter[int]]:
    """Send `events` as a shop's producer would: aiokafka, `compression_type=codec`, keys decide the
    partition. Returns the events the broker refused and the codec of every batch that went out."""
    names = TopicNames.from_settings(settings)
    producer = AIOKafkaProducer(**client_options(settings), compression_type=codec, acks="all", linger_ms=20)
    # Instrumentation only: note the codec bits of each batch the producer builds.
    sent_codecs: Counter[int] = Counter()
    accumulator = producer._message_accumulator
    create_builder = accumulator.create_builder

    def noting_builder(*args: Any, **kwargs: Any) -> Any:
        builder = create_builder(*args, **kwargs)
        build = builder._build

        def noted() -> Any:
            buf = build()
            sent_codecs[batch_codec(buf)] += 1
            return buf

        builder._build = noted
        return builder

    accumulator.create_builder = noting_builder
    await producer.start()
    refused: list[SampleEvent] = []
    try:
        pending = [
            (e, await producer.send(physical_topic(names, e.topic), e.render(), key=e.key)) for e in events
        ]
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        refused = [e for (e, _), r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
    finally:
        await producer.stop()
    return refused, sent_codecs


def test_every_codec_from_outside_producers_is_enriched_or_dead_lettered(
    service_settings: Callable[..., Settings], new_worker: Callable[..., WorkerProcess]
) -> None:
    # The worker's own producers compress too, so the collector below reads zstd batches.
    settings = service_settings("codecs", kafka_compression_type="zstd")
    asyncio.run(create_topics(settings))
    worker = new_worker(settings).start()
    samples = {
        codec: build_sample(
            reviews=5,
            products=5,
            clicks=8,
            broken=True,
            seed=i,
            run=f"{codec}-{settings.app_id}",
            max_message_bytes=settings.max_message_bytes,
        )
        for i, codec in enumerate(CODECS)
    }

    async def run() -> tuple[Accounting, dict[str, Counter[int]]]:
        collector = Collector(settings)
        await collector.start()
        try:
            accounting = new_accounting([e for events in samples.values() for e in events])
            codecs_out: dict[str, Counter[int]] = {}
            for codec, events in samples.items():
                refused, codecs_out[codec] = await produce_compressed(settings, events, codec)
                accounting.forget((e, "refused") for e in refused)
            await collector.collect(accounting, wait_s=600, settle=3.0)
            return accounting, codecs_out
        finally:
            await collector.stop()

    accounting, codecs_out = asyncio.run(run())

    for codec in CODECS:
        assert codecs_out[codec][CODEC_IDS[codec]] > 0, f"no {codec} batch went out: {codecs_out[codec]}"
    assert accounting.missing == [], worker.tail()
    assert accounting.misrouted() == []
    assert accounting.repeats == {}
    outcome: dict[str, Counter[str]] = {codec: Counter() for codec in CODECS}
    for event, record in accounting.records():
        codec = next(c for c in CODECS if event.event_id.startswith(f"{c}-"))
        outcome[codec]["dead-lettered" if record.is_dead_letter else "enriched"] += 1
    for codec in CODECS:
        sent = sum(
            accounting.produced[e.event_id] for e in samples[codec] if e.event_id in accounting.produced
        )
        kinds = {e.topic for e in samples[codec]}
        assert kinds == {"reviews", "product-uploads", "clickstream"}
        assert outcome[codec]["enriched"] > 0 and outcome[codec]["dead-lettered"] > 0
        assert outcome[codec]["enriched"] + outcome[codec]["dead-lettered"] == sent
        print(
            f"{codec}: {sent} sent, {outcome[codec]['enriched']} enriched, "
            f"{outcome[codec]['dead-lettered']} dead-lettered"
        )

    assert worker.alive() and worker.live()
    assert metric_sum(worker.metrics(), "ecom_undecodable_batches_total") == 0
    assert http_get(f"{worker.url}/readyz")[0] == 200


# --- an undecodable batch -------------------------------------------------------------------------------
def corrupt_lz4(buf: bytearray) -> bytearray:
    """The batch as built, its lz4 payload scrambled and its CRC made to match (so only decoding fails)."""
    assert batch_codec(buf) == CODEC_IDS["lz4"], "the batch must go out compressed"
    for i in range(HEADER + 4, min(len(buf), HEADER + 40)):
        buf[i] ^= 0x5A
    struct.pack_into(">I", buf, CRC_AT, calc_crc32c(bytes(buf[ATTRIBUTES_AT:])))
    return buf


async def send_with_a_corrupt_batch(
    settings: Settings, before: list[SampleEvent], after: list[SampleEvent], elsewhere: list[SampleEvent]
) -> int:
    """`before`, one corrupt batch of three records, then `after`, all to clickstream partition 0, and
    `elsewhere` to partition 1. Returns the corrupt batch's first offset."""
    topic = TopicNames.from_settings(settings).clickstream
    producer = AIOKafkaProducer(**client_options(settings), compression_type="lz4", acks="all")
    await producer.start()
    try:
        for event in before:
            await producer.send_and_wait(topic, event.render(), key=event.key, partition=0)
        batch = producer.create_batch()
        for i in range(3):
            batch.append(
                key=b"u", value=b'{"broken batch": %d, "padding": "%s"}' % (i, b"x" * 200), timestamp=None
            )
        build = batch._build
        batch._build = lambda: corrupt_lz4(build())
        metadata = await (await producer.send_batch(batch, topic, partition=0))
        for event in after:
            await producer.send_and_wait(topic, event.render(), key=event.key, partition=0)
        for event in elsewhere:
            await producer.send_and_wait(topic, event.render(), key=event.key, partition=1)
        return int(metadata.offset)
    finally:
        await producer.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s\n{worker.tail()}")
        time.sleep(0.5)


def readyz(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"{worker.url}/readyz")
    return status, json.loads(body)


def test_an_undecodable_batch_stops_its_partition_until_it_is_skipped(
    service_settings: Callable[..., Settings], new_worker: Callable[..., WorkerProcess]
) -> None:
    settings = service_settings("undecodable")
    asyncio.run(create_topics(settings))
    topic = TopicNames.from_settings(settings).clickstream
    clicks = list(click_events(9, 0, f"undecodable-{settings.app_id}"))
    before, after, elsewhere = clicks[:3], clicks[3:6], clicks[6:]

    bad = asyncio.run(send_with_a_corrupt_batch(settings, before, after, elsewhere))
    coords = f"{topic}[0]@{bad}"

    collector = Collector(settings)
    accounting = new_accounting(clicks)

    async def collect(wait_s: float, until: Callable[[], bool]) -> None:
        await collector.start()
        try:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and not until():
                for record in await collector.poll():
                    accounting.add(record)
        finally:
            await collector.stop()

    # 1. The worker stops clickstream[0] at the batch, says so, and goes on with clickstream[1].
    first = new_worker(settings, name="first").start(wait_ready=False)
    wait_for(lambda: readyz(first)[1].get("stopped_partitions") is not None, 300, "the stop", first)

    def got() -> bool:
        return all(accounting.received.get(e.event_id) for e in before + elsewhere)

    accounting.received.clear()
    asyncio.run(collect(300, got))
    assert got(), first.tail()
    assert not any(accounting.received.get(e.event_id) for e in after), "nothing past the batch is read"

    status, body = readyz(first)
    assert status == 503
    [stopped] = body["stopped_partitions"]
    assert stopped["coords"] == coords
    assert (stopped["batch_start"], stopped["batch_end"], stopped["codec"]) == (bad, bad + 3, "lz4")
    assert stopped["error"].startswith("DecompressionError")
    assert coords in body["detail"]["consumer"]
    text = first.metrics()
    assert metric_sum(text, "ecom_undecodable_batches_total", topic=topic, partition="0") >= 1
    assert metric_sum(text, "ecom_partition_stopped_offset", topic=topic, partition="0") == bad
    assert first.alive() and first.live(), "the worker stays up"
    assert f"[{coords}]" in first.tail(400) and "ECOM_SKIP_UNDECODABLE" in first.tail(400)
    first.stop()

    # 2. Restarted with the batch listed, it moves past it: one dead letter, then what follows.
    second = new_worker(settings.model_copy(update={"skip_undecodable": coords}), name="second").start()

    def done() -> bool:
        letters = [r for r in accounting.unattributed if r.is_dead_letter]
        return bool(letters) and all(accounting.received.get(e.event_id) for e in after)

    asyncio.run(collect(300, done))
    assert done(), second.tail()
    [letter] = [r for r in accounting.unattributed if r.is_dead_letter]
    assert letter.topic == f"{topic}.dlq"
    assert letter.value["error"]["type"] == "UndecodableBatch"
    assert letter.value["source"] == {"topic": topic, "partition": 0, "offset": bad, "timestamp": None}
    assert letter.value["omitted"] == ["value", "headers"], "no record of the batch could be read"
    assert f"offsets {bad}..{bad + 2}" in letter.value["error"]["message"]
    assert accounting.missing == []
    wait_for(second.ready, 60, "readiness", second)
    assert "stopped_partitions" not in readyz(second)[1]
