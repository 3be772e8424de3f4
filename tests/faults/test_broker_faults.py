"""The broker stalled (SIGSTOP) and resumed under a steady stream of mixed events.

A broker of the test's own (the session's is shared with other tests), the session's Triton. The
embedded broker keeps its data in memory, so it is stalled, not killed: a killed one would come back
empty, which is a lost cluster, not a fault the service can recover from.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from faultkit import (
    Fault,
    assert_held,
    crashes,
    fault_settings,
    mixed_events,
    readiness,
    report,
    run_scenario,
    signal_group,
    wait_for,
)

from tooling.embedded import Broker, TritonServer
from tooling.embedded.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(1800)]

STALL_S = 30.0


def test_broker_stalled_then_resumed(
    triton: TritonServer,
    unique_suffix: str,
    new_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    with Broker(log_dir=tmp_path) as broker:
        settings = fault_settings(
            "f-bstall", unique_suffix, kafka_url=broker.url, triton_grpc_url=triton.grpc_url
        )
        worker = new_worker(settings)
        worker.start(timeout=600)
        notes: dict[str, object] = {}

        async def while_stalled() -> None:
            notes["not_ready_after_s"] = await asyncio.to_thread(
                wait_for, lambda: readiness(worker)[0] == 503, 120, "the worker says the broker is away"
            )
            notes["worker_live"] = worker.live()

        fault = Fault(
            inject=lambda: signal_group(broker.process.pid, signal.SIGSTOP),
            heal=lambda: signal_group(broker.process.pid, signal.SIGCONT),
            during_s=STALL_S,
            during=while_stalled,
        )
        figures, accounting = asyncio.run(
            run_scenario(
                "broker stalled, resumed", settings, lambda: [worker], fault, mixed_events(settings, 24)
            )
        )
        figures.notes.update(notes, ready_again=readiness(worker)[0] == 200)
        figures.worker_crashes = crashes([worker], alive=[worker])
        report(request, figures)
        assert_held(figures, accounting, [worker])
        worker.stop()
