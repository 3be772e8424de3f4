"""Event schemas: validation on entry, best-effort event ids (dead letters: test_dead_letters.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from streams.errors import MalformedJson, OversizeMessage, SchemaViolation
from streams.events import (
    ClickEvent,
    ProductUploadEvent,
    ReviewEvent,
    event_id_of,
    parse_event,
)

REVIEW = {
    "event_id": "e-1",
    "review_id": "r-1",
    "product_id": 1078,
    "user_id": "u-1",
    "text": "Love it",
    "rating": 5,
    "ts": "2024-05-01T10:00:00+02:00",
}


def raw(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_a_good_review_parses_with_ids_normalised_and_ts_in_utc() -> None:
    event = parse_event(ReviewEvent, raw(REVIEW), 10_000)
    assert event.product_id == "1078"
    assert event.ts == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert event.images == [] and event.schema_version == 1


def test_unix_seconds_and_unknown_fields_are_accepted() -> None:
    event = parse_event(ReviewEvent, raw({**REVIEW, "ts": 1_714_550_400, "shop": "x"}), 10_000)
    assert event.ts == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "error", "fragment"),
    [
        (b'{"event_id": "x", ', MalformedJson, "not JSON"),
        (b"[1, 2]", MalformedJson, "JSON object"),
        (b"\xff\xfe", MalformedJson, "not JSON"),
        (raw({k: v for k, v in REVIEW.items() if k != "text"}), SchemaViolation, "text"),
        (raw({**REVIEW, "rating": 7}), SchemaViolation, "rating"),
        (raw({**REVIEW, "schema_version": 2}), SchemaViolation, "schema_version"),
        (raw({**REVIEW, "event_id": ""}), SchemaViolation, "event_id"),
        (raw({**REVIEW, "ts": "yesterday"}), SchemaViolation, "ts"),
        (raw({**REVIEW, "text": "x" * 200}), OversizeMessage, "exceeds"),
    ],
)
def test_bad_reviews_are_rejected_with_a_reason(
    payload: bytes, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        parse_event(ReviewEvent, payload, 150)


def test_click_action_is_one_of_three() -> None:
    click = {"event_id": "c", "user_id": 1, "session_id": 2, "product_id": 3, "ts": 0}
    assert parse_event(ClickEvent, raw({**click, "action": "purchase"}), 1000).action == "purchase"
    with pytest.raises(SchemaViolation, match="action"):
        parse_event(ClickEvent, raw({**click, "action": "wishlist"}), 1000)


def test_product_fields_are_optional_but_typed() -> None:
    event = parse_event(ProductUploadEvent, raw({"event_id": "p", "product_id": "x", "ts": 0}), 1000)
    assert event.title is None and event.image is None
    with pytest.raises(SchemaViolation):
        parse_event(ProductUploadEvent, raw({"event_id": "p", "product_id": "x", "ts": 0, "title": 3}), 1000)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (raw(REVIEW), "e-1"),
        (raw({**REVIEW, "event_id": 42}), "42"),
        (b'{"event_id": "half-a-message", "text": "unterminated', "half-a-message"),
        (b'\xff{"event_id": "in-binary"}', "in-binary"),
        (b'[{"event_id": "in-a-list"}]', "in-a-list"),
        (b"garbage", None),
        (raw({"no": "id"}), None),
    ],
)
def test_event_id_is_found_where_it_can_be(payload: bytes, expected: str | None) -> None:
    assert event_id_of(payload) == expected
