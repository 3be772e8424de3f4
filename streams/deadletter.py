"""The dead-letter envelope: what failed, where it came from, the original bytes, and when."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from streams.errors import EnrichmentError
from streams.events import DeadLetter, ErrorInfo, SourceInfo, event_id_of
from streams.records import SourceRecord


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def envelope(record: SourceRecord, error: EnrichmentError, *, max_payload: int, now: datetime) -> DeadLetter:
    """The envelope for `record`; a payload over `max_payload` bytes is cut (the record must still fit
    the broker's message size, and the source offset points at the whole original)."""
    payload = record.value
    truncated = len(payload) > max_payload
    if truncated:
        payload = payload[:max_payload]
    text, encoding = _text_or_base64(payload)
    key, key_encoding = _text_or_base64(record.key) if record.key is not None else (None, None)
    return DeadLetter(
        event_id=event_id_of(record.value),
        error=ErrorInfo(type=error.reason, message=str(error)[:2000], retriable=error.retriable),
        source=SourceInfo(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            key_encoding=key_encoding,  # type: ignore[arg-type]
            timestamp=datetime.fromtimestamp(record.timestamp, UTC) if record.timestamp is not None else None,
        ),
        payload=text,
        payload_encoding=encoding,  # type: ignore[arg-type]
        payload_size=len(record.value),
        payload_truncated=truncated,
        dead_lettered_ts=now,
    )
