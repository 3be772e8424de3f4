"""The times operators give on the command line (`--since`, `--until`), and the range they make."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_AGO = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
FORMS = "an RFC 3339 time (2024-05-01T10:00:00Z; no offset = UTC), a date, Unix seconds, or 30m / 2h / 7d ago"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`text` as a UTC time: RFC 3339 or ISO 8601 (a date alone is its midnight; no offset is UTC), a
    number of Unix seconds, or a duration before `now` (`90s`, `30m`, `2h`, `7d`, `1w`)."""
    value = text.strip()
    now = now or datetime.now(UTC)
    ago = _AGO.fullmatch(value)
    if ago:
        return now - timedelta(**{_UNITS[ago["unit"]]: float(ago["n"])})
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {FORMS}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class TimeRange:
    """[since, until): either end open when None."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError(
                f"--until ({self.until.isoformat()}) is not after --since ({self.since.isoformat()})"
            )

    def __contains__(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)

    def contains_ms(self, timestamp_ms: int | None) -> bool:
        """For a record time in milliseconds; a record without one is in every range."""
        if timestamp_ms is None or timestamp_ms < 0:
            return True
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC) in self
