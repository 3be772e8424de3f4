"""Failures: Triton down, a worker killed with SIGKILL mid-stream. Nothing is lost, nothing crashes.

At-least-once: after a kill, events processed since the last commit are processed again; their outputs
repeat with the same event_id. The tests count the repeats and report them; they fail on any event
without an output (or dead letter) and on any record that is not the answer to a produced event.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import Settings
from streams.topics import client_options, create_topics
from tooling.embedded import TritonServer, free_port
from tooling.embedded.worker import WorkerProcess, http_get
from tooling.promtext import metric_sum
from tooling.replay import Accounting, Collector, new_accounting, produce
from tooling.sample import SampleEvent, build_sample

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def received(accounting: Accounting) -> int:
    return sum(len(r) for r in accounting.received.values())


def report(request: pytest.FixtureRequest, name: str, values: dict[str, object]) -> None:
    """Shown in the test run's output (not captured) and kept in the JUnit XML properties."""
    request.node.user_properties.append((name, values))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        sys.stdout.write(f"\n{name}: {values}\n")
        sys.stdout.flush()


async def committed_offsets(settings: Settings, topic: str) -> dict[int, int | None]:
    """The consumer group's committed offsets (an offset fetch; it does not join the group)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=settings.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(settings.partitions)}
    finally:
        await consumer.stop()


class GateProxy:
    """A TCP proxy in front of Triton that refuses connections ("Triton down") until `open` is set."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.open = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._pipes: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.open.wait(0.1):
                continue
            with socket.create_server(("127.0.0.1", self.port)) as server:
                server.settimeout(0.1)
                while self.open.is_set() and not self._stop.is_set():
                    try:
                        client, _ = server.accept()
                    except TimeoutError:
                        continue
                    try:
                        upstream = socket.create_connection(self.target, timeout=5)
                    except OSError:
                        client.close()
                        continue
                    client.settimeout(None)
                    upstream.settimeout(None)
                    with self._lock:
                        self._sockets += [client, upstream]
                        for a, b in ((client, upstream), (upstream, client)):
                            pipe = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                            pipe.start()
                            self._pipes.append(pipe)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.open.clear()
        self._thread.join(timeout=5)
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            for pipe in self._pipes:
                pipe.join(timeout=5)
            for s in self._sockets:
                s.close()


def test_while_triton_is_down_events_wait_and_none_is_dropped_even_across_a_restart(
    triton: TritonServer,
    service_settings: Callable[..., Settings],
    new_worker: Callable[..., WorkerProcess],
) -> None:
    proxy = GateProxy(("127.0.0.1", triton.grpc_port))
    settings = service_settings("down", triton_grpc_url=f"127.0.0.1:{proxy.port}")
    asyncio.run(create_topics(settings))
    worker = new_worker(settings)
    events = build_sample(
        reviews=15, products=15, clicks=0, broken=False, seed=5, max_message_bytes=settings.max_message_bytes
    )
    try:
        # Triton unreachable from the start: the worker runs, is not ready, and enriches nothing.
        worker.start(wait_ready=False)

        async def outage_then_recovery() -> Accounting:
            collector = Collector(settings)
            await collector.start()
            try:
                accounting = new_accounting(events)
                await produce(settings, events)
                await collector.collect(accounting, wait_s=8, stop_when_complete=False)
                assert sum(len(r) for r in accounting.received.values()) == 0, "nothing while Triton is away"
                assert http_get(f"{worker.url}/readyz")[0] == 503
                assert worker.alive()
                text = worker.metrics()
                assert metric_sum(text, "ecom_inference_requests_total", outcome="retry") > 0
                assert metric_sum(text, "ecom_dependency_up", dependency="triton") == 0
                # A SIGTERM now stops the worker cleanly (no SIGKILL after the grace period); the
                # waiting events stay uncommitted, and the restarted worker processes them.
                worker.stop()
                assert worker.process is not None and worker.process.proc is not None
                assert worker.process.proc.returncode == 0, worker.tail()
                worker.start(wait_ready=False)
                proxy.open.set()
                return await collector.collect(accounting, wait_s=180, settle=2.0)
            finally:
                await collector.stop()

        accounting = asyncio.run(outage_then_recovery())
        assert accounting.missing == [], worker.tail()
        assert accounting.repeats == {} and accounting.misrouted() == []
        assert metric_sum(worker.metrics(), "ecom_dead_letters_total") == 0
        deadline = time.monotonic() + 10
        while http_get(f"{worker.url}/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert http_get(f"{worker.url}/readyz")[0] == 200
    finally:
        worker.stop()
        proxy.close()


def test_no_commit_passes_an_event_that_waits_for_triton(
    triton: TritonServer,
    service_settings: Callable[..., Settings],
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    """One good review waits for an unreachable Triton while the broken ones after it, on the same
    partition, are dead-lettered at once. Faust's own commit rule would commit past the waiting review
    (then a SIGKILL loses it); the service's must not."""
    proxy = GateProxy(("127.0.0.1", triton.grpc_port))
    settings = service_settings("hold", triton_grpc_url=f"127.0.0.1:{proxy.port}")
    asyncio.run(create_topics(settings))
    worker = new_worker(settings)
    good = {
        "event_id": "held-good",
        "review_id": "r",
        "product_id": "p",
        "user_id": "u",
        "text": "Lovely soft fabric, fits well.",
        "ts": 0,
    }
    events = [SampleEvent("reviews", b"p", orjson.dumps(good), "held-good", "output", fresh_ts=True)]
    events += [
        SampleEvent(
            "reviews", b"p", b'{"event_id": "held-bad-%d", ' % i, f"held-bad-{i}", "dlq", "MalformedJson"
        )
        for i in range(20)
    ]

    async def scenario() -> tuple[Accounting, dict[int, int | None]]:
        collector = Collector(settings)
        await collector.start()
        accounting = new_accounting(events)
        try:
            worker.start(wait_ready=False)
            await produce(settings, events)
            deadline = time.monotonic() + 60
            while received(accounting) < 20 and time.monotonic() < deadline:
                await collector.collect(accounting, wait_s=0.5, stop_when_complete=False)
            assert received(accounting) == 20 and not accounting.received.get("held-good")
            await asyncio.sleep(3 * settings.commit_interval_s + 1)  # commits had every chance
            committed = await committed_offsets(settings, settings.topic_prefix + "reviews")
            worker.kill()
            proxy.open.set()
            worker.start()
            await collector.collect(accounting, wait_s=120, settle=2.0)
            return accounting, committed
        finally:
            worker.stop()
            proxy.close()
            await collector.stop()

    accounting, committed = asyncio.run(scenario())
    report(
        request,
        "held event",
        {"committed_before_kill": committed, "repeats": sum(accounting.repeats.values())},
    )
    assert all(offset in (None, 0) for offset in committed.values()), committed
    assert accounting.missing == [], worker.tail()
    assert accounting.misrouted() == [] and accounting.unattributed == []


def test_sigkill_mid_stream_then_restart_loses_nothing(
    service_settings: Callable[..., Settings],
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings = service_settings("kill")
    asyncio.run(create_topics(settings))
    worker = new_worker(settings)
    events = build_sample(
        reviews=120,
        products=120,
        clicks=240,
        broken=True,
        seed=11,
        max_message_bytes=settings.max_message_bytes,
    )
    numbers: dict[str, object] = {}

    async def paced(batch: list[SampleEvent], chunk: int = 10, every: float = 0.1) -> None:
        # A steady stream (about 100 events/s), so that the kill lands in the middle of it.
        for i in range(0, len(batch), chunk):
            await produce(settings, batch[i : i + chunk])
            await asyncio.sleep(every)

    async def scenario() -> Accounting:
        collector = Collector(settings)
        await collector.start()
        accounting = new_accounting(events)
        try:
            worker.start()
            # The first events show that the worker has joined its group and enriches.
            await produce(settings, events[:20])
            deadline = time.monotonic() + 120
            while received(accounting) < 20 and time.monotonic() < deadline:
                await collector.collect(accounting, wait_s=0.2, stop_when_complete=False)
            producing = asyncio.ensure_future(paced(events[20:]))
            # Let part of the stream through (and a few commits happen), then kill the worker.
            started = time.monotonic()
            while time.monotonic() - started < 3 * settings.commit_interval_s:
                await collector.collect(accounting, wait_s=0.2, stop_when_complete=False)
            assert not producing.done(), "the kill must land mid-stream"
            numbers["outputs_before_kill"] = received(accounting)
            worker.kill()
            await asyncio.sleep(1.0)  # events keep arriving while no worker runs
            worker.start()
            await producing
            await collector.collect(accounting, wait_s=300, settle=5.0)
            return accounting
        finally:
            worker.stop()
            await collector.stop()

    accounting = asyncio.run(scenario())
    repeats = accounting.repeats
    numbers.update(
        events=len(accounting.produced),
        missing=len(accounting.missing),
        repeated_events=len(repeats),
        repeated_records=sum(repeats.values()),
    )
    report(request, "SIGKILL and restart", numbers)
    assert accounting.missing == [], worker.tail()
    assert accounting.misrouted() == []
    # Every record answers a produced event: what repeats carries the same event_id.
    assert accounting.unattributed == []
