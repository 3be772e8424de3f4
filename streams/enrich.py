"""What each input becomes: the step a route calls, and the pure functions that build its output.

A step takes the parsed input event and the record it came in, calls what it needs (the model through
the micro-batched `InferenceService`, the recommender) and returns the output event. Steps raise the
service's errors (`streams.errors`); the pipeline decides retry or dead letter from them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from streams.contract import ModelInfo, ModelOutput
from streams.errors import BadModelResponse
from streams.events import (
    ClickEvent,
    ModelRef,
    ProductCategory,
    ProductUploadEvent,
    Recommendation,
    ReviewEvent,
    ReviewSentiment,
    ScoredLabel,
    Sentiment,
    SentimentLabel,
    SentimentProbabilities,
)
from streams.inference import InferenceService
from streams.protocols import Recommender
from streams.recommend.dedup import Origin
from streams.records import SourceRecord
from streams.validation import Limits, product_input, review_input


@dataclass(frozen=True)
class StepContext:
    """What the steps use; one per worker, built with the runtime."""

    inference: InferenceService
    recommender: Recommender
    limits: Limits
    top_k_categories: int
    recommendations_k: int
    clock: Callable[[], datetime]


@dataclass(frozen=True)
class WithPending:
    """A step's output, and state changes of its event still on their way to the broker: the pipeline
    publishes the output while they travel, and finishes the event only when both are acknowledged."""

    output: BaseModel
    pending: Awaitable[None] | None


# --- steps (one per route, streams.topology) --------------------------------------------------------
async def review_step(ctx: StepContext, event: ReviewEvent, record: SourceRecord) -> ReviewSentiment:
    output = await ctx.inference.infer("review", review_input(event, ctx.limits))
    info = await ctx.inference.info()
    return review_sentiment(event, output, info, ctx.clock())


async def product_step(ctx: StepContext, event: ProductUploadEvent, record: SourceRecord) -> ProductCategory:
    output = await ctx.inference.infer("product", product_input(event, ctx.limits))
    info = await ctx.inference.info()
    return product_category(event, output, info, ctx.top_k_categories, ctx.clock())


async def click_step(ctx: StepContext, event: ClickEvent, record: SourceRecord) -> WithPending:
    origin = Origin(record.partition, record.offset)
    # The click's state writes are under way: they and the recommendation are acknowledged together.
    items, durable = await ctx.recommender.answer(event, ctx.recommendations_k, origin)
    processed = ctx.clock()
    recommendation = Recommendation(
        event_id=event.event_id,
        user_id=event.user_id,
        session_id=event.session_id,
        product_id=event.product_id,
        action=event.action,
        model=ctx.recommender.model,
        items=items,
        source_ts=event.ts,
        processed_ts=processed,
        latency_ms=round(max(0.0, (processed - received_at(event, record)).total_seconds()) * 1000.0, 3),
    )
    return WithPending(recommendation, durable)


def received_at(event: ClickEvent, record: SourceRecord) -> datetime:
    """When a click reached the clickstream (its record time), not its `ts`: a replay, or a shop's batch
    upload, keeps the original click times. Recommendation latency counts from here."""
    stamp = record.timestamp
    return datetime.fromtimestamp(stamp, UTC) if stamp is not None and stamp > 0 else event.ts


# --- output builders (pure) -------------------------------------------------------------------------
def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version)


def sentiment(probabilities: npt.NDArray[np.float32], labels: tuple[str, ...]) -> Sentiment:
    """The most probable of the model's labels (in the model's own order, from its config)."""
    if len(labels) != len(probabilities):
        raise BadModelResponse(
            f"model returned {len(probabilities)} sentiment scores for {len(labels)} labels"
        )
    probs = [float(p) for p in probabilities]
    best = int(np.argmax(probabilities))
    return Sentiment(
        label=cast(SentimentLabel, labels[best]),
        probabilities=SentimentProbabilities(**dict(zip(labels, probs, strict=True))),
    )


def top_categories(
    probabilities: npt.NDArray[np.float32], labels: tuple[str, ...], k: int
) -> list[ScoredLabel]:
    if len(labels) != len(probabilities):
        raise BadModelResponse(
            f"model returned {len(probabilities)} category scores for {len(labels)} labels"
        )
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [ScoredLabel(label=labels[i], score=float(probabilities[i])) for i in order]


def review_sentiment(
    event: ReviewEvent, output: ModelOutput, info: ModelInfo, now: datetime
) -> ReviewSentiment:
    return ReviewSentiment(
        event_id=event.event_id,
        review_id=event.review_id,
        product_id=event.product_id,
        user_id=event.user_id,
        rating=event.rating,
        model=model_ref(info),
        sentiment=sentiment(output.sentiment, info.sentiment_labels),
        source_ts=event.ts,
        processed_ts=now,
    )


def product_category(
    event: ProductUploadEvent, output: ModelOutput, info: ModelInfo, top_k: int, now: datetime
) -> ProductCategory:
    top = top_categories(output.category, info.category_labels, top_k)
    return ProductCategory(
        event_id=event.event_id,
        product_id=event.product_id,
        model=model_ref(info),
        category=top[0],
        top_categories=top,
        embedding=[float(x) for x in output.embedding],
        source_ts=event.ts,
        processed_ts=now,
    )
