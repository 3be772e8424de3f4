"""Delivery of the service's records through the Faust app's producer, acknowledged and retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust

from streams import metrics
from streams.errors import PublishFailed
from streams.lifecycle import Retry
from streams.records import Header

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


class FaustPublisher:
    """`streams.protocols.Publisher`: sends through the app's producer and returns once the broker has
    acknowledged the record; any failure is retried (the event waits)."""

    def __init__(self, app: faust.App, timeout_s: float, retry: Retry) -> None:
        self.app = app
        self.timeout = timeout_s
        self.retry = retry
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        if name not in self._topics:
            self._topics[name] = self.app.topic(name, **RAW)
        return self._topics[name]

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        async def send() -> None:
            try:
                pending = await self._topic(topic).send(
                    key=key, value=value, partition=partition, headers=list(headers) or None
                )
                await asyncio.wait_for(asyncio.shield(pending), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc

        await self.retry.call(send, what=f"publish to {topic}")
        metrics.EVENTS_PRODUCED.labels(topic).inc()
