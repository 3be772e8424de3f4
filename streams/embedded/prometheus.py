"""A real Prometheus server (Debian package `prometheus`) that scrapes given targets, for tests.

It runs on a free loopback port with a generated configuration and its data in a temporary folder,
and is stopped by its own PID like the other embedded servers. `query` evaluates PromQL through the
HTTP API, so dashboards and alert expressions can be checked against what was really scraped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.embedded.process import ManagedProcess, free_port


class PrometheusError(RuntimeError):
    """Prometheus answered a query or API call with an error."""


def prometheus_binary() -> Path:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise FileNotFoundError("prometheus is not installed (Debian package `prometheus`)")
    return Path(found)


def render_config(
    scrape_targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str,
    rule_files: Sequence[Path] = (),
    metrics_path: str = "/metrics",
) -> str:
    """A prometheus.yml scraping each job's `host:port` targets. JSON is valid YAML."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(targets)}],
            }
            for job, targets in scrape_targets.items()
        ],
    }
    return json.dumps(config, indent=2)


class PrometheusServer:
    """`prometheus` on a free loopback port scraping `scrape_targets` (job name -> `host:port` list)."""

    def __init__(
        self,
        scrape_targets: Mapping[str, Sequence[str]],
        *,
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ecom-prometheus-"))
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(
            render_config(scrape_targets, scrape_interval=scrape_interval, rule_files=rule_files)
        )
        log_dir = log_dir or self.workdir
        self.process = ManagedProcess(
            "prometheus",
            [
                str(prometheus_binary()),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log_path=log_dir / "prometheus.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except urllib.error.URLError:
            return False

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.process.start(self.ready, timeout)
        return self

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:  # noqa: S310
                body = json.load(resp)
        except urllib.error.HTTPError as e:  # 400/422 carry the parser's message in the body
            body = json.load(e)
        if body.get("status") != "success":
            raise PrometheusError(
                f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (or matrix/scalar as Prometheus returns it)."""
        data = self.api("query", {"query": expr})
        result: list[dict[str, Any]] = (
            data["result"] if data["resultType"] in ("vector", "matrix") else [data]
        )
        return result

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def wait_for_scrapes(self, jobs: Sequence[str], timeout: float = 30.0) -> None:
        """Until every target of `jobs` has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        while True:
            states = {t["labels"]["job"]: t["health"] for t in self.targets()}
            if all(states.get(job) == "up" for job in jobs):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not up after {timeout:.0f}s: {states}")
            time.sleep(0.5)

    def wait_until(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until the instant query `expr` returns at least one series; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr!r} returned nothing for {timeout:.0f}s")
            time.sleep(0.5)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
