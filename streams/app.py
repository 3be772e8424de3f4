"""The Faust app: the agents of every route and state feed (`streams.topology`), over one runtime.

Each route's agent takes an event, records its offset as in flight, lets the pipeline enrich it and
deliver the output or the dead letter, and only then marks the offset finished (the commit rule of
`streams.offsets` turns that into at-least-once with any concurrency). How the agent runs its events is
the route's `ordering`:

- "concurrent": `ECOM_AGENT_CONCURRENCY` actors, whose rows travel together in the micro-batches;
- "per_key": one actor hands each event to a `KeyedOrder`: events of one key (a shopper) run one after
  another in partition order, different keys concurrently (at most `ECOM_CLICK_CONCURRENCY`).

The state feeds keep the recommender's replicated tables: one agent applies the item updates that
clicks send to the internal topic (in batches), one indexes the embeddings published on
`product-categories`. Each waits for its table writes to be delivered before it takes the next event or
batch, which is when Faust acks the previous one, so Faust's own ack order is exact for them.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import TP

from streams.deadletter import max_dead_letter_bytes
from streams.errors import ShuttingDown
from streams.faust_ext import ReconcilingTableManager, SafeCommitTransport, source_record, track_writes
from streams.health import install_health_pages
from streams.logs import current_coords
from streams.offsets import InFlight
from streams.pipeline import BoundRoute
from streams.protocols import ModelClient, Publisher
from streams.publisher import RAW
from streams.recommend.lanes import KeyedOrder
from streams.recommend.wiring import ITEM_BATCH_MAX, ITEM_BATCH_WITHIN_S, RecommenderParts
from streams.records import SourceRecord
from streams.runtime import Runtime, build_runtime
from streams.settings import Settings
from streams.topics import ssl_context
from streams.topology import TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_USERS
from streams.undecodable import StoppedPartitions

log = logging.getLogger(__name__)


class EnrichmentApp(faust.App):
    """A Faust app whose consumer commits only offsets whose events are finished, and which starts and
    stops its runtime with itself."""

    in_flight: InFlight
    undecodable: StoppedPartitions
    runtime: Runtime
    fetch_max_wait_ms: int | None = None
    table_cache_mb: int | None = None

    def _new_transport(self) -> Any:
        return SafeCommitTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        # Not app.tasks: Faust starts those only after the first rebalance and table recovery, and
        # readiness must be known before that.
        self.runtime.start(self)

    async def on_stop(self) -> None:
        self.runtime.stopping()
        await super().on_stop()
        await self.runtime.close()


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


def create_app(
    settings: Settings,
    *,
    model: ModelClient | None = None,
    publisher: Publisher | None = None,
) -> EnrichmentApp:
    """The worker's app. `model` and `publisher` default to Triton and the app's own producer."""
    app = EnrichmentApp(
        settings.app_id,
        broker=settings.kafka_bootstrap,
        broker_credentials=faust_credentials(settings),
        processing_guarantee=settings.processing_guarantee,
        store=settings.table_store,
        datadir=settings.data_dir,  # None: Faust's default, "<app id>-data" in the working directory
        table_standby_replicas=settings.table_standby_replicas,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # A table ahead of its changelog's reported end is settled, not fatal (streams.faust_ext).
        TableManager=ReconcilingTableManager,
        producer_acks=-1,
        producer_compression_type=settings.producer_compression,
        # A dead letter is the largest input the worker accepts, whole, plus its error headers.
        producer_max_request_size=max(1_048_576, max_dead_letter_bytes(settings.max_message_bytes)),
        consumer_max_fetch_size=max(1_048_576, settings.max_message_bytes + 65_536),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
        **web_access(settings),
    )
    app.in_flight = InFlight()
    app.undecodable = StoppedPartitions.from_settings(settings)  # see streams.undecodable
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    app.table_cache_mb = settings.table_cache_mb  # see streams.faust_ext.SharedMemoryOptions
    app.runtime = build_runtime(settings, app, model=model, publisher=publisher)

    for bound in app.runtime.pipeline.routes.values():
        add_route_agent(app, bound)
    add_state_feed_agents(app, app.runtime.recommend)
    if app.runtime.health is not None:
        install_health_pages(app, app.runtime.health)
    if settings.state_pages_enabled:
        install_state_pages(app, app.runtime.recommend)
    return app


# --- routes --------------------------------------------------------------------------------------------
def add_route_agent(app: EnrichmentApp, bound: BoundRoute) -> None:
    settings = app.runtime.settings
    channel = app.topic(bound.input, partitions=settings.partitions, **RAW)
    name = f"enrich-{bound.input}"

    async def concurrent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await finish(app, take(app, event))

    async def per_key(stream: faust.StreamT[bytes]) -> None:
        order = KeyedOrder(settings.click_concurrency)
        try:
            async for event in stream.events():
                record = take(app, event)  # in flight from here: nothing past it is committed
                await order.submit(record.key, functools.partial(keyed_job, app, record, event))
        finally:
            # Stopping: events still in progress stay in flight (uncommitted) for the next owner.
            await order.cancel()

    if bound.route.ordering == "concurrent":
        body, concurrency = concurrent, settings.agent_concurrency
    else:
        body, concurrency = per_key, 1
    body.__name__ = name
    app.agent(channel, name=name, concurrency=concurrency, sink=None)(body)


async def keyed_job(app: EnrichmentApp, record: SourceRecord, event: Any) -> None:
    # The job holds `event` until it is done: Faust finds the event a table write belongs to (its
    # partition is the changelog's) through a weak reference in a context variable, which the job's task
    # inherited from the agent when it was submitted.
    track_writes()  # the user state's changelog write is delivered before the recommendation
    await finish(app, record)
    del event


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
        await app.runtime.pipeline.handle(record)
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


# --- state feeds -----------------------------------------------------------------------------------------
def add_state_feed_agents(app: EnrichmentApp, parts: RecommenderParts) -> None:
    settings = app.runtime.settings

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

    channel = app.topic(app.runtime.topics.product_categories, partitions=settings.partitions, **RAW)
    app.agent(channel, name="recommend-embeddings", concurrency=1, sink=None)(embeddings)

    @app.timer(interval=settings.embedding_sync_interval_s)  # type: ignore[untyped-decorator]
    async def index_embeddings() -> None:
        # Embeddings other workers wrote reach this worker's global table without passing an agent.
        added = parts.sink.sync()
        if added:
            log.info("indexed %d product embeddings written by other workers", added)


# --- the web port ----------------------------------------------------------------------------------------
# Open to anyone who reaches the port (probes, Prometheus). Everything else is a state page: shoppers'
# sessions and histories (/recommend/...), Faust's tables and the cluster's layout (/table/..., /router/...).
OPEN_PAGES = frozenset({"/livez", "/readyz", "/metrics"})


def web_access(settings: Settings) -> dict[str, Any]:
    """Faust's web options: its built-in pages off unless the state pages are on (then its tables and
    router pages only), and every request but `OPEN_PAGES` through `state_pages_guard`."""
    enabled = settings.state_pages_enabled
    return {
        "web_tables_enabled": enabled,
        "web_router_enabled": enabled,  # only @app.table_route needs it, and the service has none
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_metrics_enabled": False,
        "web_application_options": {"middlewares": [state_pages_guard(settings)]},
    }


def _loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def state_pages_guard(settings: Settings) -> Any:
    """An aiohttp middleware: `OPEN_PAGES` for anyone; any other path 404 while the state pages are off,
    and, when they are on, 403 unless the client is on the loopback interface (an operator's
    `kubectl port-forward`, a test) and 401 unless it sends `Authorization: Bearer <token>`."""
    from aiohttp import web

    secret = settings.state_pages_token.get_secret_value() if settings.state_pages_token else ""
    expected = f"Bearer {secret}".encode()

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in OPEN_PAGES:
            return await handler(request)
        if not settings.state_pages_enabled:
            return web.json_response({"error": "not found"}, status=404)
        if not _loopback(request.remote):
            return web.json_response({"error": "state pages answer loopback clients only"}, status=403)
        given = request.headers.get("Authorization", "").encode()
        if not secret or not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "a bearer token is required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)

    return guard


def install_state_pages(app: faust.App, parts: RecommenderParts) -> None:
    """Read-only views of this worker's copy of the recommender's state (operators, restart tests), served
    only with `ECOM_STATE_PAGES_ENABLED` and behind `state_pages_guard`."""
    views = parts.views

    @app.page("/recommend/users/{user_id}")
    async def user_page(web: Any, request: Any, user_id: str) -> Any:
        state = views[TABLE_USERS].get(user_id)
        return web.json({"user_id": user_id, "state": state}, status=200 if state is not None else 404)

    @app.page("/recommend/items/{item_id}")
    async def item_page(web: Any, request: Any, item_id: str) -> Any:
        body = {
            "item_id": item_id,
            "neighbours": views[TABLE_NEIGHBOURS].get(item_id),
            "stats": views[TABLE_ITEM_STATS].get(item_id),
            "embedding": item_id in parts.sink.content,
        }
        found = body["neighbours"] is not None or body["stats"] is not None or body["embedding"]
        return web.json(body, status=200 if found else 404)

    @app.page("/recommend/tables")
    async def tables_page(web: Any, request: Any) -> Any:
        return web.json(parts.sizes())
