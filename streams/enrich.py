"""What each input becomes: the step a route calls, and the pure functions that build its output.

A step takes the parsed input event and the record it came in, calls what it needs (the model through
the micro-batched `InferenceService`, the recommender) and returns the output event. Steps raise the
service's errors (`streams.errors`); the pipeline decides retry or dead letter from them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from streams.contract import ModelInfo, ModelInput, ModelOutput, rating_sentiment
from streams.errors import BadModelResponse, SchemaViolation
from streams.events import (
    ClickEvent,
    InputEvent,
    ModelRef,
    ProductCategory,
    ProductMatch,
    ProductMatches,
    ProductQueryEvent,
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
from streams.recommend.content import ContentIndex
from streams.recommend.dedup import Origin
from streams.recommend.errors import InvalidEmbedding
from streams.records import SourceRecord
from streams.rollout import LiveQuality, Rollout, version_label
from streams.validation import Limits, check_text, decode_base64_image, product_input, review_input


@dataclass(frozen=True)
class StepContext:
    """What the steps use; one per worker, built with the runtime."""

    inference: InferenceService
    recommender: Recommender
    limits: Limits
    top_k_categories: int
    recommendations_k: int
    clock: Callable[[], datetime]
    catalogue: ContentIndex  # every listed product's latest embedding and category (the recommender's)
    rollout: Rollout = field(default_factory=Rollout)  # which version a product's rows go to
    quality: LiveQuality = field(default_factory=LiveQuality)  # sentiment against the ratings, per version


@dataclass(frozen=True)
class WithPending:
    """A step's output, and state changes of its event still on their way to the broker: the pipeline
    publishes the output while they travel, and finishes the event only when both are acknowledged."""

    output: BaseModel
    pending: Awaitable[None] | None


# --- steps (one per route, streams.topology) --------------------------------------------------------
# The model's version is chosen per entity (a product: `ctx.rollout`), and every output is stamped with
# what the version that answered declares (its name and labels), read from that output.
async def review_step(ctx: StepContext, event: ReviewEvent, record: SourceRecord) -> ReviewSentiment:
    row = review_input(event, ctx.limits)
    reference = rating_sentiment(event.rating) if event.rating is not None else None
    if reference is not None:
        row = replace(row, reference_sentiment=reference)  # the shadow's live quality reads it too
    output = await ctx.inference.infer("review", row, ctx.rollout.route(event.product_id))
    info = await ctx.inference.info(output.version)
    result = review_sentiment(event, output, info, ctx.clock())
    if reference is not None:
        ctx.quality.observe(version_label(output, info), result.sentiment.label, reference)
    return result


async def product_step(ctx: StepContext, event: ProductUploadEvent, record: SourceRecord) -> ProductCategory:
    row = product_input(event, ctx.limits)
    output = await ctx.inference.infer("product", row, ctx.rollout.route(event.product_id))
    info = await ctx.inference.info(output.version)
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


async def query_step(ctx: StepContext, event: ProductQueryEvent, record: SourceRecord) -> ProductMatches:
    """A search by photo or by words: the query embedded by the model like a listing (text only, image
    only or both; micro-batched with the listings), then matched against the catalogue's index. Always
    the primary version: a query is no entity of its own."""
    info = await ctx.inference.info()
    if event.category is not None and event.category not in info.category_labels:
        raise SchemaViolation(
            f"category {event.category!r} is not a category of the model: {', '.join(info.category_labels)}"
        )
    output = await ctx.inference.infer("product", query_input(event, ctx.limits))
    info = await ctx.inference.info(output.version)
    try:
        found = ctx.catalogue.search(output.embedding, event.k, category=event.category)
    except InvalidEmbedding as exc:  # the model's output, not the query, breaks the contract
        raise BadModelResponse(f"query embedding unusable for the catalogue index: {exc}") from None
    matches = [ProductMatch(product_id=p, score=s, category=ctx.catalogue.category(p)) for p, s in found]
    processed = ctx.clock()
    return product_matches(
        event,
        output,
        info,
        matches,
        len(ctx.catalogue),
        processed,
        max(0.0, (processed - received_at(event, record)).total_seconds()),
    )


def query_input(event: ProductQueryEvent, limits: Limits) -> ModelInput:
    """The query as one model row: its text and/or its photo, checked like a listing's."""
    text = check_text(event.text or "", limits, "text")
    image = decode_base64_image(event.image, limits) if event.image else b""
    if not text.strip() and not image:
        raise SchemaViolation("nothing to search with: no text and no image")
    return ModelInput(text=text, image=image)


def received_at(event: InputEvent, record: SourceRecord) -> datetime:
    """When a click (or a query) reached its topic (its record time), not its `ts`: a replay, or a shop's
    batch upload, keeps the original click times. Recommendation and query latency count from here."""
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


def product_matches(
    event: ProductQueryEvent,
    output: ModelOutput,
    info: ModelInfo,
    matches: list[ProductMatch],
    catalogue_size: int,
    now: datetime,
    latency_s: float,
) -> ProductMatches:
    return ProductMatches(
        event_id=event.event_id,
        query_id=event.query_id,
        user_id=event.user_id,
        model=model_ref(info),
        query_category=top_categories(output.category, info.category_labels, 1)[0],
        category_filter=event.category,
        matches=matches,
        catalogue_size=catalogue_size,
        source_ts=event.ts,
        processed_ts=now,
        latency_ms=round(latency_s * 1000.0, 3),
    )
