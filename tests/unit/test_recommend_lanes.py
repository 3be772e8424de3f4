"""KeyedOrder: one key's jobs in order, different keys at once, a bounded number pending."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

import pytest

from streams.recommend.lanes import KeyedOrder


async def test_jobs_of_one_key_run_in_submission_order_even_when_the_first_is_slow() -> None:
    order = KeyedOrder(limit=8)
    done: list[str] = []

    def job(name: str, delay: float) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await asyncio.sleep(delay)
            done.append(name)

        return run

    await order.submit(b"u1", job("u1-first", 0.05))
    await order.submit(b"u1", job("u1-second", 0.0))
    await order.submit(b"u2", job("u2-only", 0.0))
    await order.join()
    # u2 did not wait for u1; u1's second click waited for its first.
    assert done == ["u2-only", "u1-first", "u1-second"]
    assert len(order) == 0


async def test_different_keys_run_at_the_same_time() -> None:
    order = KeyedOrder(limit=8)
    running = 0
    most = 0
    gate = asyncio.Event()

    async def job() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1

    for user in range(5):
        await order.submit(f"user-{user}", job)
    await asyncio.sleep(0.01)
    assert most == 5
    gate.set()
    await order.join()


async def test_submit_waits_while_limit_jobs_are_pending() -> None:
    order = KeyedOrder(limit=2)
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()

    await order.submit("a", job)
    await order.submit("a", job)  # pending behind the first: it counts too
    third = asyncio.ensure_future(order.submit("b", job))
    await asyncio.sleep(0.01)
    assert not third.done(), "no room for a third job"
    gate.set()
    await asyncio.wait_for(third, 1)
    await order.join()


async def test_a_failing_job_is_reported_and_does_not_block_its_key(caplog: pytest.LogCaptureFixture) -> None:
    order = KeyedOrder(limit=4)
    done: list[int] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def fine() -> None:
        done.append(1)

    with caplog.at_level(logging.ERROR):
        await order.submit("k", boom)
        await order.submit("k", fine)
        await order.join()
    assert done == [1]
    assert "a keyed job failed" in caplog.text and "bug" in caplog.text


async def test_cancel_stops_running_and_pending_jobs() -> None:
    order = KeyedOrder(limit=4)
    started: list[str] = []

    async def forever() -> None:
        started.append("x")
        await asyncio.sleep(3600)

    await order.submit("k", forever)
    await order.submit("k", forever)  # never starts: its predecessor never finishes
    await asyncio.sleep(0.01)
    await asyncio.wait_for(order.cancel(), 1)
    assert started == ["x"] and len(order) == 0


async def test_a_job_sees_the_context_of_its_submitter() -> None:
    # How Faust's current event (which a table write needs) reaches a job running in its own task.
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current")
    order = KeyedOrder(limit=4)
    seen: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0)
        seen.append(current.get())

    for name in ("e1", "e2"):
        current.set(name)
        await order.submit("k", job)
    await order.join()
    assert seen == ["e1", "e2"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        KeyedOrder(0)
