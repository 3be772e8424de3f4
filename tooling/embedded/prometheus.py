"""A real Prometheus server (Debian package `prometheus`) that scrapes given targets, for tests.

It runs on a free loopback port with a generated configuration and its data in a temporary folder,
and is stopped by its own PID like the other embedded servers. `query` evaluates PromQL through the
HTTP API, so dashboards and alert expressions can be checked against what was really scraped.

The configuration is either generated from scratch or derived from a shipped one
(deploy/prometheus/prometheus.yml): its jobs, paths and relabelling are kept and only its service
discovery is replaced by the given loopback targets. `dashboard_queries` and `grafana_to_promql` read
the PromQL of a Grafana dashboard so the same server can evaluate it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tooling.embedded.process import ManagedProcess, free_port


class PrometheusError(RuntimeError):
    """Prometheus answered a query or API call with an error."""


def prometheus_binary() -> Path:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise FileNotFoundError("prometheus is not installed (Debian package `prometheus`)")
    return Path(found)


# Keys of a scrape job that say where its targets come from (replaced by static loopback targets).
_DISCOVERY = re.compile(r".*_sd_configs$|^static_configs$")


def render_config(
    scrape_targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str,
    rule_files: Sequence[Path] = (),
    metrics_path: str = "/metrics",
    base_config: Mapping[str, Any] | None = None,
) -> str:
    """A prometheus.yml scraping each job's `host:port` targets. JSON is valid YAML.

    With `base_config` (a parsed prometheus.yml), each job keeps everything the shipped file says
    (metrics path, relabelling, ...) except where its targets come from and its timing; every job of
    `scrape_targets` must exist there, and the shipped jobs without targets are left out.
    """
    jobs: list[dict[str, Any]] = []
    shipped = {job["job_name"]: job for job in (base_config or {}).get("scrape_configs", [])}
    for job, targets in scrape_targets.items():
        if base_config is not None and job not in shipped:
            raise ValueError(f"the base configuration has no scrape job {job!r} (it has {sorted(shipped)})")
        spec = {k: v for k, v in shipped.get(job, {}).items() if not _DISCOVERY.match(k)}
        spec.setdefault("metrics_path", metrics_path)
        spec.update(
            job_name=job,
            scrape_interval=scrape_interval,
            scrape_timeout=scrape_interval,
            static_configs=[{"targets": list(targets)}],
        )
        jobs.append(spec)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": jobs,
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
        base_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ecom-prometheus-"))
        self.config_path = self.workdir / "prometheus.yml"
        config = render_config(
            scrape_targets, scrape_interval=scrape_interval, rule_files=rule_files, base_config=base_config
        )
        self.config_path.write_text(config)
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
        # The generated config and the data go; the log stays when it was written elsewhere on request.
        if self.process.log_path.parent == self.workdir:
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

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

    def value(self, expr: str) -> float:
        """The value of an instant query that must return exactly one series (or a scalar)."""
        result = self.query(expr)
        if len(result) != 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health, last error and (alerts) state and active alerts."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def wait_for_rules(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The loaded rules once each has been evaluated at least once."""
        deadline = time.monotonic() + timeout
        while True:
            rules = self.rules()
            if rules and all(rule["health"] != "unknown" for rule in rules):
                return rules
            if time.monotonic() > deadline:
                raise PrometheusError(f"rules not evaluated after {timeout:.0f}s: {rules}")
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


# --- Grafana dashboards ---------------------------------------------------------------------------


def dashboard_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables) for every query, template variables included."""
    queries = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((panel.get("title", "?"), target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            m = re.match(r"label_values\((?:(.*),)?\s*([a-zA-Z_]+)\)\s*$", text)
            if m and m.group(1):
                queries.append((f"variable {variable['name']}", m.group(1)))
    return queries


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so Prometheus can evaluate it: interval
    variables become fixed windows, template variables (multi-value regexes) match everything."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
