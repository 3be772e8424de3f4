"""A worker started with `worker_env(settings)` reads back the same settings (as a deployed worker)."""

from __future__ import annotations

import pytest

from streams.settings import Settings
from tooling.embedded.worker import QUICK_GROUP, worker_env


def test_worker_env_round_trips_through_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    given = Settings(
        kafka_bootstrap="kafka://127.0.0.1:19092",
        triton_grpc_url="127.0.0.1:18001",
        topic_prefix="t-",
        app_id="app-x",
        max_message_bytes=123_456,
    )
    env = worker_env(given, **QUICK_GROUP, embedding_sync_interval_s="0.5")
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    read = Settings()

    for field in ("kafka_bootstrap", "triton_grpc_url", "topic_prefix", "app_id", "max_message_bytes"):
        assert getattr(read, field) == getattr(given, field)
    assert read.health_interval_s == 1.0
    assert read.broker_rebalance_timeout_s == 2.0
    assert read.embedding_sync_interval_s == 0.5
