"""Log lines of the worker: text for people, or one JSON object per line (`ECOM_LOG_JSON=true`).

Every line logged while an event is being processed carries its `topic[partition]@offset` (`coords`):
the agent sets it in a context variable for the event's task, and a filter copies it onto the record.

A log line may quote what an event holds (an id, an error message about its text), so neither format
lets a value start a line of its own: JSON escapes it, and the text format writes a record's line with
every control character, line separator and bidirectional override escaped (`\\n`, `\\x1b`,
`\\u2028`), and any traceback after it on lines indented by four spaces. A text record therefore
starts at column 0 with `[`, and nothing else does.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

current_coords: ContextVar[str | None] = ContextVar("current_coords", default=None)

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] [%(coords)s] %(name)s: %(message)s"


class CoordsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "coords", None):
            record.coords = current_coords.get() or "-"
        return True


_SASL_BYTES = re.compile(r"sasl_auth_bytes=b(['\"]).*?(?<!\\)\1")


class CredentialsFilter(logging.Filter):
    """aiokafka logs every request at DEBUG, SASL authentication included: with PLAIN its bytes are the
    username and the password. Such a request or response is logged by its type only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl_exchange(arg) for arg in record.args):
            record.args = tuple(
                f"{type(arg).__name__}(credentials not logged)" if _is_sasl_exchange(arg) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str) and "sasl_auth_bytes=" in record.msg:
            record.msg = _SASL_BYTES.sub("sasl_auth_bytes=(not logged)", record.msg)
        return True


def _is_sasl_exchange(value: Any) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


# C0 and C1 controls (line feed, carriage return, terminal escape sequences), DEL, Unicode line and
# paragraph separators, and the bidirectional marks and overrides that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
CONTINUATION = "    "


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """`text` on one line: the characters that could break or disguise a log line, escaped."""
    return _UNSAFE.sub(_escaped, text)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, one line per record (escaped), then any traceback on indented lines."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = escape(self.formatMessage(record))
        blocks = []
        if record.exc_info:
            blocks.append(self.formatException(record.exc_info))
        elif record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            # splitlines() also splits at the separators escape() would escape: each piece is indented.
            line += "".join(f"\n{CONTINUATION}{escape(part)}" for part in block.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        coords = getattr(record, "coords", "-")
        if coords and coords != "-":
            payload["coords"] = coords
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload).decode()


def logging_config(level: str, json: bool) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the worker (handed to the Faust worker, which applies it)."""
    formatter: dict[str, Any] = {"()": JsonFormatter if json else TextFormatter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"coords": {"()": CoordsFilter}, "credentials": {"()": CredentialsFilter}},
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["coords", "credentials"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
