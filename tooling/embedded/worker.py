"""A `python -m streams worker` child process, as production runs it: started, probed, stopped by PID.

Used by the demo, the evaluators, the benchmark and the integration tests. Its `Settings` go in as
`ECOM_*` environment variables (`Settings.to_env`), so the child reads them exactly as a deployed worker
does.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.settings import Settings
from tooling.embedded.process import ManagedProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# A lone worker joins its group only after the rebalance timeout, and health is probed every few seconds;
# these keep a test's or an evaluation's start-up short: `settings.model_copy(update=QUICK_GROUP)`.
QUICK_GROUP: dict[str, Any] = {
    "health_interval_s": 1.0,
    "broker_rebalance_timeout_s": 2.0,
    "broker_session_timeout_s": 6.0,
}


def http_get(url: str, timeout: float = 2.0, *, token: str | None = None) -> tuple[int, str]:
    """GET `url`; `token` is sent as `Authorization: Bearer` (the worker's state pages need it)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310  (our own loopback URL)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310  (our own loopback URL)
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class WorkerProcess:
    """One worker with these settings. Unless they set the web port and host explicitly, it serves on a
    free port of the loopback interface, so that workers side by side never collide. Unless they turn
    them off explicitly, its state pages are on, with a token of its own (`state()` sends it). `env` adds
    other variables (e.g. Faust's `APP_DATADIR`); they override the settings'."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_dir: Path,
        name: str = "worker",
        env: Mapping[str, str] | None = None,
    ) -> None:
        explicit = settings.model_fields_set
        web = {
            "ECOM_WEB_PORT": str(settings.web_port if "web_port" in explicit else free_port()),
            "ECOM_WEB_HOST": settings.web_host if "web_host" in explicit else "127.0.0.1",
        }
        pages = {}
        if "state_pages_enabled" not in explicit:
            pages = {"ECOM_STATE_PAGES_ENABLED": "true", "ECOM_STATE_PAGES_TOKEN": secrets.token_urlsafe(24)}
        self.env = {**os.environ, **settings.to_env(), **web, **pages, **(env or {})}
        self.web_port = int(self.env["ECOM_WEB_PORT"])
        self.state_token = self.env.get("ECOM_STATE_PAGES_TOKEN")
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

    def state(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """GET one of its state pages (`/recommend/...`), with its token."""
        return http_get(f"{self.url}{path}", timeout, token=self.state_token)

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
