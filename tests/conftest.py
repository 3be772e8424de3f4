"""Fixtures shared by every test tier.

`broker` and `triton` start the real servers of the embedded default once per test session
(`tooling.embedded.embedded_stack`) and stop them by PID at the end, also when the run gets SIGTERM.
Tests that use them are marked `integration`. Each test gets its own topics and consumer group from
`service_settings`, so tests never see each other's data, and its worker processes from `new_worker`,
which stops them when the test ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.settings import Settings
from tooling.embedded import Broker, TritonServer, embedded_stack
from tooling.embedded.worker import QUICK_GROUP, WorkerProcess

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Fixtures that start real servers or worker processes: a test that uses one is an integration test, so
# that `-m "not integration"` leaves out everything that starts a server.
SERVER_FIXTURES = {"broker", "triton", "echo_triton", "service_settings", "new_worker"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError("start servers but are not marked integration: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def broker(server_logs: Path) -> Iterator[Broker]:
    with embedded_stack(server_logs, triton=False) as servers:
        yield servers.broker


@pytest.fixture(scope="session")
def triton(server_logs: Path) -> Iterator[TritonServer]:
    with embedded_stack(server_logs, broker=False, model_repository=REPO_ROOT / "triton_models") as servers:
        yield servers.triton


@pytest.fixture
def unique_suffix() -> str:
    """A suffix for topic and group names that no other test uses."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def service_settings(broker: Broker, triton: TritonServer, unique_suffix: str) -> Callable[..., Settings]:
    """`service_settings(name, **overrides)`: the service's settings for one test on the session's broker
    and Triton: topics prefixed and a consumer group named `<name>-<unique suffix>`, a 200 kB message
    limit, and a worker that joins its group and reports its health quickly (QUICK_GROUP)."""

    def make(name: str, **overrides: Any) -> Settings:
        run = f"{name}-{unique_suffix}"
        values: dict[str, Any] = {
            "kafka_bootstrap": broker.url,
            "triton_grpc_url": triton.grpc_url,
            "topic_prefix": f"{run}-",
            "app_id": run,
            "max_message_bytes": 200_000,
            **QUICK_GROUP,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def new_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`new_worker(settings, name="worker")`: a worker process with these settings, not started yet (a
    test starts it when its scenario needs it); every one is stopped when the test ends."""
    made: list[WorkerProcess] = []

    def make(settings: Settings, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(settings, log_dir=tmp_path, name=name)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()
