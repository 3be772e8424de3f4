"""Undecodable batches (streams.undecodable): real aiokafka record batches, made undecodable on purpose,
read through aiokafka's own `PartitionRecords`; no broker."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import codec as aiokafka_codec
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from faust.types import TP
from prometheus_client import REGISTRY
from streams_fakes import FakeModel, RecordingPublisher

from streams.app import create_app
from streams.deadletter import assemble, read_dead_letter
from streams.health import Health
from streams.settings import Settings
from streams.undecodable import (
    ERROR_TYPE,
    GuardedPartitionRecords,
    GuardedRecords,
    StoppedPartitions,
    Undecodable,
    UndecodableBatchGuard,
    dead_letter,
    parse_skip_list,
    write_dead_letters,
)

TOPIC = "clickstream"
CRC_AT, ATTRIBUTES_AT, HEADER = 17, 21, 61
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch(base_offset: int, values: list[bytes], codec: str = "lz4") -> bytearray:
    builder = DefaultRecordBatchBuilder(2, CODEC_IDS[codec], 0, -1, -1, 0, 1_000_000)
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=value, headers=[])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base_offset)  # the broker assigns it; the CRC does not cover it
    return buf


def recrc(buf: bytearray) -> bytearray:
    struct.pack_into(">I", buf, CRC_AT, calc_crc32c(bytes(buf[ATTRIBUTES_AT:])))
    return buf


def corrupt_payload(buf: bytearray) -> bytearray:
    assert buf[ATTRIBUTES_AT + 1] & 0x07, "the batch must be compressed"
    for i in range(HEADER + 4, min(len(buf), HEADER + 40)):
        buf[i] ^= 0x5A
    return recrc(buf)


def unknown_codec(buf: bytearray) -> bytearray:
    attributes = struct.unpack_from(">h", buf, ATTRIBUTES_AT)[0]
    struct.pack_into(">h", buf, ATTRIBUTES_AT, (attributes & ~0x07) | 0x05)
    return recrc(buf)


def bad_crc(buf: bytearray) -> bytearray:
    buf[-1] ^= 0xFF
    return buf


def values(n: int, tag: str) -> list[bytes]:
    # Repetitive enough that every codec really compresses (aiokafka sends it plain otherwise).
    return [orjson.dumps({"event_id": f"{tag}-{i}", "text": "a long enough body " * 8}) for i in range(n)]


def partition_records(*batches: bytearray, fetch_offset: int = 0) -> PartitionRecords:
    raw = b"".join(bytes(b) for b in batches)
    return PartitionRecords(
        TP(TOPIC, 3), MemoryRecords(raw), None, fetch_offset, None, None, True, READ_UNCOMMITTED
    )


def stop_and_note(found: list[Undecodable]) -> Callable[[Undecodable], bool]:
    def on_error(report: Undecodable) -> bool:
        found.append(report)
        return False

    return on_error


def read(records: Any) -> list[int]:
    return [r.offset for r in records]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_codec_decodes(codec: str) -> None:
    buf = batch(0, values(5, codec), codec)
    assert buf[ATTRIBUTES_AT + 1] & 0x07 == CODEC_IDS[codec], "the batch went out compressed"
    assert aiokafka_codec.has_snappy() and aiokafka_codec.has_lz4() and aiokafka_codec.has_zstd()
    assert read(partition_records(buf)) == [0, 1, 2, 3, 4]


BREAKERS = {
    "corrupt payload": (corrupt_payload, "DecompressionError"),
    "unknown codec": (unknown_codec, "UnsupportedCodecError"),
    "bad CRC": (bad_crc, "CorruptRecordException"),
}


@pytest.mark.parametrize("how", list(BREAKERS))
def test_aiokafka_raises_out_of_the_records_without_the_guard(how: str) -> None:
    breaker, error = BREAKERS[how]
    records = partition_records(batch(0, values(2, "a")), breaker(batch(2, values(3, "b"))))
    with pytest.raises(Exception) as raised:
        read(records)
    assert type(raised.value).__name__ == error


@pytest.mark.parametrize("how", list(BREAKERS))
def test_the_guard_delivers_what_precedes_the_batch_and_stops_at_it(how: str) -> None:
    breaker, error = BREAKERS[how]
    found: list[Undecodable] = []
    inner = partition_records(
        batch(0, values(2, "a")), breaker(batch(2, values(3, "b"))), batch(5, values(1, "c"))
    )
    guarded = GuardedPartitionRecords(TP(TOPIC, 3), inner, stop_and_note(found))

    assert read(guarded) == [0, 1]
    assert guarded.next_fetch_offset == 2, "the position stays at the bad batch: nothing past it is read"
    assert read(guarded) == []
    [report] = found
    assert (report.topic, report.partition, report.offset) == (TOPIC, 3, 2)
    assert report.coords == "clickstream[3]@2"
    assert (report.batch_start, report.batch_end) == (2, 5)
    assert report.codec == ("unknown (0x05)" if how == "unknown codec" else "lz4")
    assert report.error.startswith(error)


def test_the_guard_moves_past_a_batch_it_is_told_to_skip() -> None:
    inner = partition_records(batch(0, values(2, "a")), corrupt_payload(batch(2, values(3, "b"))))
    guarded = GuardedPartitionRecords(TP(TOPIC, 3), inner, lambda f: True)
    assert read(guarded) == [0, 1]
    assert guarded.next_fetch_offset == 5


def test_a_missing_codec_library_is_reported_like_the_original_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = batch(0, values(3, "s"), "snappy")
    monkeypatch.setattr(aiokafka_codec, "cramjam", None)  # as before the dependency was declared
    found: list[Undecodable] = []
    guarded = GuardedPartitionRecords(TP(TOPIC, 0), partition_records(buf), stop_and_note(found))
    assert read(guarded) == []
    assert found[0].error == "UnsupportedCodecError: Libraries for snappy compression codec not found"
    assert (found[0].offset, found[0].batch_end, found[0].codec) == (0, 3, "snappy")


def test_fetch_results_are_guarded_when_the_fetcher_stores_them() -> None:
    records = GuardedRecords(lambda f: False)
    result = SimpleNamespace(_partition_records=partition_records(batch(0, values(1, "a"))))
    records[TP(TOPIC, 0)] = result
    assert isinstance(result._partition_records, GuardedPartitionRecords)
    error = SimpleNamespace()  # aiokafka's FetchError has no records
    records[TP(TOPIC, 1)] = error
    assert list(records) == [TP(TOPIC, 0), TP(TOPIC, 1)]


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def found_at(partition: int, offset: int, end: int | None = None) -> Undecodable:
    return Undecodable(TOPIC, partition, offset, "DecompressionError: lz4: bad", offset, end, "lz4")


def test_a_stopped_partition_is_logged_counted_and_released(caplog: pytest.LogCaptureFixture) -> None:
    stopped = StoppedPartitions()
    before = sample("ecom_undecodable_batches_total", topic=TOPIC, partition="7") or 0.0
    assert stopped.handle(found_at(7, 41, 44)) is False
    assert TP(TOPIC, 7) in stopped and len(stopped) == 1
    assert sample("ecom_undecodable_batches_total", topic=TOPIC, partition="7") == before + 1
    assert sample("ecom_partition_stopped_offset", topic=TOPIC, partition="7") == 41
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert getattr(line, "coords", None) == "clickstream[7]@41"
    assert (
        "clickstream[7]@41" in line.getMessage()
        and "ECOM_SKIP_UNDECODABLE=clickstream[7]@41" in line.getMessage()
    )

    stopped.release([TP(TOPIC, 7)])
    assert TP(TOPIC, 7) not in stopped
    assert sample("ecom_partition_stopped_offset", topic=TOPIC, partition="7") is None


def test_only_listed_batches_with_a_known_end_are_skipped() -> None:
    stopped = StoppedPartitions(skip=parse_skip_list("clickstream[7]@42, reviews[0]@3"))
    assert stopped.handle(found_at(7, 41, 44)) is True, "42 lies in the batch 41..43"
    assert stopped.take_skipped() == [found_at(7, 41, 44)]
    assert stopped.handle(found_at(8, 42, 44)) is False, "another partition"
    assert stopped.handle(found_at(7, 50, None)) is False, "no end known: it cannot be skipped"
    with pytest.raises(ValueError, match="not topic"):
        parse_skip_list("clickstream:7:42")


def test_the_dead_letter_of_a_skipped_batch() -> None:
    written = assemble(dead_letter(found_at(7, 41, 44)))
    assert written.value == b"" and written.key is None
    letter = read_dead_letter(written.key, written.value, written.headers).info
    assert letter.error.type == ERROR_TYPE and not letter.error.retriable
    assert (letter.source.topic, letter.source.partition, letter.source.offset) == (TOPIC, 7, 41)
    assert "offsets 41..43" in letter.error.message
    assert letter.event_id is None and letter.omitted == ["value", "headers"]


class FakeThread:
    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109
        max_records: int | None = None,
    ) -> Any:
        self.asked.append(active_partitions)
        return {"records": True}


class GuardedThread(UndecodableBatchGuard, FakeThread):
    def __init__(self, stopped: StoppedPartitions) -> None:
        super().__init__()
        self.app = SimpleNamespace(undecodable=stopped)


async def test_the_consumer_thread_leaves_stopped_partitions_out() -> None:
    stopped = StoppedPartitions()
    thread = GuardedThread(stopped)
    fetcher = SimpleNamespace(_records={})
    consumer = SimpleNamespace(_fetcher=fetcher)
    a, b = TP(TOPIC, 0), TP(TOPIC, 1)

    assert await thread._fetch_records(consumer, {a, b}, timeout=0.01) == {"records": True}
    assert isinstance(fetcher._records, GuardedRecords), "the fetcher is guarded on the first fetch"
    stopped.stop(found_at(1, 5))
    await thread._fetch_records(consumer, {a, b}, timeout=0.01)
    assert thread.asked[-1] == {a}
    asked = len(thread.asked)
    assert await thread._fetch_records(consumer, {b}, timeout=0.01) == {}, "nothing left to fetch"
    assert len(thread.asked) == asked


async def test_a_skipped_batch_without_a_dead_letter_topic_is_released() -> None:
    stopped = StoppedPartitions(skip=parse_skip_list("internal[0]@1"))
    found = Undecodable("internal", 0, 1, "x", 1, 3, "lz4")
    assert stopped.handle(found) is True
    assert TP("internal", 0) in stopped, "held until its dead letter is dealt with"
    await write_dead_letters(stopped)
    assert TP("internal", 0) not in stopped


async def test_a_dead_letter_that_cannot_be_written_holds_the_partition() -> None:
    options = {"bootstrap_servers": "127.0.0.1:1", "request_timeout_ms": 200, "retry_backoff_ms": 10}
    stopped = StoppedPartitions(parse_skip_list("clickstream[7]@41"), [TOPIC], options)
    assert stopped.handle(found_at(7, 41, 44)) is True
    await asyncio.wait_for(write_dead_letters(stopped), 30)
    assert TP(TOPIC, 7) in stopped, "still held: nothing after the batch is read before its dead letter"
    assert stopped.take_skipped() == [found_at(7, 41, 44)], "and tried again on the next fetch"


def test_readiness_names_the_stopped_partition() -> None:
    settings = Settings()
    app = SimpleNamespace(undecodable=StoppedPartitions(), consumer=None)
    health = Health(settings, app, FakeModel())  # type: ignore[arg-type]
    health.kafka_up = health.triton_up = True
    assert health.ready()[0] is True
    app.undecodable.stop(found_at(2, 17, 20))
    ok, body = health.ready()
    assert ok is False
    assert body["stopped_partitions"][0]["coords"] == "clickstream[2]@17"
    assert body["stopped_partitions"][0]["batch_end"] == 20
    assert "clickstream[2]@17" in body["detail"]["consumer"]


def test_compression_and_skips_reach_the_app() -> None:
    assert Settings().producer_compression is None
    settings = Settings(
        kafka_compression_type="zstd", skip_undecodable="t-clickstream[1]@9", topic_prefix="t-"
    )
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    assert app.conf.producer_compression_type == "zstd"
    assert app.undecodable.skip == {("t-clickstream", 1, 9)}
    assert app.undecodable.dlq_topics == {
        "t-reviews",
        "t-product-uploads",
        "t-clickstream",
        "t-product-queries",
    }
    assert app.undecodable.producer_options is not None
    assert app.undecodable.producer_options["compression_type"] == "zstd"
    with pytest.raises(ValueError, match="kafka_compression_type"):
        Settings(kafka_compression_type="brotli")  # type: ignore[arg-type]
