"""Pre-checks before an event reaches Triton: sizes, base64, text and image decoding.

The image and text checks are the model's own (`fusion.preprocess.validate_image` / `decode_text`), so the
stream and the served model agree on what a valid input is; a bad event is dead-lettered here with a
precise reason, without spending a request and without making a whole batch fail. The service's limits
(settings) apply; keep them at or below the model's (`config.pbtxt` parameters) so that what passes here
also passes there. Should the model still reject a row, the batch is bisected and only that row is
dead-lettered (streams.inference).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fusion import errors as fusion_errors
from fusion.preprocess import InputLimits, decode_text, review_text, validate_image
from streams.contract import ModelInput
from streams.errors import InvalidEvent, InvalidImage, OversizeImage, OversizeText, SchemaViolation
from streams.events import ProductUploadEvent, ReviewEvent
from streams.settings import Settings


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 1_000_000
    max_text_bytes: int = 64 * 1024
    max_image_bytes: int = 700_000
    max_image_pixels: int = 16_000_000
    max_review_images: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_text_bytes=settings.max_text_bytes,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_review_images=settings.max_review_images,
        )

    def model_limits(self) -> InputLimits:
        return InputLimits(
            max_text_bytes=self.max_text_bytes,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
        )


def _translate(exc: fusion_errors.BadInput, what: str) -> InvalidEvent:
    message = f"{what}: {exc}"
    if isinstance(exc, fusion_errors.ImageTooLarge):
        return OversizeImage(message)
    if isinstance(exc, fusion_errors.InvalidImage):
        return InvalidImage(message)
    if isinstance(exc, fusion_errors.InvalidText) and "limit" in str(exc):
        return OversizeText(message)
    return SchemaViolation(message)


def decode_base64_image(data: str, limits: Limits, what: str = "image") -> bytes:
    if data.startswith("data:"):  # tolerate a data URI: data:image/png;base64,....
        _, _, data = data.partition(",")
    # 4 base64 characters carry 3 bytes: refuse before decoding a huge string.
    if len(data) * 3 // 4 > limits.max_image_bytes + 3:
        raise OversizeImage(f"{what} of about {len(data) * 3 // 4} bytes exceeds {limits.max_image_bytes}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{what} is not valid base64: {exc}") from None
    if not raw:
        raise InvalidImage(f"{what} is empty")
    check_image(raw, limits, what)
    return raw


def check_image(raw: bytes, limits: Limits, what: str = "image") -> None:
    """Raise unless `raw` is a complete JPEG/PNG/WebP image within the byte and pixel limits."""
    try:
        validate_image(raw, limits.model_limits()).close()
    except fusion_errors.BadInput as exc:
        raise _translate(exc, what) from None


def check_text(text: str, limits: Limits, what: str = "text") -> bytes:
    # JSON strings can hold lone surrogates, which are not UTF-8.
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SchemaViolation(f"{what} is not valid Unicode: {exc.reason}") from None
    try:
        decode_text(raw, limits.model_limits())
    except fusion_errors.BadInput as exc:
        raise _translate(exc, what) from None
    return raw


def review_input(event: ReviewEvent, limits: Limits) -> ModelInput:
    """Text plus the first photo (every photo is validated; the model takes one image per row)."""
    if len(event.images) > limits.max_review_images:
        raise SchemaViolation(f"{len(event.images)} images exceed the limit of {limits.max_review_images}")
    images = [decode_base64_image(data, limits, f"images[{i}]") for i, data in enumerate(event.images)]
    text = check_text(event.text, limits)
    if not text.strip() and not images:
        raise SchemaViolation("nothing to enrich: empty text and no image")
    return ModelInput(text=text, image=images[0] if images else b"")


def product_text(event: ProductUploadEvent) -> str:
    """Title then description, joined the way the model reads a review's title and body."""
    return review_text(event.title, event.description)


def product_input(event: ProductUploadEvent, limits: Limits) -> ModelInput:
    text = check_text(product_text(event), limits, "title+description")
    image = decode_base64_image(event.image, limits) if event.image else b""
    if not text.strip() and not image:
        raise SchemaViolation("nothing to enrich: no title, description or image")
    return ModelInput(text=text, image=image)
