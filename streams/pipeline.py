"""What happens to one input event, independent of Faust: parse, call its route's step, publish or
dead-letter.

`Pipeline.handle` finishes every event with exactly one delivered record (the output, or the dead
letter) and returns the outcome; it never raises for a bad event. Which step an event goes through and
where its output goes is the route of its topic (`streams.topology`). Transient failures (Triton away,
the broker not acknowledging) are retried inside, with backoff, for as long as they last: the event
waits, and so does the agent that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from streams import metrics
from streams.deadletter import dead_letter, max_dead_letter_bytes
from streams.enrich import StepContext, WithPending, received_at
from streams.errors import EnrichmentError, InternalError
from streams.events import ClickEvent, InputEvent, dumps, parse_event, utcnow
from streams.lifecycle import Retry
from streams.protocols import Publisher
from streams.records import SourceRecord
from streams.topics import TopicNames
from streams.topology import ROUTES, Route

log = logging.getLogger(__name__)

Outcome = Literal["enriched", "dead_lettered"]


@dataclass(frozen=True)
class BoundRoute:
    """A route with its physical topic names."""

    route: Route
    input: str
    output: str
    dlq: str


def bind_routes(names: TopicNames, routes: Sequence[Route] = ROUTES) -> dict[str, BoundRoute]:
    """Input topic -> its bound route."""
    return {names(r.input): BoundRoute(r, names(r.input), names(r.output), names(r.dlq)) for r in routes}


@dataclass(frozen=True)
class Output:
    topic: str
    key: bytes
    event: BaseModel
    source: InputEvent


class Pipeline:
    def __init__(
        self,
        routes: dict[str, BoundRoute],
        context: StepContext,
        publisher: Publisher,
        retry: Retry,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.routes = routes
        self.context = context
        self.publisher = publisher
        self.retry = retry
        self.clock = clock

    async def handle(self, record: SourceRecord) -> Outcome:
        """Enrich and publish, or dead-letter; raises only `ShuttingDown` (the event stays unfinished)."""
        topic = record.topic
        metrics.EVENTS_CONSUMED.labels(topic).inc()
        started = self.clock()
        if record.timestamp is not None and record.timestamp > 0:
            waited = started.timestamp() - record.timestamp
            metrics.STAGE_LATENCY.labels(topic, "broker").observe(max(0.0, waited))
        result = await self._deliver(record)
        if isinstance(result, EnrichmentError):
            await self._dead_letter(record, result)
            metrics.EVENTS_PROCESSED.labels(topic, "dead_lettered").inc()
            return "dead_lettered"
        now = self.clock()
        metrics.END_TO_END_LATENCY.labels(topic).observe(max(0.0, (now - result.source.ts).total_seconds()))
        if isinstance(result.source, ClickEvent):
            since = received_at(result.source, record)
            metrics.RECOMMENDATION_LATENCY.observe(max(0.0, (now - since).total_seconds()))
        metrics.EVENTS_PROCESSED.labels(topic, "enriched").inc()
        return "enriched"

    async def _deliver(self, record: SourceRecord) -> Output | EnrichmentError:
        """The event's output, delivered with the state changes its step made; or the non-retriable
        error that sends it to the dead letters."""
        bound = self.routes.get(record.topic)
        if bound is None:
            return InternalError(f"no route for topic {record.topic}")
        topic = record.topic

        async def attempt() -> Output:
            # A failed state write retries the whole step: the recommender's state absorbs a click once
            # (streams.recommend.dedup), and the output may go out twice, as after any crash.
            started = time.perf_counter()
            limit = self.context.limits.max_message_bytes
            event = parse_event(bound.route.event, record.value, limit)
            result = await bound.route.step(self.context, event, record)
            output, pending = (
                (result.output, result.pending) if isinstance(result, WithPending) else (result, None)
            )
            stepped = time.perf_counter()
            metrics.STAGE_LATENCY.labels(topic, "step").observe(stepped - started)
            out = Output(bound.output, str(getattr(event, bound.route.key)).encode(), output, event)
            await asyncio.gather(self._publish(topic, out, stepped), self._durable(topic, pending, stepped))
            return out

        try:
            # Transient failures are normally retried further down; never dead-letter an event for one.
            return await self.retry.call(attempt, what=f"{record.coords} enrichment")
        except EnrichmentError as exc:
            if exc.retriable:  # ShuttingDown: the event stays unfinished
                raise
            return exc
        except Exception as exc:
            log.exception("%s unexpected error while enriching", record.coords)
            return InternalError(f"{type(exc).__name__}: {exc}")

    async def _publish(self, topic: str, out: Output, since: float) -> None:
        await self.publisher.publish(out.topic, out.key, dumps(out.event))
        metrics.STAGE_LATENCY.labels(topic, "publish").observe(time.perf_counter() - since)

    async def _durable(self, topic: str, pending: Awaitable[None] | None, since: float) -> None:
        if pending is not None:
            await pending
            metrics.STAGE_LATENCY.labels(topic, "state_writes").observe(time.perf_counter() - since)

    async def _dead_letter(self, record: SourceRecord, error: EnrichmentError) -> None:
        # The record whole (value, key, headers: a re-drive reproduces it), the error in headers.
        limit = max_dead_letter_bytes(self.context.limits.max_message_bytes)
        letter = dead_letter(record, error, max_bytes=limit, now=self.clock())
        log.warning(
            "%s dead-lettered: %s: %s (event_id=%s%s)",
            record.coords,
            error.reason,
            error,
            letter.info.event_id,
            f"; over {limit} bytes, left out: {'+'.join(letter.info.omitted)}" if letter.info.omitted else "",
        )
        bound = self.routes.get(record.topic)
        dlq = bound.dlq if bound is not None else TopicNames.dlq(record.topic)
        await self.publisher.publish(dlq, letter.key, letter.value, headers=letter.headers)
        metrics.DEAD_LETTERS.labels(record.topic, error.reason).inc()
