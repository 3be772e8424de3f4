"""One exception hierarchy for the service.

Callers decide by attribute, not by a list of types: `retriable` errors are retried with backoff and are
never dead-lettered for being transient; the others send the event to its dead-letter topic, where the
envelope's `error.type` (the class name) is the reason.
"""

from __future__ import annotations


class EnrichmentError(Exception):
    """Base class. `retriable` says whether trying the same thing again can succeed."""

    retriable: bool = False

    @property
    def reason(self) -> str:
        return type(self).__name__


# --- The event itself is bad: dead-letter it. ---------------------------------------------------
class InvalidEvent(EnrichmentError):
    """The event cannot be enriched as it is."""


class OversizeMessage(InvalidEvent):
    """The raw message is larger than `max_message_bytes`."""


class MalformedJson(InvalidEvent):
    """The message is not a JSON object (or not UTF-8)."""


class SchemaViolation(InvalidEvent):
    """JSON, but missing or wrongly typed fields, or an unsupported `schema_version`."""


class InvalidImage(InvalidEvent):
    """An image that is not base64, not a JPEG/PNG/WebP, corrupt or truncated."""


class OversizeImage(InvalidEvent):
    """An image over the byte or pixel limit."""


class OversizeText(InvalidEvent):
    """Text longer than `max_text_bytes` (UTF-8)."""


# --- Inference ----------------------------------------------------------------------------------
class InferenceError(EnrichmentError):
    """Triton did not give a usable answer."""


class InferenceUnavailable(InferenceError):
    """Triton unreachable, the model not ready, or the server overloaded."""

    retriable = True


class ModelServerFault(InferenceUnavailable):
    """The model server failed for reasons of its own: a dead Python stub, or a server error that a
    known-good row meets too. Retried like unavailability; no event is dead-lettered for it
    (streams.inference)."""


class InferenceTimeout(InferenceError):
    """The request ran past its deadline."""

    retriable = True


class ModelRejected(InferenceError):
    """The model answered the request with an error: after bisection, the row's own fault.

    `ambiguous` marks server errors (gRPC INTERNAL/UNKNOWN) that do not name a bad input and may as well
    come from the server; such a row is dead-lettered only while the model answers a known-good row
    (streams.inference), and after a few tries.
    """

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class BadModelResponse(InferenceError):
    """The model answered, but not per the contract (missing output, wrong shape, no labels).

    Retriable: it says the deployment is wrong, not the event, so events wait for a fixed model
    instead of all being dead-lettered.
    """

    retriable = True


# --- Kafka --------------------------------------------------------------------------------------
class PublishFailed(EnrichmentError):
    """A record was not acknowledged by the broker; sending it again may succeed."""

    retriable = True


class ShuttingDown(EnrichmentError):
    """The worker is stopping while this event waits to be retried: it is left uncommitted (never
    dead-lettered) and processed again by the next owner of its partition."""

    retriable = True


class InternalError(EnrichmentError):
    """A bug met on one event: the event is dead-lettered with the message, processing goes on."""
