"""Fixtures shared by every test tier.

`broker` and `triton` start the real servers of the embedded default once per test session and stop
them (by PID) at the end. Tests that use them are marked `integration`; each test creates its own
topics with unique names so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tooling.embedded import Broker, TritonServer

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def broker(server_logs: Path) -> Iterator[Broker]:
    with Broker(log_dir=server_logs) as running:
        yield running


@pytest.fixture(scope="session")
def triton(server_logs: Path) -> Iterator[TritonServer]:
    with TritonServer(REPO_ROOT / "triton_models", ["ecom_fusion"], log_dir=server_logs) as running:
        yield running


@pytest.fixture
def unique_suffix() -> str:
    """A suffix for topic and group names that no other test uses."""
    return uuid.uuid4().hex[:10]
