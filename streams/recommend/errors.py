"""The recommender's errors, in the service's one hierarchy (streams.errors).

Bad input (a click or an embedding the logic cannot use) is an `InvalidEvent`: the event goes to its
dead-letter topic. A table value that does not decode is our own bug or a foreign writer on the
changelog: `InternalError`, so the click is dead-lettered with the message and processing goes on.
"""

from __future__ import annotations

from streams.errors import InternalError, InvalidEvent


class InvalidClick(InvalidEvent):
    """A click the recommender cannot use: unknown action, empty id, a time that is not finite."""


class InvalidEmbedding(InvalidEvent):
    """A product embedding of the wrong size, with NaN/inf values, or of zero length."""


class CorruptState(InternalError):
    """A stored state value (a table row) that does not have the expected shape."""
