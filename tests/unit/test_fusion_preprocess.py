"""Input validation and preprocessing shared by training, serving and the service's pre-checks."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from fusion.errors import BadInput, EmptyInput, ImageTooLarge, InvalidImage, InvalidText
from fusion.preprocess import (
    InputLimits,
    decode_image,
    decode_text,
    prepare_image,
    review_text,
    validate_image,
    validate_request,
    wide_ids,
    wide_tokens,
)

LIMITS = InputLimits()


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, fmt)
    return buf.getvalue()


def product(dark_background: bool = True, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    img = np.zeros(shape, dtype=np.uint8) if dark_background else np.full(shape, 255, dtype=np.uint8)
    h, w = shape
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 200 if dark_background else 40
    return img


def test_text_is_decoded_and_normalised() -> None:
    assert decode_text("  Lovely\n dress\u0301 ".encode(), LIMITS) == "Lovely dress\u0301".replace(
        "s\u0301", "\u015b"
    )


def test_text_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(InvalidText, match="UTF-8"):
        decode_text(b"caf\xe9", LIMITS)


def test_text_over_the_byte_limit_is_rejected() -> None:
    with pytest.raises(InvalidText, match="limit"):
        decode_text(b"a" * 11, InputLimits(max_text_bytes=10))


def test_review_text_joins_title_and_body() -> None:
    assert review_text("Love it", "Fits well.") == "Love it. Fits well."
    assert review_text("Love it!", "Fits well.") == "Love it! Fits well."
    assert review_text(None, " Fits  well. ") == "Fits well."
    assert review_text("  ", None) == ""


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_grey(fmt: str) -> None:
    grey = decode_image(encode(product(), fmt), LIMITS)
    assert grey.shape == (28, 28) and grey.dtype == np.uint8


def test_colour_image_is_converted_to_grey() -> None:
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert decode_image(encode(rgb), LIMITS).shape == (10, 12)


def test_corrupt_bytes_are_an_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        validate_image(b"definitely not an image", LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_an_invalid_image(fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(rng.integers(0, 255, (64, 64), dtype=np.uint8), fmt)
    with pytest.raises(InvalidImage):
        validate_image(data[: len(data) // 2], LIMITS)


def test_unsupported_format_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImage):
        validate_image(encode(product(), "GIF"), LIMITS)


def test_image_over_the_byte_limit_is_too_large() -> None:
    data = encode(product())
    with pytest.raises(ImageTooLarge, match="bytes"):
        validate_image(data, InputLimits(max_image_bytes=len(data) - 1))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge size: a decompression bomb must be refused before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(8000, 6000), (100_000, 100_000)])
def test_decompression_bomb_is_too_large(width: int, height: int) -> None:
    with pytest.raises(ImageTooLarge):
        validate_image(_png_header_only(width, height), LIMITS)


def test_pixel_limit_is_a_setting() -> None:
    data = encode(product(shape=(40, 40)))
    validate_image(data, LIMITS)
    with pytest.raises(ImageTooLarge, match="pixels"):
        validate_image(data, InputLimits(max_image_pixels=40 * 40 - 1))


def test_every_validation_error_is_a_non_retriable_bad_input() -> None:
    for exc in (EmptyInput, InvalidText, InvalidImage, ImageTooLarge):
        assert issubclass(exc, BadInput)
        assert exc("x").retriable is False


def test_request_with_both_inputs_empty_is_rejected() -> None:
    with pytest.raises(EmptyInput):
        validate_request(b"", b"", LIMITS)
    with pytest.raises(EmptyInput):
        validate_request(b"  \n ", b"", LIMITS)


def test_request_with_one_modality() -> None:
    text, image = validate_request(b"nice top", b"", LIMITS)
    assert text == "nice top" and image is None
    text, image = validate_request(b"", encode(product()), LIMITS)
    assert text is None and image is not None


def test_prepare_image_shape_range_and_normalisation() -> None:
    x = prepare_image(product(), 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert x.min() == pytest.approx(-1.0) and x.max() <= 1.0
    np.testing.assert_array_equal(x[0], x[1])


def test_fashion_mnist_style_image_is_only_resized() -> None:
    img = product()
    np.testing.assert_allclose(prepare_image(img, 28)[0], img.astype(np.float32) / 127.5 - 1.0, atol=1e-6)


def test_photo_on_white_is_negated_like_fashion_mnist() -> None:
    on_white, on_black = product(dark_background=False), product(dark_background=True)
    a, b = prepare_image(on_white, 28), prepare_image(255 - on_white, 28)
    np.testing.assert_array_equal(a, b)
    assert prepare_image(on_black, 28)[0, 0, 0] == pytest.approx(-1.0)


def test_non_square_image_is_padded_to_a_square() -> None:
    wide = product(shape=(20, 40))
    x = prepare_image(wide, 40)
    assert x.shape == (3, 40, 40)
    assert np.all(x[:, :10, :] == -1.0) and np.all(x[:, 30:, :] == -1.0)


def test_transparent_background_counts_as_white() -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[8:20, 8:20] = (50, 50, 50, 255)  # an opaque dark product on a fully transparent background
    grey = decode_image(encode(rgba, mode="RGBA"), LIMITS)
    assert grey[0, 0] == 255 and grey[10, 10] == 50
    assert prepare_image(grey, 28)[0, 0, 0] == pytest.approx(-1.0)


def test_wide_features_are_words_and_bigrams_with_stable_hashes() -> None:
    assert wide_tokens("Don't LOVE it!") == ["don't", "love", "it", "don't love", "love it"]
    # crc32, not Python's per-process salted hash(): identical across processes and machines.
    assert wide_ids("love it", 1 << 18) == [
        zlib.crc32(b"love") % (1 << 18),
        zlib.crc32(b"it") % (1 << 18),
        zlib.crc32(b"love it") % (1 << 18),
    ]
