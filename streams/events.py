"""Event schemas (documented for producers and consumers in docs/events.md).

Every event is a JSON object (orjson) with a `schema_version`; inputs are validated on entry and a
violation raises an `InvalidEvent` subclass, which sends the event to its dead-letter topic. Inputs
ignore unknown fields (producers may add fields without breaking the service); outputs are exact.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from streams.errors import MalformedJson, OversizeMessage, SchemaViolation

SCHEMA_VERSION = 1
SUPPORTED_INPUT_VERSIONS = frozenset({1})


def _id_to_str(value: Any) -> Any:
    # Ids are strings on the wire; integer ids (Instacart, many shops) are accepted and normalised.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_to_str), Field(min_length=1, max_length=128)]


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The times an input may carry: 1970-01-01T00:00:00Z up to 9999-12-31T23:59:59.999999Z.
TS_MIN = EPOCH
TS_MAX = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
_TS_END_SECONDS = 253_402_300_800  # TS_MAX + 1 microsecond, in Unix seconds
_TS_RANGE = "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
# RFC 3339 date-time; a time without offset is read as UTC (docs/events.md).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?")


def _event_time(value: Any) -> Any:
    """A number is Unix seconds, whatever its size (pydantic alone would read a large one as
    milliseconds); a string must be an RFC 3339 date-time, which pydantic then parses."""
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 date-time string or a number of Unix seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of Unix seconds")
        try:
            if not 0 <= value < _TS_END_SECONDS:
                raise OverflowError
            return EPOCH + timedelta(seconds=value)
        except OverflowError:  # also a fraction that rounds up past the last microsecond
            raise ValueError(f"{value} Unix seconds is outside {_TS_RANGE}") from None
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time (2024-05-01T10:00:00Z) or a number of Unix seconds")
    return value


EventTime = Annotated[datetime, BeforeValidator(_event_time)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False, frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: Id
    ts: EventTime = Field(
        description="when the event happened: RFC 3339 or a number of Unix seconds; UTC if naive"
    )

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_INPUT_VERSIONS:
            raise ValueError(
                f"unsupported schema_version {value}; supported: {sorted(SUPPORTED_INPUT_VERSIONS)}"
            )
        return value

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            value = _as_utc(value)
        except OverflowError:  # an offset carried a valid local time past year 9999 (or before 1)
            raise ValueError(f"in UTC, the time is outside {_TS_RANGE}") from None
        if not TS_MIN <= value <= TS_MAX:
            raise ValueError(f"{value.isoformat()} is outside {_TS_RANGE}")
        return value


class ReviewEvent(_Input):
    """Topic `reviews`, keyed by product_id."""

    review_id: Id
    product_id: Id
    user_id: Id
    text: str
    rating: int | None = Field(default=None, ge=1, le=5)
    images: list[str] = Field(default_factory=list, description="base64-encoded JPEG/PNG/WebP photos")


class ProductUploadEvent(_Input):
    """Topic `product-uploads`, keyed by product_id."""

    product_id: Id
    title: str | None = None
    description: str | None = None
    image: str | None = Field(default=None, description="base64-encoded JPEG/PNG/WebP photo")


ClickAction = Literal["view", "add_to_cart", "purchase"]


class ClickEvent(_Input):
    """Topic `clickstream`, keyed by user_id."""

    user_id: Id
    session_id: Id
    product_id: Id
    action: ClickAction


# --- Outputs --------------------------------------------------------------------------------------
class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(description="the input event's id: consumers deduplicate by it")
    source_ts: datetime = Field(description="the input event's ts")
    processed_ts: datetime = Field(description="when the service published this record")


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str


class SentimentProbabilities(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    negative: float
    neutral: float
    positive: float


SentimentLabel = Literal["negative", "neutral", "positive"]


class Sentiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: SentimentLabel
    probabilities: SentimentProbabilities


class ReviewSentiment(_Output):
    """Topic `review-sentiment`, keyed by review_id."""

    review_id: str
    product_id: str
    user_id: str
    rating: int | None
    model: ModelRef
    sentiment: Sentiment


class ScoredLabel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    score: float


class ProductCategory(_Output):
    """Topic `product-categories`, keyed by product_id."""

    product_id: str
    model: ModelRef
    category: ScoredLabel
    top_categories: list[ScoredLabel]
    embedding: list[float]


RecommendationSource = Literal["history", "cooccurrence", "content", "popular"]


class ScoredItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: str
    score: float
    source: RecommendationSource = Field(description="the source that contributes most to the score")


class Recommendation(_Output):
    """Topic `recommendations`, keyed by user_id; one per click."""

    user_id: str
    session_id: str
    product_id: str = Field(description="the clicked product that triggered this update")
    action: ClickAction
    model: ModelRef
    items: list[ScoredItem]
    latency_ms: float = Field(
        description="click to publish: from the click's record time on the clickstream (when it was "
        "produced; its ts when the record has none) to processed_ts, in milliseconds"
    )


# --- Dead letters --------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    message: str
    retriable: bool


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: int
    offset: int
    timestamp: datetime | None = Field(description="the source record's time, when it had one")


DEAD_LETTER_VERSION = 2  # 1: the JSON envelope with the payload inside (docs/events.md, "Migration")


class DeadLetter(BaseModel):
    """What a dead letter on `<input>.dlq` says about its failure: its error-context headers, read.

    The dead-letter record itself is the input record, whole: its value is the original value bytes,
    its key the original key, its headers the original headers followed by these fields as headers
    (the Kafka Connect convention; names and encodings in docs/events.md, "Dead letters").
    `streams.deadletter` writes and reads them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = DEAD_LETTER_VERSION
    event_id: str | None = Field(description="the input's event_id when it could be read")
    error: ErrorInfo
    source: SourceInfo
    attempts: int = Field(default=0, ge=0, description="times the original record has been re-driven")
    origin: str | None = Field(
        default=None, description="`topic[partition]@offset` of the first failure, once re-driven"
    )
    value_size: int | None = Field(description="bytes of the original value; null when it was never read")
    omitted: list[Literal["value", "headers"]] = Field(
        default_factory=list, description="what of the original record the dead letter does not hold"
    )
    dead_lettered_ts: datetime


# --- Search by photo or by words ----------------------------------------------------------------------
MAX_QUERY_K = 100


class ProductQueryEvent(_Input):
    """Topic `product-queries`, keyed by query_id: the catalogue products closest to a photo or words."""

    query_id: Id
    user_id: Id | None = None
    text: str | None = Field(default=None, description="words to search with")
    image: str | None = Field(default=None, description="base64-encoded JPEG/PNG/WebP photo to search with")
    category: str | None = Field(default=None, description="only products of this category (a leaf label)")
    k: int = Field(default=10, ge=1, le=MAX_QUERY_K, description="how many products to return")


class ProductMatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: str
    score: float = Field(description="cosine between the query's embedding and the product's")
    category: str | None = Field(description="the product's category, as its listing was enriched")


class ProductMatches(_Output):
    """Topic `product-matches`, keyed by query_id; one per query."""

    query_id: str
    user_id: str | None
    model: ModelRef
    query_category: ScoredLabel = Field(description="the model's most probable category for the query")
    category_filter: str | None
    matches: list[ProductMatch]
    catalogue_size: int = Field(description="products in the index the query was matched against")
    latency_ms: float = Field(
        description="query to publish: from the query's record time (its ts when the record has none) "
        "to processed_ts, in milliseconds"
    )


InputEvent = ReviewEvent | ProductUploadEvent | ClickEvent | ProductQueryEvent
E = TypeVar("E", bound=_Input)


def dumps(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json"))


def load_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The raw message as a JSON object, or the reason it is not one."""
    return _load_object(raw, max_bytes)[0]


def _load_object(raw: bytes, max_bytes: int) -> tuple[dict[str, Any], bool]:
    """The object, and whether its strings may hold lone surrogates (orjson's never do)."""
    if len(raw) > max_bytes:
        raise OversizeMessage(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        obj, lenient = orjson.loads(raw), False
    except orjson.JSONDecodeError as exc:
        obj, lenient = _load_what_orjson_refuses(raw, exc), True
    if not isinstance(obj, dict):
        raise MalformedJson(f"expected a JSON object, got {type(obj).__name__}")
    return obj, lenient


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _int_or_float(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:  # more digits than Python converts: as a float, infinite
        return float(digits)


def _load_what_orjson_refuses(raw: bytes, refused: orjson.JSONDecodeError) -> Any:
    """Well-formed JSON that orjson refuses: a number beyond a double (`1e400`) or a lone surrogate
    escape (`"\\ud800"`). The standard library reads both (as infinity, and as a str that is not valid
    Unicode); whether the event is usable is then up to its schema, for only known fields matter. What
    the standard library refuses too is not JSON."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_not_json, parse_int=_int_or_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedJson(f"not JSON: {refused}") from None


def _not_unicode(value: Any, where: str) -> str | None:
    """The first place in `value` holding a string that is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _not_unicode(item, f"{where}[{i}]")
            if found:
                return found
    return None


def parse_event(model: type[E], raw: bytes, max_bytes: int) -> E:
    obj, lenient = _load_object(raw, max_bytes)
    try:
        event = model.model_validate(obj)
    except ValidationError as exc:
        raise SchemaViolation(_summarise(exc)) from None
    for name in type(event).model_fields if lenient else ():  # unknown fields stay ignored
        where = _not_unicode(getattr(event, name), name)
        if where:
            raise SchemaViolation(f"{where}: text that is not valid Unicode (a lone surrogate escape)")
    return event


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_EVENT_ID = re.compile(rb'"event_id"\s*:\s*"([^"\\]{1,128})"')


def event_id_of(raw: bytes) -> str | None:
    """Best effort: the event_id of a payload that may be invalid (for the dead-letter envelope).

    A JSON object gives its `event_id` field; anything else is searched for `"event_id": "..."`.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        value = obj.get("event_id")
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)[:128]
        return None
    match = _EVENT_ID.search(raw)
    return match.group(1).decode("utf-8", "replace") if match else None


def utcnow() -> datetime:
    return datetime.now(UTC)
