"""A micro-batcher: many callers each await their own result; rows travel in bounded batches.

`submit(item)` queues one item and waits for its result. A dispatcher cuts a batch when it holds
`max_size` items or when the oldest has waited `linger` seconds, but only once one of `max_in_flight`
slots is free: while every slot is busy, items keep queueing, so batches grow under load and the number
of requests in flight never exceeds the bound. The handler returns one result per item, in order; a
result that is an exception is raised to that item's caller only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

Handler = Callable[[Sequence[I]], Awaitable[Sequence[R | BaseException]]]


class MicroBatcher(Generic[I, R]):
    def __init__(
        self,
        handler: Handler[I, R],
        *,
        max_size: int,
        linger: float,
        max_in_flight: int,
        name: str = "batcher",
    ) -> None:
        if max_size < 1 or max_in_flight < 1 or linger < 0:
            raise ValueError("max_size and max_in_flight must be >= 1, linger >= 0")
        self._handler = handler
        self.max_size = max_size
        self.linger = linger
        self.name = name
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: list[tuple[I, asyncio.Future[R], float]] = []
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def submit(self, item: I) -> R:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.done():
            # A fresh context: the dispatcher serves every caller, not the one whose submit started it.
            self._dispatcher = loop.create_task(
                self._dispatch(), name=f"{self.name}-dispatch", context=contextvars.Context()
            )
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future, time.monotonic()))
        self._wakeup.set()
        return await future

    async def _dispatch(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            try:
                await self._wait_for_batch()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch), name=f"{self.name}-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch or its oldest item has lingered long enough."""
        while self._queue and len(self._queue) < self.max_size:
            remaining = self._queue[0][2] + self.linger - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take_batch(self) -> list[tuple[I, asyncio.Future[R]]]:
        # Callers that gave up (cancelled) are dropped before the request is made.
        batch: list[tuple[I, asyncio.Future[R]]] = []
        while self._queue and len(batch) < self.max_size:
            item, future, _ = self._queue.pop(0)
            if not future.done():
                batch.append((item, future))
        return batch

    async def _run(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            try:
                results = await self._handler([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"{self.name}: handler returned {len(results)} results for {len(batch)}"
                    )
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001  (handed to every caller of the batch; none is lost)
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop dispatching; cancel what runs and what waits."""
        self._closed = True
        tasks = [t for t in (self._dispatcher, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future, _ in self._queue:
            if not future.done():
                future.cancel()
        self._queue.clear()
