"""Dead letters: the input record whole, the error in headers (Kafka Connect's convention), read back;
the attempts counter a re-drive increments; the JSON envelope of schema 1 still readable."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest

from streams import deadletter
from streams.deadletter import (
    HEADROOM,
    NotADeadLetter,
    dead_letter,
    max_dead_letter_bytes,
    read_dead_letter,
    record_size,
    redrive_headers,
)
from streams.errors import MalformedJson, OversizeMessage, OversizeText
from streams.events import DeadLetter
from streams.records import SourceRecord

NOW = datetime(2024, 5, 1, 10, 0, 0, 20_000, tzinfo=UTC)
LIMIT = max_dead_letter_bytes(100_000)


def record(
    value: bytes, key: bytes | None = b"k", headers: tuple[tuple[str, bytes | None], ...] = ()
) -> SourceRecord:
    return SourceRecord("reviews", 2, 41, key, value, timestamp=1_714_550_400.0, headers=headers)


def header(headers: tuple[tuple[str, bytes | None], ...], name: str) -> list[bytes | None]:
    return [v for k, v in headers if k == name]


def test_a_dead_letter_is_the_input_record_whole_with_the_error_in_connect_headers() -> None:
    value = b'{"event_id": "e-9", "x": '
    own = (("trace", b"abc"), ("trace", b"def"), ("empty", None))
    letter = dead_letter(record(value, headers=own), MalformedJson("not JSON"), max_bytes=LIMIT, now=NOW)
    assert letter.value == value and letter.key == b"k"
    assert letter.headers[:3] == own, "the original headers first, in order, duplicates and nulls kept"
    assert header(letter.headers, "__connect.errors.topic") == [b"reviews"]
    assert header(letter.headers, "__connect.errors.partition") == [b"2"]
    assert header(letter.headers, "__connect.errors.offset") == [b"41"]
    assert header(letter.headers, "__connect.errors.exception.class.name") == [b"MalformedJson"]
    assert header(letter.headers, "__connect.errors.exception.message") == [b"not JSON"]
    assert header(letter.headers, "ecom.dlq.retriable") == [b"false"]
    assert header(letter.headers, "ecom.dlq.ts") == [b"2024-05-01T10:00:00.020Z"]
    assert header(letter.headers, "ecom.dlq.source.timestamp") == [b"2024-05-01T08:00:00.000Z"]
    assert header(letter.headers, "ecom.dlq.event_id") == [b"e-9"]

    back = read_dead_letter(letter.key, letter.value, letter.headers)
    assert back.info == letter.info
    assert back.original_headers == own and back.has_value
    assert back.info.error.type == "MalformedJson" and back.info.event_id == "e-9"
    assert back.info.value_size == len(value) and back.info.attempts == 0
    # The model is the documented schema of what the headers say.
    assert DeadLetter.model_validate_json(back.info.model_dump_json()) == back.info


def test_binary_values_and_keys_stay_bytes() -> None:
    value, key = b"\xff\x00\x81binary", b"\xfe\x00"
    letter = dead_letter(record(value, key=key), MalformedJson("x"), max_bytes=LIMIT, now=NOW)
    back = read_dead_letter(letter.key, letter.value, letter.headers)
    assert (back.key, back.value) == (key, value)
    assert back.info.event_id is None


def test_the_error_context_of_an_earlier_failure_is_replaced_not_repeated() -> None:
    first = dead_letter(record(b"{}"), MalformedJson("first"), max_bytes=LIMIT, now=NOW)
    # Someone sent the dead letter back as it is, headers included; it fails again.
    again = dead_letter(
        record(first.value, headers=first.headers), OversizeText("second"), max_bytes=LIMIT, now=NOW
    )
    assert header(again.headers, "__connect.errors.exception.message") == [b"second"]
    assert read_dead_letter(again.key, again.value, again.headers).original_headers == ()


def test_a_redrive_counts_attempts_and_the_next_dead_letter_carries_them() -> None:
    own = (("trace", b"abc"),)
    first = dead_letter(record(b"{}", headers=own), OversizeText("long"), max_bytes=LIMIT, now=NOW)
    sent = redrive_headers(read_dead_letter(first.key, first.value, first.headers))
    assert sent == (
        ("trace", b"abc"),
        ("ecom.redrive.attempts", b"1"),
        ("ecom.redrive.origin", b"reviews[2]@41"),
    )
    # The worker reads the re-driven record at another offset and fails again.
    again = SourceRecord("reviews", 0, 77, b"k", b"{}", 1.0, headers=sent)
    second = read_dead_letter(*_wire(dead_letter(again, OversizeText("long"), max_bytes=LIMIT, now=NOW)))
    assert second.info.attempts == 1 and second.origin == "reviews[2]@41"
    assert (second.info.source.partition, second.info.source.offset) == (0, 77)
    resent = redrive_headers(second)
    assert header(resent, "ecom.redrive.attempts") == [b"2"], "one counter, incremented, never repeated"
    assert header(resent, "ecom.redrive.origin") == [b"reviews[2]@41"]
    assert header(resent, "trace") == [b"abc"]


def _wire(
    letter: deadletter.DeadLetterRecord,
) -> tuple[bytes | None, bytes, tuple[tuple[str, bytes | None], ...]]:
    return letter.key, letter.value, letter.headers


def test_the_largest_input_the_worker_accepts_fits_whole() -> None:
    value = orjson.dumps({"event_id": "big", "text": "x" * (100_000 - 40)})
    assert len(value) <= 100_000
    own = (("traceparent", b"00-" + b"a" * 50),)
    letter = dead_letter(record(value, headers=own), OversizeText("x"), max_bytes=LIMIT, now=NOW)
    assert letter.value == value and letter.info.omitted == []
    assert record_size(letter.key, letter.value, letter.headers) <= LIMIT


def test_an_input_over_the_limit_leaves_out_its_value_then_its_headers_and_says_so() -> None:
    value = orjson.dumps({"event_id": "big", "text": "x" * (LIMIT + 10)})
    letter = dead_letter(record(value), OversizeMessage("too big"), max_bytes=LIMIT, now=NOW)
    assert letter.value == b"" and letter.info.omitted == ["value"]
    back = read_dead_letter(letter.key, letter.value, letter.headers)
    assert not back.has_value and back.info.value_size == len(value) and back.info.event_id == "big"

    huge_headers = (("blob", b"h" * (LIMIT + HEADROOM)), ("ecom.redrive.attempts", b"2"))
    letter = dead_letter(record(value, headers=huge_headers), OversizeMessage("x"), max_bytes=LIMIT, now=NOW)
    assert letter.info.omitted == ["value", "headers"]
    assert record_size(letter.key, letter.value, letter.headers) <= LIMIT
    assert header(letter.headers, "ecom.redrive.attempts") == [b"2"], "the counter survives"


def test_a_dead_letter_written_by_kafka_connect_is_read() -> None:
    headers = (
        ("__connect.errors.topic", b"reviews"),
        ("__connect.errors.partition", b"1"),
        ("__connect.errors.offset", b"5"),
        ("__connect.errors.exception.class.name", b"org.apache.kafka.connect.errors.DataException"),
        ("__connect.errors.exception.message", b"bad"),
    )
    back = read_dead_letter(b"k", b'{"event_id": "c-1"}', headers, timestamp_ms=1_714_550_400_000)
    assert back.info.event_id == "c-1" and back.info.source.offset == 5
    assert back.info.dead_lettered_ts == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert back.has_value and not back.info.error.retriable


def envelope_v1(payload: str, encoding: str = "utf-8", truncated: bool = False) -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "event_id": "e-1",
            "error": {"type": "InvalidImage", "message": "bad image", "retriable": False},
            "source": {
                "topic": "reviews",
                "partition": 2,
                "offset": 4711,
                "key": base64.b64encode(b"\xfe").decode(),
                "key_encoding": "base64",
                "timestamp": "2024-05-01T10:00:00.012Z",
            },
            "payload": payload,
            "payload_encoding": encoding,
            "payload_size": 1234,
            "payload_truncated": truncated,
            "dead_lettered_ts": "2024-05-01T10:00:00.020Z",
        }
    )


def test_the_envelope_of_schema_1_is_still_read_and_can_be_redriven() -> None:
    back = read_dead_letter(None, envelope_v1('{"event_id": "e-1"}'), ())
    assert back.value == b'{"event_id": "e-1"}' and back.key == b"\xfe"
    assert back.info.schema_version == 1 and back.info.error.type == "InvalidImage"
    assert back.info.omitted == ["headers"] and back.has_value
    binary = read_dead_letter(b"k", envelope_v1(base64.b64encode(b"\x00\xff").decode(), "base64"), ())
    assert binary.value == b"\x00\xff" and binary.key == b"k"


def test_a_cut_envelope_of_schema_1_cannot_be_redriven() -> None:
    back = read_dead_letter(b"k", envelope_v1('{"event_id": "e-1", "te', truncated=True), ())
    assert not back.has_value and back.info.omitted == ["value", "headers"]


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"not json", ()),
        (b'{"event_id": "x"}', ()),
        (b"{}", (("__connect.errors.topic", b"t"), ("__connect.errors.partition", b"zero"))),
    ],
)
def test_what_is_not_a_dead_letter_says_so(value: bytes, headers: tuple[tuple[str, bytes], ...]) -> None:
    with pytest.raises(NotADeadLetter):
        read_dead_letter(None, value, headers, timestamp_ms=1)
