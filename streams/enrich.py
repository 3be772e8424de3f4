"""Pure functions that turn a model output into an output event (no Kafka, no Triton)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import numpy as np
import numpy.typing as npt

from streams.errors import BadModelResponse
from streams.events import (
    ModelRef,
    ProductCategory,
    ProductUploadEvent,
    ReviewEvent,
    ReviewSentiment,
    ScoredLabel,
    Sentiment,
    SentimentLabel,
    SentimentProbabilities,
)
from streams.inference import SENTIMENT_LABELS, ModelInfo, ModelOutput


def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version)


def sentiment(probabilities: npt.NDArray[np.float32]) -> Sentiment:
    probs = [float(p) for p in probabilities]
    best = int(np.argmax(probabilities))
    return Sentiment(
        label=cast(SentimentLabel, SENTIMENT_LABELS[best]),
        probabilities=SentimentProbabilities(**dict(zip(SENTIMENT_LABELS, probs, strict=True))),
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
        sentiment=sentiment(output.sentiment),
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
