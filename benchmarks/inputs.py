"""The benchmark's inputs: real held-out reviews and real Fashion-MNIST test listings, as plain files.

`prepare` (this machine: it reads the reviews parquet and the Debian Fashion-MNIST files) writes
`reviews.jsonl`, `products.jsonl` and `manifest.json` into a folder; `load_inputs` reads them back with
nothing but the standard library, so the run step works on a machine that has neither data set.

- Reviews: the model's test split (`tooling.sample.heldout_reviews`, never a training review); the text
  is title + body the way the model reads it.
- Listings: Fashion-MNIST test images encoded as PNG. Fashion-MNIST has no listing text, so the title is
  the image's class name (the one text that really belongs to the image) and the description is a
  held-out review of the same taxonomy leaf where the reviews have that leaf (footwear and bags have
  none: title only). That is how the model's training pairs text with images (docs/model.md), and it
  makes the text tower's cost per listing realistic (a description of a few sentences).
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["review", "product"]
KINDS: tuple[Kind, ...] = ("review", "product")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Review:
    id: str
    product_id: str
    text: str
    rating: int


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    description: str | None
    image: bytes  # PNG
    fmnist_label: int


@dataclass(frozen=True)
class BenchInputs:
    reviews: list[Review]
    products: list[Product]
    manifest: dict[str, Any]

    def count(self, kind: Kind) -> int:
        return len(self.reviews) if kind == "review" else len(self.products)


def model_row(item: Review | Product) -> tuple[bytes, bytes]:
    """(TEXT, IMAGE) exactly as the worker sends them to Triton (streams.validation)."""
    from fusion.preprocess import review_text

    if isinstance(item, Review):
        return item.text.encode("utf-8"), b""
    return review_text(item.title, item.description).encode("utf-8"), item.image


def event_fields(item: Review | Product) -> dict[str, Any]:
    """The event's payload without `event_id` and `ts` (docs/events.md)."""
    if isinstance(item, Review):
        return {
            "schema_version": 1,
            "review_id": item.id,
            "product_id": item.product_id,
            "user_id": f"reviewer-{item.id}",
            "text": item.text,
            "rating": item.rating,
        }
    fields: dict[str, Any] = {
        "schema_version": 1,
        "product_id": item.id,
        "title": item.title,
        "image": base64.b64encode(item.image).decode("ascii"),
    }
    if item.description:
        fields["description"] = item.description
    return fields


def items(inputs: BenchInputs, kind: Kind) -> list[Review] | list[Product]:
    return inputs.reviews if kind == "review" else inputs.products


def cycle(seq: list[Any]) -> Iterator[Any]:
    """The inputs over and over (a benchmark may need more events than there are inputs)."""
    if not seq:
        raise ValueError("no inputs of this kind")
    while True:
        yield from seq


# --- files ------------------------------------------------------------------------------------------
def write_inputs(out: Path, reviews: list[Review], products: list[Product], manifest: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "reviews.jsonl").open("w", encoding="utf-8") as f:
        for r in reviews:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    with (out / "products.jsonl").open("w", encoding="utf-8") as f:
        for p in products:
            record = asdict(p)
            record["image_png_b64"] = base64.b64encode(record.pop("image")).decode("ascii")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "counts": {"review": len(reviews), "product": len(products)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_inputs(folder: Path) -> BenchInputs:
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{folder} holds no benchmark inputs (run `python -m benchmarks prepare --out {folder}`)"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: inputs format {manifest.get('format_version')}, expected {FORMAT_VERSION}"
        )
    reviews = [Review(**json.loads(line)) for line in _lines(folder / "reviews.jsonl")]
    products = []
    for line in _lines(folder / "products.jsonl"):
        record = json.loads(line)
        image = base64.b64decode(record.pop("image_png_b64"), validate=True)
        products.append(Product(image=image, **record))
    return BenchInputs(reviews, products, manifest)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line


# --- prepare (this machine only: real data sets, pandas, scikit-learn) -------------------------------
def prepare(out: Path, *, reviews: int, products: int, seed: int = 0) -> BenchInputs:
    from fusion.data import load_reviews, review_splits
    from fusion.taxonomy import FMNIST_CLASSES, FMNIST_TO_LEAF, LEAF_NAMES
    from tooling.sample import fashion_mnist_test, heldout_reviews, png_bytes

    review_rows = heldout_reviews(reviews, seed)
    review_items = [
        Review(
            id=f"wcr-{r['row']}",
            product_id=f"clothing-{r['clothing_id']}",
            text=str(r["text"]),
            rating=int(r["rating"]),
        )
        for r in review_rows
    ]

    # Descriptions: held-out reviews by leaf (the test split only).
    data = load_reviews()
    by_leaf: dict[str, list[int]] = {}
    for i in review_splits(data)["test"]:
        leaf = int(data.leaf[i])
        if leaf >= 0:
            by_leaf.setdefault(LEAF_NAMES[leaf], []).append(int(i))
    rng = random.Random(seed)
    product_items = []
    for idx, pixels, label in fashion_mnist_test(products, seed):
        pool = by_leaf.get(FMNIST_TO_LEAF[label])
        description = data.texts[rng.choice(pool)] if pool else None
        product_items.append(
            Product(
                id=f"fmnist-test-{idx}",
                title=FMNIST_CLASSES[label],
                description=description,
                image=png_bytes(pixels),
                fmnist_label=label,
            )
        )
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "sources": {
            "review": "Women's Clothing E-Commerce Reviews, the model's test split (title + body)",
            "product": (
                "Fashion-MNIST test images as PNG; title = class name; description = a held-out "
                "review of the same leaf where one exists (footwear, bags: title only)"
            ),
        },
    }
    write_inputs(out, review_items, product_items, manifest)
    return load_inputs(out)
