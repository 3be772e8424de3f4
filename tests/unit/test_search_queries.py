"""Search by photo or by words through the worker's own wiring (no Kafka, no Triton): a query is embedded
by the model like a listing, matched against the recommender's content index, published on
`product-matches`; a bad query is dead-lettered with its reason."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from PIL import Image
from prometheus_client import REGISTRY
from streams_fakes import INFO, FakeModel, RecordingPublisher

from streams.contract import ModelInput, ModelOutput
from streams.records import SourceRecord
from streams.runtime import Runtime, build_runtime
from streams.settings import Settings
from streams.topology import MODEL_KINDS, TABLE_CATEGORIES, route_for

# Directions of the fake model's 4-dimensional embedding space.
WORDS = {"dress": (1.0, 0.1, 0.0, 0.0), "sneaker": (0.0, 0.1, 1.0, 0.0), "tshirt": (0.0, 1.0, 0.1, 0.0)}


def unit(values: Sequence[float]) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()  # type: ignore[no-any-return]


class SearchModel(FakeModel):
    """Text: the direction of the first known word; an image: a sneaker, whatever it shows."""

    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        out = await super().infer(rows)
        for i, row in enumerate(rows):
            words = [w for w in WORDS if w.encode() in row.text]
            direction = WORDS["sneaker"] if row.image else WORDS[words[0]] if words else (0, 0, 0, 1)
            out[i] = ModelOutput(out[i].sentiment, out[i].category, np.asarray(unit(direction), np.float32))
        return out


def make_runtime() -> tuple[Runtime, RecordingPublisher]:
    publisher = RecordingPublisher()
    settings = Settings.model_validate(
        {"batch_max_size": 8, "batch_linger_ms": 5, "retry_backoff_initial_s": 0.001}
    )
    return build_runtime(settings, None, model=SearchModel(), publisher=publisher), publisher


offsets = iter(range(10**6))


def rec(topic: str, value: object, key: bytes = b"k") -> SourceRecord:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    return SourceRecord(topic, 0, next(offsets), key, data, 1.7e9)


CATALOGUE = {
    "dress-1": ("dress", (1.0, 0.0, 0.0, 0.0)),
    "dress-2": ("dress", (1.0, 0.3, 0.0, 0.0)),
    "tee-1": ("tshirt_top", (0.1, 1.0, 0.0, 0.0)),
    "shoe-1": ("sneaker", (0.0, 0.0, 1.0, 0.1)),
    "shoe-2": ("sneaker", (0.0, 0.2, 1.0, 0.0)),
}


async def listed(runtime: Runtime) -> None:
    """The catalogue as the embeddings agent sees it: product-categories records."""
    for product_id, (label, vector) in CATALOGUE.items():
        listing = {
            "product_id": product_id,
            "category": {"label": label, "score": 0.9},
            "embedding": unit(vector),
        }
        await runtime.recommend.put_embedding(rec("product-categories", listing, product_id.encode()))


def png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


QUERY = {"event_id": "q-e1", "query_id": "q1", "ts": "2024-05-01T00:00:00Z"}


def test_the_route_embeds_queries_in_the_listings_micro_batches() -> None:
    route = route_for("product-queries")
    assert (route.output, route.key, route.dlq, route.model_kind) == (
        "product-matches",
        "query_id",
        "product-queries.dlq",
        "product",
    )
    assert MODEL_KINDS == ("review", "product")  # one batcher per kind, shared by two routes


async def test_words_find_the_closest_products_best_first() -> None:
    runtime, pub = make_runtime()
    await listed(runtime)
    assert runtime.recommend.views[TABLE_CATEGORIES]["shoe-1"] == "sneaker"
    record = rec("product-queries", {**QUERY, "user_id": 7, "text": "a red dress", "k": 3}, b"q1")
    assert await runtime.pipeline.handle(record) == "enriched"
    [(topic, key, value)] = pub.sent
    assert topic == "product-matches" and key == b"q1"
    assert value["event_id"] == "q-e1" and value["query_id"] == "q1" and value["user_id"] == "7"
    assert value["model"] == {"name": "ecom_fusion", "version": INFO.version}
    assert value["query_category"]["label"] in INFO.category_labels
    matches = value["matches"]
    assert isinstance(matches, list)
    assert [m["product_id"] for m in matches] == ["dress-1", "dress-2", "tee-1"]
    assert [m["category"] for m in matches] == ["dress", "dress", "tshirt_top"]
    assert matches[0]["score"] == pytest.approx(float(np.dot(unit(WORDS["dress"]), unit((1, 0, 0, 0)))))
    assert value["catalogue_size"] == 5 and value["category_filter"] is None
    assert isinstance(value["latency_ms"], float) and value["latency_ms"] >= 0


async def test_a_photo_with_a_category_filter() -> None:
    runtime, pub = make_runtime()
    await listed(runtime)
    query = {**QUERY, "image": png(), "category": "tshirt_top", "k": 10}
    assert await runtime.pipeline.handle(rec("product-queries", query)) == "enriched"
    value = pub.on("product-matches")[0]
    assert [m["product_id"] for m in value["matches"]] == ["tee-1"]  # type: ignore[index]
    assert value["category_filter"] == "tshirt_top"


async def test_a_listing_listed_again_is_found_where_it_moved() -> None:
    runtime, pub = make_runtime()
    await listed(runtime)
    moved = {
        "product_id": "tee-1",
        "category": {"label": "sneaker", "score": 0.8},
        "embedding": unit(WORDS["sneaker"]),
    }
    await runtime.recommend.put_embedding(rec("product-categories", moved))
    await runtime.pipeline.handle(rec("product-queries", {**QUERY, "text": "sneaker", "k": 1}))
    [match] = pub.on("product-matches")[0]["matches"]  # type: ignore[misc]
    assert match == {
        "product_id": "tee-1",
        "score": pytest.approx(1.0, abs=1e-5),
        "category": "sneaker",
    }


async def test_an_empty_catalogue_answers_with_no_matches() -> None:
    runtime, pub = make_runtime()
    assert await runtime.pipeline.handle(rec("product-queries", {**QUERY, "text": "dress"})) == "enriched"
    value = pub.on("product-matches")[0]
    assert value["matches"] == [] and value["catalogue_size"] == 0


@pytest.mark.parametrize(
    ("fields", "reason", "words"),
    [
        ({}, "SchemaViolation", "nothing to search with"),
        ({"text": "   "}, "SchemaViolation", "nothing to search with"),
        ({"text": "dress", "category": "spaceship"}, "SchemaViolation", "not a category of the model"),
        ({"text": "dress", "k": 0}, "SchemaViolation", "k"),
        ({"text": "dress", "k": 101}, "SchemaViolation", "k"),
        ({"image": "not base64!"}, "InvalidImage", "base64"),
        ({"image": base64.b64encode(b"GIF89a....").decode()}, "InvalidImage", "image"),
        ({"text": "x" * 70_000}, "OversizeText", "text"),
        ({"query_id": ""}, "SchemaViolation", "query_id"),
    ],
)
async def test_bad_queries_are_dead_lettered_with_their_reason(
    fields: dict[str, object], reason: str, words: str
) -> None:
    runtime, pub = make_runtime()
    await listed(runtime)
    before = dead_letters(reason)
    record = rec("product-queries", {**QUERY, **fields})
    assert await runtime.pipeline.handle(record) == "dead_lettered"
    [(topic, _, letter)] = pub.sent
    assert topic == "product-queries.dlq" and letter["event_id"] == "q-e1"
    error = letter["error"]
    assert isinstance(error, dict) and error["type"] == reason and words in str(error["message"])
    assert dead_letters(reason) == before + 1


def dead_letters(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "ecom_dead_letters_total", {"topic": "product-queries", "reason": reason}
    )
    return value or 0.0


async def test_queries_and_listings_share_the_model_batches() -> None:
    runtime, _ = make_runtime()
    model = runtime.model
    assert isinstance(model, SearchModel)
    listing = {"event_id": "l1", "product_id": "new", "title": "dress", "ts": "2024-05-01T00:00:00Z"}
    import asyncio

    outcomes = await asyncio.gather(
        runtime.pipeline.handle(rec("product-uploads", listing)),
        runtime.pipeline.handle(rec("product-queries", {**QUERY, "text": "dress"})),
    )
    assert outcomes == ["enriched", "enriched"]
    assert model.requests == [2]  # one request to the model for both
