"""A `python -m streams worker` child process, as production runs it: started, probed, stopped by PID.

Used by the demo and the integration tests. Settings go in as `ECOM_*` environment variables, so the
child reads them exactly as a deployed worker does.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from streams.settings import Settings
from tooling.embedded.process import ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# For tests: a lone worker joins its group only after the rebalance timeout, and health is probed every
# few seconds; short values keep the tests short.
QUICK_GROUP = {"health_interval_s": "1", "broker_rebalance_timeout_s": "2", "broker_session_timeout_s": "6"}


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The `ECOM_*` variables that point a worker at these settings' broker, Triton, topics and limits.

    `extra` adds settings by field name: `worker_env(settings, health_interval_s="1")`.
    """
    env = {
        "ECOM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ECOM_TRITON_GRPC_URL": settings.triton_grpc_url,
        "ECOM_TOPIC_PREFIX": settings.topic_prefix,
        "ECOM_APP_ID": settings.app_id,
        "ECOM_MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
    }
    env.update({f"ECOM_{name.upper()}": value for name, value in extra.items()})
    return env


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310  (our own loopback URL)
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class WorkerProcess:
    """One worker; `env` holds its `ECOM_*` settings (the web port is picked here unless given)."""

    def __init__(self, env: Mapping[str, str], *, log_dir: Path, name: str = "worker") -> None:
        self.env = {**os.environ, **env}
        self.env.setdefault("ECOM_WEB_PORT", str(free_port()))
        self.env.setdefault("ECOM_WEB_HOST", "127.0.0.1")
        self.web_port = int(self.env["ECOM_WEB_PORT"])
        self.name = name
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def ready(self) -> bool:
        return http_get(f"{self.url}/readyz")[0] == 200

    def consuming(self) -> bool:
        """Ready and owning input partitions (it has joined its consumer group)."""
        status, body = http_get(f"{self.url}/readyz")
        return status == 200 and int(json.loads(body).get("assigned_partitions", 0)) > 0

    def metrics(self) -> str:
        return http_get(f"{self.url}/metrics", timeout=5)[1]

    def live(self) -> bool:
        return http_get(f"{self.url}/livez")[0] == 200

    def start(self, timeout: float = 180.0, *, wait_ready: bool = True) -> WorkerProcess:
        """Start (or restart) the worker and wait until the broker and Triton are up and it owns
        partitions (or, with `wait_ready=False`, only until it serves /livez)."""
        self.starts += 1
        self.process = ManagedProcess(
            self.name,
            [sys.executable, "-m", "streams", "worker"],
            log_path=self.log_dir / f"{self.name}.log",
            env=self.env,
            cwd=REPO_ROOT,
        )
        self.process.start(self.consuming if wait_ready else self.live, timeout)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """SIGTERM (a graceful Faust shutdown), SIGKILL if it hangs."""
        if self.process is not None:
            self.process.stop(grace=30.0)

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or leave the group."""
        if self.process is not None:
            self.process.kill()

    def tail(self, lines: int = 60) -> str:
        return self.process.tail(lines) if self.process is not None else "(not started)"

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
