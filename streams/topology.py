"""The service's topology, declared once: which input becomes which output, through which step.

Everything else is built from this table: the Faust agents (`streams.app`), the pipeline's dispatch
(`streams.pipeline`), the topics to create and the metrics' initial label sets (`streams.topics`,
`streams.metrics`), the topic table of docs/architecture.md and the event contracts
(`python -m tooling.contracts`). Adding an input is one `Route`: its event schema, its step, its output
and the output's key.

    input topic        event schema          step                    output topic          key
    reviews            ReviewEvent           enrich.review_step      review-sentiment      review_id
    product-uploads    ProductUploadEvent    enrich.product_step     product-categories    product_id
    clickstream        ClickEvent            enrich.click_step       recommendations       user_id
    product-queries    ProductQueryEvent     enrich.query_step       product-matches       query_id
    (every input)      -                     (a bad event)           <input>.dlq           source key

Beside the routes, the recommender keeps state in Faust tables fed by two more streams (`STATE_FEEDS`):
its own internal item-update topic, and the `product-categories` output (embeddings for content
similarity).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from streams import enrich
from streams.events import (
    ClickEvent,
    InputEvent,
    ProductCategory,
    ProductMatches,
    ProductQueryEvent,
    ProductUploadEvent,
    Recommendation,
    ReviewEvent,
    ReviewSentiment,
)
from streams.records import SourceRecord

Step = Callable[[enrich.StepContext, Any, SourceRecord], Awaitable[BaseModel | enrich.WithPending]]


@dataclass(frozen=True)
class Route:
    """One input topic and what becomes of its events. Topic names are before the ECOM_TOPIC_PREFIX."""

    input: str
    event: type[InputEvent]  # the input schema: an event that does not parse goes to `dlq`
    step: Step  # what the event becomes (streams.enrich)
    output: str
    output_event: type[BaseModel]  # the output schema: what `step` publishes on `output`
    key: str  # the output record's key: this field of the input event
    # "concurrent": ECOM_AGENT_CONCURRENCY actors share micro-batches; "per_key": events of one key run
    # one after another in partition order, different keys concurrently (ECOM_CLICK_CONCURRENCY).
    ordering: Literal["concurrent", "per_key"]
    model_kind: str | None  # the micro-batcher the step sends to the model through, if any
    adds: str  # what the output adds, for the docs

    @property
    def dlq(self) -> str:
        return f"{self.input}.dlq"


ROUTES: tuple[Route, ...] = (
    Route(
        input="reviews",
        event=ReviewEvent,
        step=enrich.review_step,
        output="review-sentiment",
        output_event=ReviewSentiment,
        key="review_id",
        ordering="concurrent",
        model_kind="review",
        adds="sentiment (negative / neutral / positive) with probabilities",
    ),
    Route(
        input="product-uploads",
        event=ProductUploadEvent,
        step=enrich.product_step,
        output="product-categories",
        output_event=ProductCategory,
        key="product_id",
        ordering="concurrent",
        model_kind="product",
        adds="category with top scores, and an L2-normalised product embedding",
    ),
    Route(
        input="clickstream",
        event=ClickEvent,
        step=enrich.click_step,
        output="recommendations",
        output_event=Recommendation,
        key="user_id",
        ordering="per_key",
        model_kind=None,
        adds="the shopper's next items, each with a score and the source that put it there",
    ),
    Route(
        input="product-queries",
        event=ProductQueryEvent,
        step=enrich.query_step,
        output="product-matches",
        output_event=ProductMatches,
        key="query_id",
        ordering="concurrent",
        # Embedded like a listing, in the same micro-batches: a query is a product with text or a photo.
        model_kind="product",
        adds="the k catalogue products closest to the query's photo or words, with scores",
    ),
)

# One micro-batcher per kind, whatever the number of routes that send through it.
MODEL_KINDS: tuple[str, ...] = tuple(dict.fromkeys(r.model_kind for r in ROUTES if r.model_kind is not None))

# The recommender's Faust tables (docs/recommendations.md, "State and partitioning"). The users table is
# co-partitioned with the clickstream; the others are replicated on every worker.
TABLE_USERS = "recommend-users"
TABLE_NEIGHBOURS = "recommend-neighbours"
TABLE_ITEM_STATS = "recommend-item-stats"
TABLE_POPULAR = "recommend-popular"
TABLE_EMBEDDINGS = "recommend-embeddings"
TABLE_CATEGORIES = "recommend-categories"  # product_id -> category label, beside its embedding
TABLES = (TABLE_USERS, TABLE_NEIGHBOURS, TABLE_ITEM_STATS, TABLE_POPULAR, TABLE_EMBEDDINGS, TABLE_CATEGORIES)

# Internal topics (named after the app id, like the changelogs): the recommender's item updates,
# routed by item so that every item's rows have one writer.
ITEM_UPDATES = "recommend-item-updates"
INTERNAL_TOPICS = (ITEM_UPDATES,)


@dataclass(frozen=True)
class StateFeed:
    """A stream the recommender's tables are written from (no output, no dead letters)."""

    agent: str
    source: str  # an internal topic, or an output of a route
    internal: bool
    writes: tuple[str, ...]


STATE_FEEDS: tuple[StateFeed, ...] = (
    StateFeed(
        "recommend-item-updates",
        ITEM_UPDATES,
        internal=True,
        writes=(TABLE_NEIGHBOURS, TABLE_ITEM_STATS, TABLE_POPULAR),
    ),
    StateFeed(
        "recommend-embeddings",
        "product-categories",
        internal=False,
        writes=(TABLE_EMBEDDINGS, TABLE_CATEGORIES),
    ),
)


def route_for(input_topic: str) -> Route:
    for route in ROUTES:
        if route.input == input_topic:
            return route
    raise KeyError(input_topic)
