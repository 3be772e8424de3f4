"""The micro-batcher: size and linger bounds, the in-flight bound, per-item results and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from streams.batcher import MicroBatcher


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.running = 0
        self.max_running = 0

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_full_batches_go_without_waiting_for_linger() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_size=4, linger=60.0, max_in_flight=1)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in (0, 2, 4, 6, 8, 10, 12, 14))), timeout=5
    )
    assert results == [0, 20, 40, 60, 80, 100, 120, 140]
    assert [len(b) for b in rec.batches] == [4, 4]
    await batcher.close()


async def test_linger_sends_a_partial_batch() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_size=32, linger=0.02, max_in_flight=1)
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(2), batcher.submit(4)), timeout=5) == [20, 40]
    assert rec.batches == [[2, 4]]
    await batcher.close()


async def test_one_items_error_reaches_only_its_caller() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_size=8, linger=0.01, max_in_flight=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 1"
    assert isinstance(results[3], ValueError)
    await batcher.close()


async def test_in_flight_bound_holds_and_batches_grow_meanwhile() -> None:
    rec = Recorder(delay=0.05)
    batcher = MicroBatcher(rec, max_size=16, linger=0.0, max_in_flight=2)
    await asyncio.gather(*(batcher.submit(2 * i) for i in range(40)))
    assert rec.max_running <= 2
    assert sum(len(b) for b in rec.batches) == 40
    # While both slots were busy the queue filled up: later batches are bigger than the first.
    assert max(len(b) for b in rec.batches) > 1
    await batcher.close()


async def test_handler_failure_fails_every_caller_of_that_batch() -> None:
    async def broken(items: Sequence[int]) -> list[int]:
        raise RuntimeError("boom")

    batcher = MicroBatcher(broken, max_size=4, linger=0.0, max_in_flight=1)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.close()


async def test_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return [1]

    batcher = MicroBatcher(short, max_size=4, linger=0.0, max_in_flight=1)
    results = await asyncio.wait_for(
        asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True), timeout=5
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.close()


async def test_cancelled_caller_is_left_out_of_the_request() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_size=8, linger=0.05, max_in_flight=1)
    gone = asyncio.ensure_future(batcher.submit(100))
    kept = asyncio.ensure_future(batcher.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == 40
    assert rec.batches == [[4]]
    await batcher.close()


async def test_closed_batcher_refuses_work() -> None:
    batcher = MicroBatcher(Recorder(), max_size=2, linger=0.0, max_in_flight=1)
    await batcher.close()
    with pytest.raises(RuntimeError):
        await batcher.submit(1)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_size=0, linger=0.0, max_in_flight=1)
