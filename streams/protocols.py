"""The interfaces between the service's parts, in one place so that no two modules import each other.

Each part depends on these and on value types (`streams.contract`, `streams.events`), never on the
concrete class on the other side: the pipeline on a `Publisher`, a `Recommender` and a `ModelClient`,
not on Faust's producer, the recommender's tables or Triton's gRPC client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from streams.contract import ModelInfo, ModelInput, ModelOutput
from streams.events import ClickEvent, ModelRef, ScoredItem
from streams.recommend.dedup import Origin
from streams.records import Header


class Publisher(Protocol):
    async def publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        """Return once the broker has acknowledged the record; retry transient failures meanwhile.

        `partition`: an explicit partition (the recommender's internal topic); else the key decides.
        `headers`: the record's headers, in order (a dead letter's)."""
        ...


class Recommender(Protocol):
    model: ModelRef

    async def answer(
        self, click: ClickEvent, k: int, origin: Origin | None = None
    ) -> tuple[list[ScoredItem], Awaitable[None] | None]:
        """Record the click (once per `origin`, its clickstream record) and return up to `k` items for
        its user, best first, with the state writes the click caused, still on their way: the click is
        finished only once they are acknowledged."""
        ...


class ModelClient(Protocol):
    """The model server. `version`: the model version to ask ("": the client's default); every output
    carries the version that answered (`ModelOutput.version`), and `info(version)` what it declares."""

    async def infer(self, rows: Sequence[ModelInput], version: str = "") -> list[ModelOutput]: ...

    async def info(self, version: str = "") -> ModelInfo: ...

    async def ready(self, version: str = "") -> bool: ...

    async def close(self) -> None: ...
