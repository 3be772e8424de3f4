"""The worker's stop signal, and the one retry loop that every wait for a dependency goes through.

`Retry.call` retries an operation with capped exponential backoff and jitter, sleeping through
`Lifecycle.sleep`: once the worker is stopping that sleep raises `ShuttingDown` instead of waiting for a
dependency that may not come back, so a SIGTERM ends every retry promptly and the events still waiting
stay uncommitted for the next owner of their partitions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streams.errors import EnrichmentError, ShuttingDown

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


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


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.2
    maximum: float = 10.0
    max_ambiguous: int = 3

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter (attempt 0 is the first retry)."""
        ceiling = min(self.maximum, self.initial * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311  (jitter, not cryptography)


def retriable(exc: BaseException, attempt: int) -> bool:
    """The default rule: the service's errors say whether trying again can succeed."""
    return isinstance(exc, EnrichmentError) and exc.retriable


class Retry:
    """The retry loop of the service: backoff from a `RetryPolicy`, sleeps that the stop signal ends."""

    def __init__(self, policy: RetryPolicy | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.policy = policy or RetryPolicy()
        self.sleep = sleep

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        what: str,
        should_retry: Callable[[BaseException, int], bool] = retriable,
        give_up_after_s: float | None = None,
    ) -> T:
        """`await operation()` until it succeeds; an error that `should_retry(error, attempt)` refuses,
        or any error once `give_up_after_s` has passed, is raised. `ShuttingDown` and cancellation are
        never retried."""
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        attempt = 0
        while True:
            try:
                return await operation()
            except (asyncio.CancelledError, ShuttingDown):
                raise
            except Exception as exc:
                if not should_retry(exc, attempt) or (deadline is not None and time.monotonic() > deadline):
                    raise
                delay = self.policy.backoff(attempt)
                reason = exc.reason if isinstance(exc, EnrichmentError) else type(exc).__name__
                log.warning("%s failed (%s: %s); retry %d in %.2fs", what, reason, exc, attempt + 1, delay)
                await self.sleep(delay)
                attempt += 1
