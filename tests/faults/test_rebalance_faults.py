"""Workers joining, leaving gracefully and killed under a steady stream of mixed events.

Every rebalance runs Faust's table recovery on each worker. On the embedded broker, which reports a
partition's end as the first offset of its last batch + 1, a worker that had been reading the replicated
tables' changelogs found its tables "ahead" of that end and died of ConsistencyError on every rebalance;
streams.faust_ext's recovery reads the true end instead (the first test shows the broker's answer). The
figures count how often a worker settled a table that way (`tables_settled`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faultkit import Fault, assert_held, crashes, fault_settings, mixed_events, report, run_scenario
from faust.types import TP

from streams.faust_ext import changelog_last_offsets
from streams.settings import Settings
from tooling.embedded import Broker, TritonServer
from tooling.embedded.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(1800)]

SETTLED = "table ahead of its changelog's reported end"
DURING_S = 10.0  # the stream goes on this long after a worker joined, left or was killed


def test_the_broker_reports_less_than_its_end_and_recovery_reads_the_true_end(
    broker: Broker, unique_suffix: str
) -> None:
    topic = f"ends-{unique_suffix}"

    async def scenario() -> tuple[int, dict[TP, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200)
        await producer.start()
        try:
            for size in (3, 4):  # two batches: offsets 0..2 and 3..6
                sends = [await producer.send(topic, b"x") for _ in range(size)]
                await producer.flush()
                assert [(await s).offset for s in sends][-1] == (2 if size == 3 else 6)
        finally:
            await producer.stop()
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
        await consumer.start()
        try:
            listed = (await consumer.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
        finally:
            await consumer.stop()
        tp = TP(topic, 0)
        return listed, await changelog_last_offsets({"bootstrap_servers": broker.bootstrap}, {tp: listed - 1})

    listed, read = asyncio.run(scenario())
    print(f"\nembedded broker: ListOffsets says the end is {listed}; the last record is 6")
    assert read == {TP(topic, 0): 6}


def settled(workers: list[WorkerProcess]) -> int:
    count = 0
    for worker in workers:
        if worker.process is not None:
            count += worker.process.log_path.read_text(errors="replace").count(SETTLED)
    return count


def two_workers(
    name: str,
    broker: Broker,
    triton: TritonServer,
    suffix: str,
    new_worker: Callable[..., WorkerProcess],
    *,
    start_second: bool,
) -> tuple[Settings, WorkerProcess, WorkerProcess]:
    settings = fault_settings(name, suffix, kafka_url=broker.url, triton_grpc_url=triton.grpc_url)
    first, second = new_worker(settings, name="worker-1"), new_worker(settings, name="worker-2")
    first.start(timeout=600)
    if start_second:
        second.start(timeout=600)
    return settings, first, second


def test_a_worker_joins_mid_stream(
    broker: Broker,
    triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings, first, second = two_workers(
        "f-join", broker, triton, unique_suffix, new_worker, start_second=False
    )
    fault = Fault(inject=lambda: second.start(timeout=600), heal=lambda: None, during_s=DURING_S)
    figures, accounting = asyncio.run(
        run_scenario("worker joins", settings, lambda: [first, second], fault, mixed_events(settings, 31))
    )
    figures.worker_crashes = crashes([first, second], alive=[first, second])
    figures.notes["tables_settled"] = settled([first, second])
    report(request, figures)
    assert_held(figures, accounting, [first, second])


def test_a_worker_leaves_gracefully_mid_stream(
    broker: Broker,
    triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings, first, second = two_workers(
        "f-leave", broker, triton, unique_suffix, new_worker, start_second=True
    )
    fault = Fault(inject=second.stop, heal=lambda: None, during_s=DURING_S)  # SIGTERM: a graceful leave
    figures, accounting = asyncio.run(
        run_scenario("worker leaves", settings, lambda: [first], fault, mixed_events(settings, 32))
    )
    left_cleanly = (
        second.process is not None and second.process.proc is not None and second.process.proc.returncode == 0
    )
    figures.worker_crashes = crashes([first, second], alive=[first])
    figures.notes.update(tables_settled=settled([first, second]), left_with_exit_0=left_cleanly)
    report(request, figures)
    assert_held(figures, accounting, [first, second])
    assert left_cleanly, second.tail()


def test_a_worker_is_killed_mid_stream(
    broker: Broker,
    triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    request: pytest.FixtureRequest,
) -> None:
    settings, first, second = two_workers(
        "f-kill", broker, triton, unique_suffix, new_worker, start_second=True
    )
    fault = Fault(inject=second.kill, heal=lambda: None, during_s=DURING_S)  # SIGKILL: no commit, no goodbye
    figures, accounting = asyncio.run(
        run_scenario("worker killed", settings, lambda: [first], fault, mixed_events(settings, 33))
    )
    figures.worker_crashes = crashes([first, second], alive=[first])
    figures.notes["tables_settled"] = settled([first, second])
    report(request, figures)
    assert_held(figures, accounting, [first, second])
