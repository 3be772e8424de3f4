"""Event times read exactly as docs/events.md says, and the edges of JSON: error types as documented."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.errors import MalformedJson, SchemaViolation
from streams.events import ClickEvent, ReviewEvent, parse_event

REVIEW = {"event_id": "e-1", "review_id": "r-1", "product_id": "p", "user_id": "u-1", "text": "Love it"}


def review(ts: Any, **extra: Any) -> bytes:
    return orjson.dumps({**REVIEW, "ts": ts, **extra})


def with_raw(fragment: bytes, ts: bytes = b"0") -> bytes:
    """A review whose JSON carries `fragment` verbatim (what orjson would not write)."""
    return orjson.dumps(REVIEW)[:-1] + b',"ts":' + ts + fragment + b"}"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1_714_550_400, datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        (1_714_550_400.25, datetime(2024, 5, 1, 8, 0, 0, 250_000, tzinfo=UTC)),
        # Seconds whatever the size: 9999-12-31T23:59:59Z, never milliseconds (1978-01-11).
        (253_402_300_799, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (20_000_000_000, datetime(2603, 10, 11, 11, 33, 20, tzinfo=UTC)),
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("2024-05-01T10:00:00.5Z", datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01 10:00:00", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),  # no offset: UTC
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_times_are_unix_seconds_or_rfc3339(ts: Any, expected: datetime) -> None:
    assert parse_event(ReviewEvent, review(ts), 10_000).ts == expected


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        (-1, "outside"),
        (-0.5, "outside"),
        (253_402_300_800, "outside"),  # one second past 9999-12-31T23:59:59Z
        (10**18, "outside"),
        ("1969-12-31T23:59:59Z", "outside"),
        ("9999-12-31T23:59:59-01:00", "outside"),  # in UTC, year 10000
        ("0001-01-01T00:00:00+01:00", "outside"),  # in UTC, year 0
        ("1714550400", "RFC 3339"),  # seconds are a JSON number, not a string
        ("2024-05-01", "RFC 3339"),  # a date is not a time
        ("yesterday", "RFC 3339"),
        (True, "Unix seconds"),
    ],
)
def test_out_of_range_or_undocumented_times_are_schema_violations(ts: Any, fragment: str) -> None:
    with pytest.raises(SchemaViolation, match=f"ts: .*{fragment}"):
        parse_event(ReviewEvent, review(ts), 10_000)


def test_an_infinite_time_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation, match=r"ts: .*finite"):
        parse_event(ReviewEvent, with_raw(b"", ts=b"1e400"), 10_000)


@pytest.mark.parametrize(
    "fragment",
    [
        b',"extra":1e400',
        b',"extra":-1e400',
        b',"extra":' + b"9" * 5000,
        b',"extra":"\\ud800"',
        b',"x":[1e999]',
    ],
)
def test_unknown_fields_are_ignored_whatever_they_hold(fragment: bytes) -> None:
    event = parse_event(ReviewEvent, with_raw(fragment), 10_000)
    assert event.event_id == "e-1" and event.text == "Love it"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", b'"a\\ud800b"'),
        ("user_id", b'"\\udc00"'),
        ("images", b'["\\ud83d"]'),
        ("review_id", b'"x\\udfff"'),
    ],
)
def test_a_lone_surrogate_in_a_known_field_is_a_schema_violation(field: str, value: bytes) -> None:
    obj = {k: v for k, v in REVIEW.items() if k != field}
    raw = orjson.dumps({**obj, "ts": 0})[:-1] + b',"' + field.encode() + b'":' + value + b"}"
    with pytest.raises(SchemaViolation, match=f"{field}.*not valid Unicode"):
        parse_event(ReviewEvent, raw, 10_000)


def test_a_valid_surrogate_pair_is_text() -> None:
    raw = with_raw(b"")[:-1] + b',"text":"smile \\ud83d\\ude42"}'
    assert parse_event(ReviewEvent, raw, 10_000).text == "smile 🙂"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"event_id": "e", "ts": NaN}',  # not JSON, though Python's json module would read it
        b'{"event_id": "e", "ts": Infinity}',
        b'{"event_id": "e", "ts": 0, "x": "\\ud800',  # cut short
        b'{"event_id": "\xff\xfe", "ts": 0}',  # not UTF-8
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_what_is_not_json_stays_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedJson):
        parse_event(ClickEvent, payload, 100_000)
