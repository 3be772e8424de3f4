"""Errors raised by the model's input validation and loading.

Every error carries `retriable`: a bad input will fail the same way on every retry (dead-letter it), a
model that is not ready might not. The service maps these onto its own hierarchy by that attribute.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of every error the fusion package raises on purpose."""

    retriable: bool = False


class BadInput(FusionError):
    """The request itself is unusable; retrying cannot help."""

    retriable = False
    reason = "bad_input"


class EmptyInput(BadInput):
    reason = "empty_input"


class InvalidText(BadInput):
    """Text that is not valid UTF-8, or longer than the byte limit."""

    reason = "invalid_text"


class InvalidImage(BadInput):
    """Bytes that do not decode as a supported image: corrupt, truncated, or an unsupported format."""

    reason = "invalid_image"


class ImageTooLarge(BadInput):
    """Encoded image over the byte limit, or a decoded size over the pixel limit (decompression bomb)."""

    reason = "image_too_large"


class ModelNotReady(FusionError):
    """Weights missing or not loadable; a later attempt (after a deploy) may succeed."""

    retriable = True
