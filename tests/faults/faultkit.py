"""The fault suite's harness: a steady stream of mixed events through real workers, a fault in the middle
of it, and the count of what came out.

A scenario (`run_scenario`):

1. the stream starts: reviews, product listings and clicks interleaved, with the sample's broken events
   spread through it, at `rate` events per second from one long-lived producer;
2. after `warmup_s` (outputs must be coming out by then) the fault is injected, and lasts `during_s`;
3. the fault is healed (a restart, a SIGCONT, a worker that has joined, ...) and the stream stops;
4. the outputs and dead letters are read until every event sent is accounted for and every worker's
   `ecom_consumer_lag` (its /metrics) is 0 on every input partition of the group.

`Figures` holds what the scenario reports: events lost (no output, no dead letter), good events
dead-lettered, events answered more than once, and the seconds from the heal until every event was
answered and until the lag was back to 0. They are printed in the test's output; the tests assert only
what must hold whatever the machine's speed (nothing lost, nothing wrongly dead-lettered, the lag back to
0 in the end, no worker dead by itself), never a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings
from streams.topics import TopicNames, client_options, create_topics
from tooling.embedded import TritonServer
from tooling.embedded.worker import QUICK_GROUP, WorkerProcess, http_get
from tooling.promtext import metric_sum, samples
from tooling.replay import Accounting, Collector, new_accounting
from tooling.sample import SampleEvent, build_sample, physical_topic

REPO_ROOT = Path(__file__).resolve().parents[2]
RATE = 10.0  # events per second, all inputs together
WARMUP_S = 10.0
CATCH_UP_S = 900.0  # the longest a scenario waits for its outputs and a zero lag after the heal
# What a worker writes when it dies of a table recovery it could not settle (faust.exceptions).
CRASH_MARKERS = ("ConsistencyError", "We experienced a crash")


def fault_settings(
    name: str, suffix: str, *, kafka_url: str, triton_grpc_url: str, **overrides: Any
) -> Settings:
    """A scenario's settings: its own topics and consumer group, on the given broker and Triton, with a
    worker that joins its group and reports its health quickly (as tests/conftest.py's
    `service_settings`, whose servers are the session's)."""
    run = f"{name}-{suffix}"
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka_url,
        "triton_grpc_url": triton_grpc_url,
        "topic_prefix": f"{run}-",
        "app_id": run,
        "max_message_bytes": 200_000,
        **QUICK_GROUP,
        **overrides,
    }
    settings = Settings(**values)
    asyncio.run(create_topics(settings))
    return settings


def mixed_events(settings: Settings, seed: int, per_kind: int = 800) -> list[SampleEvent]:
    """More events than a scenario sends: reviews, listings and clicks interleaved, broken ones spread
    through them (each with the reason its dead letter must give)."""
    return build_sample(
        reviews=per_kind,
        products=per_kind,
        clicks=per_kind,
        broken=True,
        seed=seed,
        max_message_bytes=settings.max_message_bytes,
    )


# --- the stream ------------------------------------------------------------------------------------------
class SteadyStream:
    """Sends `events` in order at `rate` per second from one producer until `stop()`; what was sent and
    acknowledged is `sent`, what the broker refused is `refused` (never counted as lost)."""

    def __init__(self, settings: Settings, events: Sequence[SampleEvent], rate: float) -> None:
        self.settings = settings
        self.events = list(events)
        self.rate = rate
        self.sent: list[SampleEvent] = []
        self.refused: list[tuple[SampleEvent, str]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        names = TopicNames.from_settings(self.settings)
        producer = AIOKafkaProducer(
            **client_options(self.settings), acks="all", linger_ms=5, max_request_size=2_000_000
        )
        await producer.start()
        pending: list[tuple[SampleEvent, asyncio.Future[Any]]] = []
        started = time.monotonic()
        try:
            for i, event in enumerate(self.events):
                if self._stop.is_set():
                    break
                ahead = started + i / self.rate - time.monotonic()
                if ahead > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), ahead)
                    if self._stop.is_set():
                        break
                fut = await producer.send(physical_topic(names, event.topic), event.render(), key=event.key)
                pending.append((event, fut))
            results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
            for (event, _), result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    self.refused.append((event, f"{type(result).__name__}: {result}"))
                else:
                    self.sent.append(event)
        finally:
            await producer.stop()


# --- the workers' lag ------------------------------------------------------------------------------------
def group_lag(workers: Sequence[WorkerProcess], partitions: int) -> float | None:
    """The lag of the whole group from its workers' /metrics: the sum of `ecom_consumer_lag` when the
    running workers report every input partition between them, else None (a rebalance under way, a
    worker not answering)."""
    total, reported = 0.0, 0
    for worker in workers:
        if not worker.alive():
            continue
        try:
            text = worker.metrics()
        except OSError:
            return None
        series = [s for s in samples(text) if s.name == "ecom_consumer_lag"]
        reported += len(series)
        total += sum(s.value for s in series)
    return total if reported == partitions else None


# --- a scenario ------------------------------------------------------------------------------------------
@dataclass
class Figures:
    scenario: str
    events: int = 0  # sent and acknowledged by the broker
    broken: int = 0  # of which meant for a dead-letter topic
    refused: int = 0  # not acknowledged by the broker (the stream's own failures), not expected back
    lost: int = 0  # no output and no dead letter
    wrongly_dead_lettered: int = 0  # good events in a dead-letter topic
    repeated: int = 0  # events answered more than once
    repeated_records: int = 0
    answered_after_heal_s: float | None = None  # from the heal until every event was answered
    lag_zero_after_heal_s: float | None = None  # from the heal until the group's lag was 0
    fault_s: float = 0.0  # from the injection to the heal
    worker_crashes: int = 0  # workers that died by themselves (log lines of CRASH_MARKERS)
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {})}, default=str)


@dataclass
class Fault:
    """What a scenario does to the system: `inject` at the end of the warm-up, `heal` after `during_s`.
    Both run in a thread (they may block on a process); `heal` returns when the system may recover."""

    inject: Callable[[], None]
    heal: Callable[[], None]
    during_s: float
    during: Callable[[], Awaitable[None]] | None = None  # checks while the fault lasts


def report(request: pytest.FixtureRequest, figures: Figures) -> None:
    """In the test run's output (not captured) and in the JUnit XML properties."""
    request.node.user_properties.append(("fault figures", figures.line()))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        sys.stdout.write(f"\nFAULT FIGURES {figures.line()}\n")
        sys.stdout.flush()


def crashes(workers: Sequence[WorkerProcess], alive: Sequence[WorkerProcess]) -> int:
    """Workers that died by themselves: their log says so (CRASH_MARKERS), or one of `alive` (those
    nobody stopped) is not running."""
    crashed = {w.name for w in alive if not w.alive()}
    for worker in workers:
        if worker.process is None:
            continue
        try:
            text = worker.process.log_path.read_text(errors="replace")
        except OSError:
            continue
        if any(marker in text for marker in CRASH_MARKERS):
            crashed.add(worker.name)
    return len(crashed)


async def run_scenario(
    name: str,
    settings: Settings,
    workers: Callable[[], Sequence[WorkerProcess]],
    fault: Fault,
    events: Sequence[SampleEvent],
    *,
    rate: float = RATE,
    warmup_s: float = WARMUP_S,
) -> tuple[Figures, Accounting]:
    """The stream, the fault, the catch-up (this module's docstring). `workers()` names the workers
    expected to run at the time it is called (the group's lag is read from them)."""
    figures = Figures(name)
    partitions = len(TopicNames.from_settings(settings).inputs) * settings.partitions
    accounting = new_accounting(events)
    collector = Collector(settings)
    await collector.start()
    stream = SteadyStream(settings, events, rate)
    try:
        stream.start()
        started = time.monotonic()
        while time.monotonic() - started < warmup_s:
            await collector.collect(accounting, wait_s=0.5, stop_when_complete=False)
        assert sum(len(r) for r in accounting.received.values()) > 0, "nothing came out before the fault"
        injected = time.monotonic()
        await asyncio.to_thread(fault.inject)
        if fault.during is not None:
            await fault.during()
        while time.monotonic() - injected < fault.during_s:
            await collector.collect(accounting, wait_s=0.5, stop_when_complete=False)
        await asyncio.to_thread(fault.heal)
        healed = time.monotonic()
        figures.fault_s = round(healed - injected, 1)
        await stream.stop()
        sent = {e.event_id for e in stream.sent}
        accounting.forget([(e, "not sent") for e in events if e.event_id not in sent])
        figures.events, figures.refused = len(stream.sent), len(stream.refused)
        figures.broken = sum(1 for e in stream.sent if e.expect == "dlq")
        deadline = healed + CATCH_UP_S
        while time.monotonic() < deadline:
            await collector.collect(accounting, wait_s=1.0, stop_when_complete=False)
            now = time.monotonic()
            if figures.answered_after_heal_s is None and not accounting.missing:
                figures.answered_after_heal_s = round(now - healed, 1)
            lag = await asyncio.to_thread(group_lag, workers(), partitions)
            if figures.answered_after_heal_s is not None and lag == 0:
                figures.lag_zero_after_heal_s = round(time.monotonic() - healed, 1)
                break
        await collector.collect(accounting, wait_s=3.0, stop_when_complete=False)  # late repeats
    finally:
        await stream.stop()
        await collector.stop()
    figures.lost = len(accounting.missing)
    figures.wrongly_dead_lettered = sum(
        1
        for event_id, records in accounting.received.items()
        if accounting.expected[event_id].expect == "output" and any(r.is_dead_letter for r in records)
    )
    repeats = accounting.repeats
    figures.repeated, figures.repeated_records = len(repeats), sum(repeats.values())
    return figures, accounting


def assert_held(figures: Figures, accounting: Accounting, workers: Sequence[WorkerProcess]) -> None:
    """What must hold after every fault, whatever the machine's speed."""
    tails = "\n".join(f"--- {w.name}\n{w.tail(30)}" for w in workers)
    assert figures.worker_crashes == 0, f"a worker died by itself\n{tails}"
    assert figures.lost == 0, f"{figures.lost} events lost: {accounting.missing[:10]}\n{tails}"
    assert figures.wrongly_dead_lettered == 0, accounting.misrouted()[:10]
    assert accounting.misrouted() == [], accounting.misrouted()[:10]  # broken ones: the right reason
    assert accounting.unattributed == [], accounting.unattributed[:5]
    assert figures.lag_zero_after_heal_s is not None, f"the group's lag never came back to 0\n{tails}"


# --- processes -------------------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """The child processes of `pid`, from /proc (every thread's list)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stub_pids(triton: TritonServer) -> list[int]:
    """The Python-backend stub processes of this Triton server (its children running the stub)."""
    return [
        pid
        for pid in children(triton.process.pid)
        if command_line(pid) and command_line(pid)[0].endswith("triton_python_backend_stub")
    ]


def kill_pid(pid: int) -> None:
    """SIGKILL to one process under a server this test started (found by `stub_pids`)."""
    os.kill(pid, signal.SIGKILL)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """A signal to the process group of a server this test started (its group id is its pid)."""
    os.killpg(pid, sig)


def wait_for(condition: Callable[[], bool], wait_s: float, what: str) -> float:
    """Seconds until `condition()` held; raises after `wait_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > wait_s:
            raise AssertionError(f"not within {wait_s:.0f}s: {what}")
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def readiness(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"{worker.url}/readyz")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def worker_metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    return metric_sum(worker.metrics(), name, **labels)
