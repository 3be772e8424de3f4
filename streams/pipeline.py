"""What happens to one input event, independent of Faust: parse, check, enrich, publish or dead-letter.

`Pipeline.handle` finishes every event with exactly one delivered record (the output, or the dead
letter) and returns the outcome; it never raises for a bad event. Transient failures (Triton away, the
broker not acknowledging) are retried inside, with backoff, for as long as they last: the event waits,
and so does the agent that holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel

from streams import enrich, metrics
from streams.deadletter import envelope
from streams.errors import EnrichmentError, InternalError, ShuttingDown
from streams.events import (
    ClickEvent,
    ProductUploadEvent,
    Recommendation,
    ReviewEvent,
    dumps,
    parse_event,
    utcnow,
)
from streams.inference import InferenceService, RetryPolicy
from streams.recommendations import Recommender
from streams.records import SourceRecord
from streams.settings import Settings
from streams.topics import TopicNames
from streams.validation import Limits, product_input, review_input

log = logging.getLogger(__name__)

Outcome = Literal["enriched", "dead_lettered"]


class Publisher(Protocol):
    async def publish(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        """Return once the broker has acknowledged the record; retry transient failures meanwhile.

        `partition`: an explicit partition (the recommender's internal topic); else the key decides."""
        ...


@dataclass(frozen=True)
class Result:
    topic: str
    key: bytes
    event: BaseModel
    source_ts: datetime
    received_ts: datetime | None = None  # a click's record time: its recommendation latency starts here


@dataclass(frozen=True)
class PipelineConfig:
    limits: Limits
    top_k_categories: int = 5
    recommendations_k: int = 10
    dlq_max_payload_bytes: int = 256_000

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            limits=Limits.from_settings(settings),
            top_k_categories=settings.top_k_categories,
            recommendations_k=settings.recommendations_k,
            dlq_max_payload_bytes=settings.dlq_max_payload_bytes,
        )


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        topics: TopicNames,
        inference: InferenceService,
        recommender: Recommender,
        publisher: Publisher,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.topics = topics
        self.inference = inference
        self.recommender = recommender
        self.publisher = publisher
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self._sleep = sleep
        self._handlers: dict[str, Callable[[SourceRecord], Awaitable[Result]]] = {
            topics.reviews: self._review,
            topics.product_uploads: self._product,
            topics.clickstream: self._click,
        }

    async def handle(self, record: SourceRecord) -> Outcome:
        """Enrich and publish, or dead-letter; raises only `ShuttingDown` (the event stays unfinished)."""
        topic = record.topic
        metrics.EVENTS_CONSUMED.labels(topic).inc()
        result = await self._enrich(record)
        if isinstance(result, EnrichmentError):
            await self._dead_letter(record, result)
            metrics.EVENTS_PROCESSED.labels(topic, "dead_lettered").inc()
            return "dead_lettered"
        await self.publisher.publish(result.topic, result.key, dumps(result.event))
        latency = max(0.0, (self.clock() - result.source_ts).total_seconds())
        metrics.END_TO_END_LATENCY.labels(topic).observe(latency)
        if topic == self.topics.clickstream:
            since = (self.clock() - (result.received_ts or result.source_ts)).total_seconds()
            metrics.RECOMMENDATION_LATENCY.observe(max(0.0, since))
        metrics.EVENTS_PROCESSED.labels(topic, "enriched").inc()
        return "enriched"

    async def _enrich(self, record: SourceRecord) -> Result | EnrichmentError:
        """The output for `record`, or the non-retriable error that sends it to the dead letters."""
        handler = self._handlers.get(record.topic)
        attempt = 0
        while True:
            try:
                if handler is None:
                    raise InternalError(f"no handler for topic {record.topic}")
                return await handler(record)
            except ShuttingDown:
                raise
            except EnrichmentError as exc:
                if not exc.retriable:
                    return exc
                # Normally retried further down; never dead-letter an event for a transient failure.
                delay = self.retry.backoff(attempt)
                log.warning(
                    "%s transient failure (%s: %s); retrying in %.1fs", record.coords, exc.reason, exc, delay
                )
                await self._sleep(delay)
                attempt += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("%s unexpected error while enriching", record.coords)
                return InternalError(f"{type(exc).__name__}: {exc}")

    async def _dead_letter(self, record: SourceRecord, error: EnrichmentError) -> None:
        letter = envelope(record, error, max_payload=self.config.dlq_max_payload_bytes, now=self.clock())
        log.warning(
            "%s dead-lettered: %s: %s (event_id=%s)", record.coords, error.reason, error, letter.event_id
        )
        await self.publisher.publish(self.topics.dlq(record.topic), record.key, dumps(letter))
        metrics.DEAD_LETTERS.labels(record.topic, error.reason).inc()

    async def _review(self, record: SourceRecord) -> Result:
        limits = self.config.limits
        event = parse_event(ReviewEvent, record.value, limits.max_message_bytes)
        row = review_input(event, limits)
        output = await self.inference.infer("review", row)
        info = await self.inference.info()
        out = enrich.review_sentiment(event, output, info, self.clock())
        return Result(self.topics.review_sentiment, event.review_id.encode(), out, event.ts)

    async def _product(self, record: SourceRecord) -> Result:
        limits = self.config.limits
        event = parse_event(ProductUploadEvent, record.value, limits.max_message_bytes)
        row = product_input(event, limits)
        output = await self.inference.infer("product", row)
        info = await self.inference.info()
        out = enrich.product_category(event, output, info, self.config.top_k_categories, self.clock())
        return Result(self.topics.product_categories, event.product_id.encode(), out, event.ts)

    async def _click(self, record: SourceRecord) -> Result:
        event = parse_event(ClickEvent, record.value, self.config.limits.max_message_bytes)
        items = await self.recommender.recommend(event, self.config.recommendations_k)
        # Latency counts from when the click reached the clickstream, not from its `ts`: a replay (or a
        # shop's batch upload) keeps the original click times.
        stamp = record.timestamp
        received = datetime.fromtimestamp(stamp, UTC) if stamp is not None and stamp > 0 else event.ts
        processed = self.clock()
        out = Recommendation(
            event_id=event.event_id,
            user_id=event.user_id,
            session_id=event.session_id,
            product_id=event.product_id,
            action=event.action,
            model=self.recommender.model,
            items=items,
            source_ts=event.ts,
            processed_ts=processed,
            latency_ms=round(max(0.0, (processed - received).total_seconds()) * 1000.0, 3),
        )
        return Result(self.topics.recommendations, event.user_id.encode(), out, event.ts, received)
