"""A consumed Kafka record as the service's logic sees it, independent of Faust."""

from __future__ import annotations

from dataclasses import dataclass

# A Kafka record header: a name and a value that may be null. Names may repeat; order is kept.
Header = tuple[str, bytes | None]


@dataclass(frozen=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None  # the broker's record time, Unix seconds
    headers: tuple[Header, ...] = ()  # the record's headers, as they came

    @property
    def coords(self) -> str:
        """`topic[partition]@offset`, the form every error line carries."""
        return f"{self.topic}[{self.partition}]@{self.offset}"
