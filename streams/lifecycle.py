"""The worker's stop signal, as seen by code that waits and retries.

Retry loops sleep through `Lifecycle.sleep`: once the worker is stopping it raises `ShuttingDown`
instead of waiting for a dependency that may not come back, so a SIGTERM ends the worker promptly and
the events still waiting stay uncommitted for the next owner of their partitions.
"""

from __future__ import annotations

import asyncio

from streams.errors import ShuttingDown


class Lifecycle:
    def __init__(self) -> None:
        self._stopping: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def stop(self) -> None:
        self._event().set()

    async def sleep(self, delay: float) -> None:
        """`asyncio.sleep(delay)`, cut short by `stop()` with `ShuttingDown`."""
        stopping = self._event()
        if stopping.is_set():
            raise ShuttingDown("the worker is stopping")
        try:
            await asyncio.wait_for(stopping.wait(), delay)
        except TimeoutError:
            return
        raise ShuttingDown("the worker is stopping")
