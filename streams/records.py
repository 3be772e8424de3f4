"""A consumed Kafka record as the service's logic sees it, independent of Faust."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None  # the broker's record time, Unix seconds

    @property
    def coords(self) -> str:
        """`topic[partition]@offset`, the form every error line carries."""
        return f"{self.topic}[{self.partition}]@{self.offset}"
