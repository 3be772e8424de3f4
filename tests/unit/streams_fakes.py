"""Test doubles for the service's two external edges: the model server and the broker's producer.

Everything between them (batching, retries, bisection, validation, dead letters, agents) is the real
code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import orjson

from streams.contract import ModelInfo, ModelInput, ModelOutput
from streams.deadletter import read_dead_letter
from streams.errors import InferenceUnavailable, ModelRejected
from streams.records import Header

LABELS = ("tshirt_top", "dress", "sneaker")
INFO = ModelInfo("ecom_fusion", "test-1", LABELS, 4, ("negative", "neutral", "positive"))


class FakeModel:
    """Positive unless the text says "awful"; a sneaker when there is an image. Rejects "REJECT"."""

    def __init__(self, transient_failures: int = 0) -> None:
        self.transient_failures = transient_failures
        self.requests: list[int] = []

    async def infer(self, rows: Sequence[ModelInput]) -> list[ModelOutput]:
        self.requests.append(len(rows))
        if self.transient_failures:
            self.transient_failures -= 1
            raise InferenceUnavailable("StatusCode.UNAVAILABLE: Triton restarting")
        if any(b"REJECT" in r.text for r in rows):
            raise ModelRejected("StatusCode.INVALID_ARGUMENT: rejected")
        out = []
        for r in rows:
            negative = b"awful" in r.text
            sentiment = [0.8, 0.15, 0.05] if negative else [0.05, 0.15, 0.8]
            category = [0.1, 0.1, 0.8] if r.image else [0.2, 0.7, 0.1]
            emb = np.array([1.0, 2.0, 2.0, 4.0], np.float32)
            out.append(
                ModelOutput(
                    np.array(sentiment, np.float32), np.array(category, np.float32), emb / np.linalg.norm(emb)
                )
            )
        return out

    async def info(self) -> ModelInfo:
        return INFO

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RecordingPublisher:
    """Collects what would have been delivered; fails the first `failures` sends like a broker outage."""

    def __init__(self, failures: int = 0) -> None:
        # (topic, key, value as JSON); a dead letter's value is what its headers say, as JSON.
        self.sent: list[tuple[str, bytes | None, dict[str, object]]] = []
        self.records: list[tuple[str, bytes | None, bytes, tuple[Header, ...]]] = []  # as sent
        self.failures = failures
        self._changed = asyncio.Condition()

    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        async with self._changed:
            self.records.append((topic, key, value, tuple(headers)))
            if topic.endswith(".dlq"):
                decoded = read_dead_letter(key, value, headers).info.model_dump(mode="json")
            else:
                decoded = orjson.loads(value)
            self.sent.append((topic, key, decoded))
            self._changed.notify_all()

    def on(self, topic: str) -> list[dict[str, object]]:
        return [v for t, _, v in self.sent if t == topic]

    async def wait_for(self, n: int, wait_s: float = 10.0) -> None:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= n)

        await asyncio.wait_for(enough(), wait_s)
