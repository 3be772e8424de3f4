"""Input validation and preprocessing shared by training, serving and the service's pre-checks.

The service can reject a bad event before it reaches Triton with exactly the code the model runs:

    from fusion.preprocess import InputLimits, validate_request
    text, image = validate_request(text_bytes, image_bytes, InputLimits())  # raises fusion.errors.BadInput

Images are made to look like Fashion-MNIST, whose photos were converted by Zalando to grey, negated
(bright product on a dark background), fitted into a square and scaled: `prepare_image` converts to
grey, negates when the border is bright (a product photo on a white background), pads to a square
with the background and resizes. Fashion-MNIST's own images pass through unchanged but for the resize.
"""

from __future__ import annotations

import io
import itertools
import re
import unicodedata
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from fusion.errors import EmptyInput, ImageTooLarge, InvalidImage, InvalidText

GreyImage = npt.NDArray[np.uint8]  # [H, W], 0..255
ImageTensor = npt.NDArray[np.float32]  # [3, S, S], normalised to -1..1


@dataclass(frozen=True)
class InputLimits:
    """Limits on one request; the served model reads them from its config.pbtxt parameters."""

    max_text_bytes: int = 64 * 1024
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")


def normalize_text(text: str) -> str:
    """NFC, whitespace collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def review_text(title: str | None, body: str | None) -> str:
    """The TEXT input for a review: the title, then the body (as the model was trained)."""
    parts = [normalize_text(p) for p in (title, body) if p is not None and normalize_text(p)]
    if len(parts) == 2 and parts[0][-1] not in ".!?":
        parts[0] += "."
    return " ".join(parts)


def decode_text(raw: bytes, limits: InputLimits) -> str:
    """Bytes -> normalised text; an empty result means "no text". Raises InvalidText."""
    if len(raw) > limits.max_text_bytes:
        raise InvalidText(f"text is {len(raw)} bytes, over the limit of {limits.max_text_bytes}")
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidText(f"text is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    return normalize_text(text)


def validate_image(raw: bytes, limits: InputLimits) -> Image.Image:
    """Encoded bytes -> a fully decoded PIL image, or InvalidImage / ImageTooLarge.

    The pixel limit is checked from the header, before any pixel is decoded, so a decompression bomb
    costs nothing; decoding then runs to the end, so a truncated file is caught here.
    """
    if len(raw) > limits.max_image_bytes:
        raise ImageTooLarge(f"image is {len(raw)} bytes, over the limit of {limits.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            # We apply our own (lower) pixel limit just below; PIL's hard limit still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=list(limits.formats))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image header declares too many pixels: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"not a decodable {'/'.join(limits.formats)} image: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels,"
            f" over the limit of {limits.max_image_pixels}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large to decode: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"image is corrupt or truncated: {exc}") from exc
    return image


def to_grey(image: Image.Image) -> GreyImage:
    """PIL image -> grey uint8 array; transparent pixels count as a white background."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_image(raw: bytes, limits: InputLimits) -> GreyImage:
    return to_grey(validate_image(raw, limits))


def prepare_image(grey: GreyImage, size: int) -> ImageTensor:
    """Grey uint8 [H, W] -> float32 [3, size, size] in -1..1, Fashion-MNIST style (see module doc)."""
    if grey.ndim != 2 or grey.shape[0] == 0 or grey.shape[1] == 0:
        raise InvalidImage(f"expected a non-empty 2-D grey image, got shape {grey.shape}")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if float(border.mean()) > 127.5:
        grey = (255 - grey).astype(np.uint8)
    height, width = grey.shape
    if height != width:
        side = max(height, width)
        square = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = grey
        grey = square
    if grey.shape[0] != size:
        grey = np.asarray(
            Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    x = grey.astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5  # EfficientNet-Lite's input normalisation
    return np.repeat(x[None], 3, axis=0)


def validate_request(
    text_raw: bytes, image_raw: bytes, limits: InputLimits
) -> tuple[str | None, GreyImage | None]:
    """One request's two inputs -> (text or None, grey image or None). Raises a BadInput subclass."""
    text = decode_text(text_raw, limits) if text_raw else ""
    image = decode_image(image_raw, limits) if image_raw else None
    if not text and image is None:
        raise EmptyInput("both TEXT and IMAGE are empty")
    return (text or None), image


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def wide_tokens(text: str) -> list[str]:
    """Lower-cased words, then word bigrams: the features of the model's wide (hashed n-gram) branch."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def wide_ids(text: str, buckets: int) -> list[int]:
    """Stable hashes (crc32, not Python's salted hash) of `wide_tokens` into `buckets` bins."""
    return [zlib.crc32(token.encode("utf-8")) % buckets for token in wide_tokens(text)]


def stack_images(images: Sequence[ImageTensor]) -> npt.NDArray[np.float32]:
    return np.stack(images).astype(np.float32, copy=False)
