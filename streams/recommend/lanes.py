"""Per-key order without serialising every key: how the clickstream agent runs clicks concurrently.

A shopper's clicks must be processed in the order they sit on their partition (the session and the
history depend on it), but two shoppers have nothing to wait for. `KeyedOrder` runs each submitted job
in its own task as soon as the previous job with the same key has finished; jobs with different keys
overlap freely. At most `limit` jobs are pending or running: `submit` waits for room, so a slow stretch
stops the agent from taking more events (back-pressure on the stream, as the other agents have).

Tasks are created with the caller's context (asyncio copies it), so context variables set for the
current event (Faust's current event, which table writes use to pick their changelog partition, and
the log coordinates) follow each job. Pure asyncio: no Faust import, tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class KeyedOrder:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._room = asyncio.Semaphore(limit)
        self._tails: dict[Hashable, asyncio.Task[None]] = {}  # key -> its latest job
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Jobs submitted and not finished."""
        return len(self._tasks)

    async def submit(self, key: Hashable, job: Job) -> None:
        """Schedule `job` after the jobs already submitted with `key`; wait while `limit` are pending."""
        await self._room.acquire()
        previous = self._tails.get(key)
        task = asyncio.create_task(self._run(previous, job))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(key, t))

    @staticmethod
    async def _run(previous: asyncio.Task[None] | None, job: Job) -> None:
        if previous is not None and not previous.done():
            # Only its end matters here; its outcome is handled by its own done callback.
            await asyncio.wait([previous])
        await job()

    def _done(self, key: Hashable, task: asyncio.Task[None]) -> None:
        self._room.release()
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            # Jobs handle their own errors; one that escapes is a bug, reported here, not lost.
            log.error("a keyed job failed", exc_info=task.exception())

    async def join(self) -> None:
        """Wait until every submitted job has finished."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def cancel(self) -> None:
        """Cancel every pending and running job (shutdown: unfinished events stay uncommitted)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
