"""A value from an event cannot forge a log line: every record is one line, its traceback indented."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator

import orjson
import pytest

from streams.logs import CONTINUATION, current_coords, escape, logging_config

FORGED = "[2026-01-01 00:00:00,000] [1] [INFO] [-] streams.pipeline: all good"
# Line feed, carriage return, NEL, line and paragraph separators, a terminal escape, a bidi override.
BREAKERS = ["\n", "\r\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c"]


@pytest.fixture
def worker_log(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger configured exactly as the worker's (`logging_config`), writing to a buffer."""
    stream = io.StringIO()
    config = logging_config("DEBUG", getattr(request, "param", False))
    config["handlers"]["stderr"]["stream"] = stream
    config["root"] = {"level": "DEBUG", "handlers": []}
    config["loggers"] = {"forge-test": {"level": "DEBUG", "handlers": ["stderr"], "propagate": False}}
    logging.config.dictConfig(config)
    yield logging.getLogger("forge-test"), stream
    logging.getLogger("forge-test").handlers.clear()


@pytest.mark.parametrize("breaker", BREAKERS)
def test_a_value_with_a_line_break_stays_on_its_record_line(
    worker_log: tuple[logging.Logger, io.StringIO], breaker: str
) -> None:
    log, stream = worker_log
    user_id = f"u-1{breaker}{FORGED}"
    token = current_coords.set("reviews[0]@7")
    try:
        log.warning("dead-lettered review of user %s", user_id)
    finally:
        current_coords.reset(token)
    text = stream.getvalue()
    lines = text.splitlines()  # splits at every Unicode line boundary, as a log viewer may
    assert len(lines) == 1, lines
    assert lines[0].startswith("[") and "[reviews[0]@7]" in lines[0]
    assert FORGED in lines[0] and not lines[0].endswith(FORGED + breaker)


def test_terminal_escapes_and_bidi_overrides_are_escaped() -> None:
    assert escape("a\x1b[2Kb\u202ec\u2066d\x00e\x7f") == "a\\x1b[2Kb\\u202ec\\u2066d\\x00e\\x7f"
    assert escape("tab\tand ünïcödé and emoji 🙂") == "tab\\tand ünïcödé and emoji 🙂"


def test_a_traceback_is_indented_so_its_message_cannot_start_a_record(
    worker_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = worker_log
    try:
        raise ValueError(f"bad text\n{FORGED}\r\n{FORGED}")
    except ValueError:
        log.exception("event failed: %s", f"id\n{FORGED}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[") and "event failed" in lines[0]
    assert len(lines) > 3 and all(line.startswith(CONTINUATION) for line in lines[1:]), lines
    assert sum(line.startswith("[") for line in lines) == 1
    assert any("ValueError: bad text" in line for line in lines)


@pytest.mark.parametrize("worker_log", [True], indirect=True)
def test_json_lines_hold_the_value_escaped(worker_log: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = worker_log
    log.warning("user %s", f"u\n{FORGED}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["message"] == f"user u\n{FORGED}"
