"""A worker started by `WorkerProcess(settings)` reads back the same settings (as a deployed worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings
from tooling.embedded.worker import QUICK_GROUP, WorkerProcess


def test_worker_env_round_trips_through_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    given = Settings(
        kafka_bootstrap="kafka://127.0.0.1:19092",
        triton_grpc_url="127.0.0.1:18001",
        topic_prefix="t-",
        app_id="app-x",
        max_message_bytes=123_456,
        embedding_sync_interval_s=0.5,
        **QUICK_GROUP,
    )
    env = WorkerProcess(given, log_dir=tmp_path, env={"APP_DATADIR": "/tmp/x"}).env
    assert env["APP_DATADIR"] == "/tmp/x"
    for name, value in env.items():
        if name.startswith("ECOM_"):
            monkeypatch.setenv(name, value)

    read = Settings()

    for field in ("kafka_bootstrap", "triton_grpc_url", "topic_prefix", "app_id", "max_message_bytes"):
        assert getattr(read, field) == getattr(given, field)
    assert read.health_interval_s == 1.0
    assert read.broker_rebalance_timeout_s == 2.0
    assert read.embedding_sync_interval_s == 0.5


def test_the_web_port_is_a_free_loopback_one_unless_set(tmp_path: Path) -> None:
    default = WorkerProcess(Settings(), log_dir=tmp_path)
    assert default.env["ECOM_WEB_HOST"] == "127.0.0.1"
    assert default.web_port != 6066 and default.env["ECOM_WEB_PORT"] == str(default.web_port)
    chosen = WorkerProcess(Settings(web_port=16066), log_dir=tmp_path)
    assert chosen.web_port == 16066 and chosen.url == "http://127.0.0.1:16066"
