"""Fixtures of the deployment-file tests: a throwaway Triton serving a trivial Python model, so the
names of Triton's own metrics can be read from a real server without loading the real model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deploytools import ECHO_CONFIG, ECHO_MODEL, infer_echo

from tooling.embedded import TritonServer


@pytest.fixture(scope="session")
def echo_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Triton serving `echo`, after a few real inferences, so its per-model metrics have values."""
    repository = tmp_path_factory.mktemp("echo-repository")
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    logs = tmp_path_factory.mktemp("echo-triton-logs")
    with TritonServer(Path(repository), ["echo"], log_dir=logs) as server:
        for value in (1.0, 2.0, 3.0):
            assert infer_echo(server, value) == 2 * value
        yield server
