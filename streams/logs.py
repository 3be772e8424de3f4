"""Log lines of the worker: text for people, or one JSON object per line (`ECOM_LOG_JSON=true`).

Every line logged while an event is being processed carries its `topic[partition]@offset` (`coords`):
the agent sets it in a context variable for the event's task, and a filter copies it onto the record.
"""

from __future__ import annotations

import logging
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
    formatter: dict[str, Any] = {"()": JsonFormatter} if json else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"coords": {"()": CoordsFilter}},
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": ["coords"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }
