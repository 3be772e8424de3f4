"""Pre-checks before Triton: base64, image decoding and limits, text limits, what a row holds."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from streams.errors import InvalidImage, OversizeImage, OversizeText, SchemaViolation
from streams.events import ProductUploadEvent, ReviewEvent
from streams.validation import Limits, decode_base64_image, product_input, review_input

LIMITS = Limits(
    max_message_bytes=1_000_000, max_text_bytes=100, max_image_bytes=50_000, max_image_pixels=10_000
)


def encoded(fmt: str = "PNG", size: tuple[int, int] = (28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size[::-1], dtype=np.uint8)).save(
        buf, format=fmt
    )
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_images_pass_unchanged(fmt: str) -> None:
    data = encoded(fmt)
    assert decode_base64_image(b64(data), LIMITS) == data


def test_a_data_uri_is_accepted() -> None:
    data = encoded()
    assert decode_base64_image("data:image/png;base64," + b64(data), LIMITS) == data


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("not base64!", InvalidImage),
        ("", InvalidImage),
        (b64(encoded()[:60]), InvalidImage),  # truncated
        (b64(b"GIF89a" + b"\0" * 40), InvalidImage),  # not an accepted format
        (b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), InvalidImage),  # corrupt
        (b64(encoded(size=(200, 100))), OversizeImage),  # 20,000 pixels > 10,000
        ("A" * 80_000, OversizeImage),  # refused before decoding
    ],
)
def test_bad_images_are_rejected_with_a_reason(value: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_base64_image(value, LIMITS)


def review(**fields: object) -> ReviewEvent:
    base: dict[str, object] = {
        "event_id": "e",
        "review_id": "r",
        "product_id": "p",
        "user_id": "u",
        "text": "ok",
        "ts": 0,
    }
    base.update(fields)
    return ReviewEvent.model_validate(base)


def test_review_row_is_text_and_first_photo() -> None:
    first, second = encoded(), encoded("JPEG")
    row = review_input(review(text="Runs small", images=[b64(first), b64(second)]), LIMITS)
    assert row.text == b"Runs small" and row.image == first


def test_every_review_photo_is_checked() -> None:
    with pytest.raises(InvalidImage, match=r"images\[1\]"):
        review_input(review(images=[b64(encoded()), "broken"]), LIMITS)


def test_review_limits() -> None:
    with pytest.raises(OversizeText):
        review_input(review(text="é" * 60), LIMITS)  # 120 UTF-8 bytes > 100
    with pytest.raises(SchemaViolation, match="nothing to enrich"):
        review_input(review(text="   "), LIMITS)
    with pytest.raises(SchemaViolation, match="images"):
        review_input(review(images=[b64(encoded())] * 9), LIMITS)
    with pytest.raises(SchemaViolation, match="Unicode"):
        review_input(review(text="\ud800"), LIMITS)


def test_product_row_joins_title_and_description() -> None:
    event = ProductUploadEvent.model_validate(
        {
            "event_id": "e",
            "product_id": "p",
            "ts": 0,
            "title": "Canvas sneaker",
            "description": "white, low top",
        }
    )
    row = product_input(event, LIMITS)
    assert row.text == b"Canvas sneaker. white, low top" and row.image == b""


def test_product_with_only_an_image_is_fine_with_nothing_is_not() -> None:
    image = encoded()
    event = ProductUploadEvent.model_validate(
        {"event_id": "e", "product_id": "p", "ts": 0, "image": b64(image)}
    )
    assert product_input(event, LIMITS).image == image
    empty = ProductUploadEvent.model_validate({"event_id": "e", "product_id": "p", "ts": 0, "title": " "})
    with pytest.raises(SchemaViolation):
        product_input(empty, LIMITS)
