"""Dead letters: the input record itself, whole, with what went wrong in its headers.

The Kafka Connect convention (`errors.deadletterqueue.context.headers.enable`): a dead letter's value is
the original value bytes, its key the original key, its headers the original headers, and the error
context follows as headers of its own: `__connect.errors.*` where Connect defines a name (source topic,
partition, offset, exception class and message), `ecom.dlq.*` for the rest. Re-driving a dead letter
(`python -m streams dlq redrive`) therefore reproduces the exact input record; `ecom.redrive.attempts`,
one of the record's own headers, counts how often that happened, so that a record that keeps failing
is not re-driven in a loop. The contract is documented in docs/events.md ("Dead letters").

A dead letter holds the original whole up to `max_dead_letter_bytes` (key, value and headers together:
the largest input the worker accepts, `ECOM_MAX_MESSAGE_BYTES`, plus `HEADROOM` for the headers). A
larger one, which only an input already over that limit can make (`OversizeMessage`), leaves out the
value, then the original headers, and says so in `ecom.dlq.omitted`; its source coordinates still point
at the whole original.

`read_dead_letter` reads a dead letter back, and also the JSON envelope the service wrote before
(schema_version 1), so that operators' tools read a topic that holds both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from streams.errors import EnrichmentError
from streams.events import DEAD_LETTER_VERSION, DeadLetter, ErrorInfo, SourceInfo, event_id_of
from streams.records import Header, SourceRecord

# Kafka Connect's names (org.apache.kafka.connect.runtime.errors.DeadLetterQueueReporter).
TOPIC = "__connect.errors.topic"
PARTITION = "__connect.errors.partition"
OFFSET = "__connect.errors.offset"
EXCEPTION = "__connect.errors.exception.class.name"
MESSAGE = "__connect.errors.exception.message"
# The service's own.
VERSION = "ecom.dlq.version"
RETRIABLE = "ecom.dlq.retriable"
EVENT_ID = "ecom.dlq.event_id"
SOURCE_TS = "ecom.dlq.source.timestamp"
DEAD_LETTERED_TS = "ecom.dlq.ts"
VALUE_SIZE = "ecom.dlq.value.size"
OMITTED = "ecom.dlq.omitted"
# On the input record (written by `dlq redrive`), so kept in its dead letter with its other headers.
ATTEMPTS = "ecom.redrive.attempts"
ORIGIN = "ecom.redrive.origin"

CONTEXT_PREFIXES = ("__connect.errors.", "ecom.dlq.")
REDRIVE_HEADERS = (ATTEMPTS, ORIGIN)
HEADROOM = 32 * 1024  # the error context and the original key and headers, beside the largest value
MESSAGE_MAX_CHARS = 2000

Omitted = Literal["value", "headers"]
OMITTABLE: tuple[Omitted, ...] = ("value", "headers")


class NotADeadLetter(ValueError):
    """A record on a dead-letter topic that is neither a dead letter nor an envelope of schema 1."""


def max_dead_letter_bytes(max_message_bytes: int) -> int:
    """The largest dead letter the service writes: the largest input it accepts, plus `HEADROOM`."""
    return max_message_bytes + HEADROOM


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[Header]) -> int:
    """An upper bound of a record's size in a batch (what a producer compares to `max_request_size`)."""
    size = 64 + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += 10 + len(name.encode()) + len(data or b"")
    return size


def is_context(name: str) -> bool:
    """Whether a header is part of a dead letter's error context (never an input's own)."""
    return name.startswith(CONTEXT_PREFIXES)


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as it goes on its topic (or came from it), with what its headers say."""

    key: bytes | None
    value: bytes
    headers: tuple[Header, ...]
    info: DeadLetter

    @property
    def original_headers(self) -> tuple[Header, ...]:
        """The input record's headers: the dead letter's, less the error context."""
        return tuple(h for h in self.headers if not is_context(h[0]))

    @property
    def has_value(self) -> bool:
        """Whether the original value is here, whole (so that a re-drive reproduces the input)."""
        return "value" not in self.info.omitted

    @property
    def origin(self) -> str:
        """The coordinates of the first failure of this input, whatever the re-drives since."""
        return self.info.origin or coords(self.info.source)


def coords(source: SourceInfo) -> str:
    return f"{source.topic}[{source.partition}]@{source.offset}"


# --- writing -------------------------------------------------------------------------------------------
def dead_letter(
    record: SourceRecord, error: EnrichmentError, *, max_bytes: int, now: datetime
) -> DeadLetterRecord:
    """The dead letter of `record`: the record whole, its error in headers; what would make it larger
    than `max_bytes` is left out (the value first, then the original headers) and named in the
    headers."""
    kept = tuple(h for h in record.headers if not is_context(h[0]))
    info = DeadLetter(
        event_id=event_id_of(record.value),
        error=ErrorInfo(type=error.reason, message=str(error)[:MESSAGE_MAX_CHARS], retriable=error.retriable),
        source=SourceInfo(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=datetime.fromtimestamp(record.timestamp, UTC) if record.timestamp is not None else None,
        ),
        attempts=attempts_of(kept),
        origin=header_text(kept, ORIGIN),
        value_size=len(record.value),
        dead_lettered_ts=now,
    )
    value, headers = record.value, kept
    omitted: list[Omitted] = []
    while record_size(record.key, value, (*headers, *context_headers(info, omitted))) > max_bytes:
        if "value" not in omitted:
            value = b""
            omitted.append("value")
        elif "headers" not in omitted:
            headers = tuple(h for h in kept if h[0] in REDRIVE_HEADERS)
            omitted.append("headers")
        else:
            break  # the error context alone: small, and the broker's limit is far above it
    if omitted:
        info = info.model_copy(update={"omitted": omitted})
    return DeadLetterRecord(record.key, value, (*headers, *context_headers(info)), info)


def assemble(info: DeadLetter, key: bytes | None = None, value: bytes = b"") -> DeadLetterRecord:
    """A dead letter without an input record to carry (a skipped undecodable batch)."""
    return DeadLetterRecord(key, value, context_headers(info), info)


def context_headers(info: DeadLetter, omitted: Sequence[Omitted] | None = None) -> tuple[Header, ...]:
    """The error context of a dead letter, as headers (UTF-8 text; times in RFC 3339, UTC)."""
    omitted = info.omitted if omitted is None else omitted
    source = info.source
    headers: list[tuple[str, str]] = [
        (TOPIC, source.topic),
        (PARTITION, str(source.partition)),
        (OFFSET, str(source.offset)),
        (EXCEPTION, info.error.type),
        (MESSAGE, info.error.message),
        (VERSION, str(DEAD_LETTER_VERSION)),
        (RETRIABLE, "true" if info.error.retriable else "false"),
    ]
    if info.event_id is not None:
        headers.append((EVENT_ID, info.event_id))
    if source.timestamp is not None:
        headers.append((SOURCE_TS, rfc3339(source.timestamp)))
    headers.append((DEAD_LETTERED_TS, rfc3339(info.dead_lettered_ts)))
    if info.value_size is not None:
        headers.append((VALUE_SIZE, str(info.value_size)))
    if omitted:
        headers.append((OMITTED, ",".join(omitted)))
    return tuple((name, text.encode("utf-8", "backslashreplace")) for name, text in headers)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- re-driving ----------------------------------------------------------------------------------------
def redrive_headers(letter: DeadLetterRecord) -> tuple[Header, ...]:
    """The headers of a dead letter's input sent again: the original ones, with the attempts counter one
    up and the origin of the first failure."""
    kept = tuple(h for h in letter.original_headers if h[0] not in REDRIVE_HEADERS)
    return (
        *kept,
        (ATTEMPTS, str(letter.info.attempts + 1).encode()),
        (ORIGIN, letter.origin.encode("utf-8", "backslashreplace")),
    )


# --- reading -------------------------------------------------------------------------------------------
def header_text(headers: Iterable[Header], name: str) -> str | None:
    """The last value of header `name` as text (None when absent or null)."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    return None if found is None else found.decode("utf-8", "replace")


def attempts_of(headers: Iterable[Header]) -> int:
    """`ecom.redrive.attempts` of a record (0 when absent or unreadable)."""
    text = header_text(headers, ATTEMPTS)
    try:
        return max(0, int(text)) if text is not None else 0
    except ValueError:
        return 0


def read_dead_letter(
    key: bytes | None, value: bytes | None, headers: Iterable[Header], timestamp_ms: int | None = None
) -> DeadLetterRecord:
    """A record of a dead-letter topic, read: one with the error in its headers (this service's, or
    Kafka Connect's), or a JSON envelope of schema 1. Raises `NotADeadLetter` for anything else."""
    headers = tuple(headers)
    value = value or b""
    names = {name for name, _ in headers}
    try:
        if TOPIC in names:
            return DeadLetterRecord(key, value, headers, _from_headers(value, headers, timestamp_ms))
        return _from_envelope(key, value)
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, NotADeadLetter):
            raise
        raise NotADeadLetter(f"unreadable dead letter: {type(exc).__name__}: {exc}") from None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _from_headers(value: bytes, headers: tuple[Header, ...], timestamp_ms: int | None) -> DeadLetter:
    def text(name: str) -> str | None:
        return header_text(headers, name)

    size = text(VALUE_SIZE)
    omitted = [part for part in OMITTABLE if part in (text(OMITTED) or "").split(",")]
    record_time = datetime.fromtimestamp(timestamp_ms / 1000, UTC) if timestamp_ms else None
    dead_lettered = _time(text(DEAD_LETTERED_TS)) or record_time
    if dead_lettered is None:
        raise NotADeadLetter(f"no {DEAD_LETTERED_TS} header and no record time")
    return DeadLetter(
        schema_version=int(text(VERSION) or DEAD_LETTER_VERSION),
        event_id=text(EVENT_ID) if text(VERSION) else event_id_of(value),
        error=ErrorInfo(
            type=text(EXCEPTION) or "unknown",
            message=text(MESSAGE) or "",
            retriable=text(RETRIABLE) == "true",
        ),
        source=SourceInfo(
            topic=text(TOPIC) or "",
            partition=int(text(PARTITION) or -1),
            offset=int(text(OFFSET) or -1),
            timestamp=_time(text(SOURCE_TS)),
        ),
        attempts=attempts_of(headers),
        origin=text(ORIGIN),
        value_size=int(size) if size is not None else len(value) if "value" not in omitted else None,
        omitted=omitted,
        dead_lettered_ts=dead_lettered,
    )


def _decode(data: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise NotADeadLetter(f"payload is not base64: {exc}") from None
    return data.encode("utf-8", "surrogatepass")


def _from_envelope(key: bytes | None, value: bytes) -> DeadLetterRecord:
    """The JSON envelope of schema 1: the payload inside it, the original headers never kept."""
    try:
        obj: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise NotADeadLetter("neither error-context headers nor a JSON envelope") from None
    if not isinstance(obj, dict) or not {"error", "source", "payload"} <= obj.keys():
        raise NotADeadLetter("neither error-context headers nor a JSON envelope")
    source, error = obj["source"], obj["error"]
    truncated = bool(obj.get("payload_truncated"))
    omitted: list[Omitted] = ["value", "headers"] if truncated else ["headers"]
    original = b"" if truncated else _decode(obj["payload"], obj.get("payload_encoding", "utf-8"))
    if key is None and source.get("key") is not None:
        key = _decode(source["key"], source.get("key_encoding") or "utf-8")
    info = DeadLetter(
        schema_version=int(obj.get("schema_version", 1)),
        event_id=obj.get("event_id"),
        error=ErrorInfo(type=error["type"], message=error["message"], retriable=error["retriable"]),
        source=SourceInfo(
            topic=source["topic"],
            partition=source["partition"],
            offset=source["offset"],
            timestamp=source.get("timestamp"),
        ),
        value_size=obj.get("payload_size"),
        omitted=omitted,
        dead_lettered_ts=obj["dead_lettered_ts"],
    )
    # The value is the original input; the headers are those a dead letter of today would carry.
    return DeadLetterRecord(key, original, context_headers(info), info)
