"""The Faust app: topics, tables, the agents, health and metrics pages. The topology reads here.

Each input agent runs `concurrency` actors over its input topic. An actor takes an event, records its
offset as in flight, lets `Pipeline.handle` enrich it (inference goes through a shared micro-batcher, so
the actors' rows travel together) and publish the output or the dead letter, awaits the broker's
acknowledgement, and only then marks the offset finished and asks for the next event. The commit rule
in `streams.offsets` turns that into at-least-once with any concurrency.

The clickstream agent has one actor that hands each click, already recorded as in flight, to a
`KeyedOrder`: clicks of one key (user) run one after another in partition order, clicks of different
users run concurrently (at most `ECOM_CLICK_CONCURRENCY` at once). Two more agents keep the
recommender's global state (streams.recommendations): one applies the item updates that clicks send to
the internal topic (in batches), one indexes the embeddings published on `product-categories`. Each
waits for its table writes to be delivered before it takes the next event or batch, which is when
Faust acks the previous one, so Faust's own ack order is exact for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from streams import metrics
from streams.errors import PublishFailed, ShuttingDown
from streams.health import Health
from streams.inference import InferenceService, ModelClient, RetryPolicy, TritonModel
from streams.lifecycle import Lifecycle
from streams.logs import current_coords
from streams.offsets import InFlight, SafeCommitTransport
from streams.pipeline import Pipeline, PipelineConfig, Publisher
from streams.recommend.lanes import KeyedOrder
from streams.recommendations import (
    ITEM_BATCH_MAX,
    ITEM_BATCH_WITHIN_S,
    Recommender,
    RecommenderParts,
    build_recommender,
    install_pages,
    track_writes,
)
from streams.records import SourceRecord
from streams.settings import Settings
from streams.topics import TopicNames, ssl_context

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class EnrichmentApp(faust.App):
    """A Faust app whose consumer commits only offsets whose events are finished (streams.offsets)."""

    in_flight: InFlight
    services: Services
    fetch_max_wait_ms: int | None = None

    def _new_transport(self) -> Any:
        return SafeCommitTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        # Started here, not as an app.task: Faust starts those only after the first rebalance and table
        # recovery, and readiness must be known before that.
        self.add_future(self._probe_forever())
        self.add_future(self._warm_up())

    async def _warm_up(self) -> None:
        # The model's version and labels, fetched before the first event needs them (waits for Triton).
        services = getattr(self, "services", None)
        if services is not None:
            with contextlib.suppress(ShuttingDown):
                await services.inference.info()

    async def _probe_forever(self) -> None:
        services = getattr(self, "services", None)
        if services is None:
            return
        while not self.should_stop:
            await services.health.probe()
            await asyncio.sleep(services.settings.health_interval_s)

    async def on_stop(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            # Before Faust waits for the streams to drain: events waiting on a retry give up now.
            services.lifecycle.stop()
        await super().on_stop()
        if services is not None:
            await services.close()


@dataclass
class Services:
    """What the agents use; built once per app, replaceable in tests."""

    settings: Settings
    topics: TopicNames
    model: ModelClient
    inference: InferenceService
    recommender: Recommender
    recommend: RecommenderParts
    publisher: Publisher
    pipeline: Pipeline
    health: Health
    lifecycle: Lifecycle

    async def close(self) -> None:
        await self.inference.close()
        close = getattr(self.model, "close", None)
        if close is not None:
            await close()
        await self.health.close()


def faust_credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context(settings),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return None


class FaustPublisher:
    """Sends through the app's producer and waits for the broker's acknowledgement, retrying failures."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self._sleep = sleep
        self.timeout = settings.publish_timeout_s
        self.retry = retry
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        if name not in self._topics:
            self._topics[name] = self.app.topic(name, **RAW)
        return self._topics[name]

    async def publish(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        attempt = 0
        while True:
            try:
                pending = await self._topic(topic).send(key=key, value=value, partition=partition)
                await asyncio.wait_for(asyncio.shield(pending), self.timeout)
            except (asyncio.CancelledError, ShuttingDown):
                raise
            except Exception as exc:  # noqa: BLE001  (any send failure is retried; the event waits)
                error = PublishFailed(f"{type(exc).__name__}: {exc}")
                delay = self.retry.backoff(attempt)
                log.warning("publish to %s failed (%s); retry %d in %.1fs", topic, error, attempt + 1, delay)
                await self._sleep(delay)
                attempt += 1
                continue
            metrics.EVENTS_PRODUCED.labels(topic).inc()
            return


def create_app(
    settings: Settings,
    *,
    model: ModelClient | None = None,
    publisher: Publisher | None = None,
) -> EnrichmentApp:
    """The worker's app. `model` and `publisher` default to Triton and the app's own producer."""
    names = TopicNames.from_settings(settings)
    metrics.initialise(names.inputs, names.outputs, names.dlqs)
    app = EnrichmentApp(
        settings.app_id,
        broker=settings.kafka_bootstrap,
        broker_credentials=faust_credentials(settings),
        processing_guarantee=settings.processing_guarantee,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=max(1_048_576, settings.dlq_max_payload_bytes * 2 + 65_536),
        consumer_max_fetch_size=max(1_048_576, settings.max_message_bytes + 65_536),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
    )
    app.in_flight = InFlight()
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms

    retry = RetryPolicy(
        settings.retry_backoff_initial_s, settings.retry_backoff_max_s, settings.retry_max_ambiguous
    )
    model = model or TritonModel(
        settings.triton_grpc_url,
        settings.triton_model,
        timeout=settings.infer_timeout_s,
        ssl=settings.triton_ssl,
    )
    lifecycle = Lifecycle()
    inference = InferenceService.from_settings(settings, model, sleep=lifecycle.sleep)
    publisher = publisher or FaustPublisher(app, settings, retry)
    parts = build_recommender(app, settings, publisher)
    recommender = parts.recommender
    pipeline = Pipeline(
        PipelineConfig.from_settings(settings), names, inference, recommender, publisher, retry=retry
    )
    health = Health(settings, app, model)
    app.services = Services(
        settings, names, model, inference, recommender, parts, publisher, pipeline, health, lifecycle
    )

    def agent_body(name: str) -> Any:
        async def run(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                await process(app, event)

        run.__name__ = name
        return run

    for topic_name in (names.reviews, names.product_uploads):
        channel = app.topic(topic_name, partitions=settings.partitions, **RAW)
        agent_name = f"enrich-{topic_name}"
        concurrency = settings.agent_concurrency
        app.agent(channel, name=agent_name, concurrency=concurrency, sink=None)(agent_body(agent_name))

    async def click(record: SourceRecord, event: Any) -> None:
        # The job holds `event` until the click is done: Faust finds the event a table write belongs
        # to (its partition is the changelog's) through a weak reference in a context variable, which
        # the job's task inherited from the agent when it was submitted.
        track_writes()  # the user state's changelog write is delivered before the recommendation
        await finish(app, record)
        del event

    async def clicks(stream: faust.StreamT[bytes]) -> None:
        order = KeyedOrder(settings.click_concurrency)
        try:
            async for event in stream.events():
                record = take(app, event)  # in flight from here: nothing past it is committed
                await order.submit(record.key, functools.partial(click, record, event))
        finally:
            # Stopping: clicks still in progress stay in flight (uncommitted) for the next owner.
            await order.cancel()

    clicks_name = f"enrich-{names.clickstream}"
    clicks.__name__ = clicks_name
    channel = app.topic(names.clickstream, partitions=settings.partitions, **RAW)
    app.agent(channel, name=clicks_name, concurrency=1, sink=None)(clicks)

    async def item_updates(stream: Any) -> None:  # a faust Stream (StreamT lacks take_events)
        # In batches (each row written once per batch); the batch's table writes are delivered before
        # the next batch is asked for, which is when Faust acks this one.
        async for events in stream.take_events(ITEM_BATCH_MAX, within=ITEM_BATCH_WITHIN_S):
            await parts.apply_item_updates([source_record(e) for e in events])

    channel = app.topic(parts.item_updates_topic, partitions=settings.partitions, **RAW)
    app.agent(channel, name="recommend-item-updates", concurrency=1, sink=None)(item_updates)

    async def embeddings(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            record = source_record(event)
            current_coords.set(record.coords)
            await parts.put_embedding(record)

    channel = app.topic(names.product_categories, partitions=settings.partitions, **RAW)
    app.agent(channel, name="recommend-embeddings", concurrency=1, sink=None)(embeddings)

    @app.timer(interval=settings.embedding_sync_interval_s)  # type: ignore[untyped-decorator]
    async def index_embeddings() -> None:
        # Embeddings other workers wrote reach this worker's global table without passing an agent.
        added = parts.sink.sync()
        if added:
            log.info("indexed %d product embeddings written by other workers", added)

    install_pages(app, parts)
    health.install(app)

    return app


def source_record(event: Any) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value if isinstance(message.value, bytes) else bytes(message.value or b""),
        timestamp=message.timestamp,
    )


async def process(app: EnrichmentApp, event: Any) -> None:
    """One event: in flight until its output or dead letter is delivered (see streams.offsets)."""
    await finish(app, take(app, event))


def take(app: EnrichmentApp, event: Any) -> SourceRecord:
    """Record the event as in flight, before its agent asks for the next one (which acks this one)."""
    record = source_record(event)
    current_coords.set(record.coords)  # every log line about this event carries its coordinates
    app.in_flight.start(TP(record.topic, record.partition), record.offset)
    return record


async def finish(app: EnrichmentApp, record: SourceRecord) -> None:
    """Enrich and deliver; the offset is finished only once the output or dead letter is delivered."""
    tp = TP(record.topic, record.partition)
    try:
        await app.services.pipeline.handle(record)
    except asyncio.CancelledError:
        raise  # stays in flight: nothing at or past this offset is committed; read again after restart
    except ShuttingDown:
        log.info(
            "%s left unfinished at shutdown; the next owner of the partition processes it", record.coords
        )
        return
    except Exception:
        log.exception("%s failed outside the pipeline's error handling; left uncommitted", record.coords)
        return
    app.in_flight.finish(tp, record.offset)
