"""The operator commands of `python -m streams` (also `ecom-stream`): send, dlq, backfill, reenrich,
config.

Each is a plain aiokafka client built from the settings (`streams.topics.client_options`), never a
member of the worker's consumer group: reading is by assignment, without commits, so no command moves
the live group's offsets. Nothing here imports torch, transformers or pandas (the worker image has
none); `streams/__main__.py` parses the arguments and calls these modules.
"""

from __future__ import annotations


class OperatorError(Exception):
    """A command cannot do what it was asked; the message says why (printed, exit code 2)."""
