"""The parts a worker runs beside Faust's own machinery, built once and started and stopped in order.

`build_runtime` is the one place they are wired: the worker's app (`streams.app.create_app`) and the
tests both call it, with fakes only at the two outer edges (the model server, the producer). Without a
Faust app it wires the same parts in process (`streams.recommend.wiring.in_process_recommender`), for
tests that run the pipeline without Kafka.

Start: readiness probes begin (before Faust's first rebalance, so `/readyz` answers at once), then the
model's metadata is fetched in the background (waits for Triton). Stop: the stop signal first (every
retry gives up, its event stays uncommitted), then Faust stops its agents, then the micro-batchers, the
model client and the health probe's admin client are closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from streams import metrics
from streams.enrich import StepContext
from streams.errors import ShuttingDown
from streams.events import utcnow
from streams.inference import InferenceService
from streams.lifecycle import Lifecycle, Retry, RetryPolicy
from streams.pipeline import Pipeline, bind_routes
from streams.protocols import ModelClient, Publisher
from streams.recommend.config import RecommenderConfig
from streams.recommend.wiring import RecommenderParts, build_recommender, in_process_recommender
from streams.rollout import LiveQuality, Rollout, ShadowRunner
from streams.settings import Settings
from streams.topics import TopicNames, internal_topic
from streams.topology import ITEM_UPDATES, MODEL_KINDS
from streams.validation import Limits

if TYPE_CHECKING:
    import faust

    from streams.health import Health

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    topics: TopicNames
    lifecycle: Lifecycle
    retry: Retry
    model: ModelClient
    inference: InferenceService
    recommend: RecommenderParts
    publisher: Publisher
    pipeline: Pipeline
    health: Health | None

    def start(self, app: faust.App) -> None:
        """Begin the background work (on the app's start, before the first rebalance)."""
        app.add_future(self._probe_forever())
        app.add_future(self._warm_up())
        if self.inference.rollout.canary_version:
            app.add_future(self._watch_canary())

    async def _probe_forever(self) -> None:
        if self.health is None:
            return
        while not self.lifecycle.stopping:
            await self.health.probe()
            with contextlib.suppress(ShuttingDown):
                await self.lifecycle.sleep(self.settings.health_interval_s)

    async def _warm_up(self) -> None:
        # The model's version and labels, fetched before the first event needs them.
        with contextlib.suppress(ShuttingDown):
            await self.inference.info()

    async def _watch_canary(self) -> None:
        # The canary's entities go to the primary while Triton does not serve the canary version.
        rollout = self.inference.rollout
        while not self.lifecycle.stopping:
            ready = await self.model.ready(rollout.canary_version)
            if ready != rollout.canary_ready:
                (log.info if ready else log.warning)(
                    "canary version %s %s", rollout.canary_version, "ready" if ready else "not ready: primary"
                )
            rollout.canary_ready = ready
            with contextlib.suppress(ShuttingDown):
                await self.lifecycle.sleep(self.settings.health_interval_s)

    def stopping(self) -> None:
        """The stop signal: before Faust waits for the streams to drain, waiting events give up."""
        self.lifecycle.stop()

    async def close(self) -> None:
        await self.inference.close()
        await self.model.close()
        if self.health is not None:
            await self.health.close()


def build_runtime(
    settings: Settings,
    app: faust.App | None,
    *,
    model: ModelClient | None = None,
    publisher: Publisher | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Runtime:
    """Every part, wired. `model` and `publisher` default to Triton and the app's own producer; without
    an app, `publisher` is required and the recommender's tables are dicts in this process."""
    names = TopicNames.from_settings(settings)
    metrics.initialise(names.inputs, names.outputs, names.dlqs, MODEL_KINDS)
    lifecycle = Lifecycle()
    retry = Retry(
        RetryPolicy(
            settings.retry_backoff_initial_s, settings.retry_backoff_max_s, settings.retry_max_ambiguous
        ),
        lifecycle.sleep,
    )
    if model is None:
        from streams.triton_client import TritonModel

        model = TritonModel(
            settings.triton_grpc_url,
            settings.triton_model,
            timeout=settings.infer_timeout_s,
            ssl=settings.triton_ssl,
            version=settings.model_version,
        )
    quality = LiveQuality(window=settings.live_f1_window)
    rollout = Rollout(settings.canary_version, settings.canary_fraction)
    shadow = None
    if settings.shadow_version:
        shadow = ShadowRunner(
            model,
            settings.shadow_version,
            quality=quality,
            queue_batches=settings.shadow_queue_batches,
            timeout_s=settings.shadow_timeout_s,
            embedding_agreement=settings.shadow_embedding_agreement,
        )
    metrics.LIVE_F1_FLOOR.set(settings.live_f1_floor)
    metrics.SHADOW_AGREEMENT_FLOOR.set(settings.shadow_agreement_floor)
    inference = InferenceService(
        model,
        kinds=MODEL_KINDS,
        max_batch=settings.batch_max_size,
        linger=settings.batch_linger_ms / 1000,
        max_in_flight=settings.max_in_flight,
        retry=retry,
        rollout=rollout,
        shadow=shadow,
    )
    config = RecommenderConfig(k=settings.recommendations_k)
    health: Health | None = None
    if app is not None:
        from streams.faust_ext import FaustTables, committed_offset
        from streams.health import Health
        from streams.publisher import FaustPublisher

        publisher = publisher or FaustPublisher(app, settings.publish_timeout_s, retry)
        out = publisher
        topic = internal_topic(settings, ITEM_UPDATES)

        async def send(partition: int, value: bytes) -> None:
            await out.publish(topic, f"p{partition}".encode(), value, partition=partition)

        clickstream = names.clickstream

        def committed(partition: int) -> int:
            return committed_offset(app, clickstream, partition)

        recommend = build_recommender(
            config, settings.partitions, FaustTables(app, settings.partitions), send, topic, committed
        )
        health = Health(settings, app, model)
    else:
        if publisher is None:
            raise ValueError("without a Faust app, a publisher is required")
        recommend = in_process_recommender(config, settings.partitions)
    context = StepContext(
        inference=inference,
        recommender=recommend.recommender,
        limits=Limits.from_settings(settings),
        top_k_categories=settings.top_k_categories,
        recommendations_k=settings.recommendations_k,
        clock=clock,
        catalogue=recommend.sink.content,  # the recommender's index: one per worker, not a second one
        rollout=rollout,
        quality=quality,
    )
    pipeline = Pipeline(
        bind_routes(names),
        context,
        publisher,
        retry,
        clock=clock,
    )
    return Runtime(
        settings, names, lifecycle, retry, model, inference, recommend, publisher, pipeline, health
    )
