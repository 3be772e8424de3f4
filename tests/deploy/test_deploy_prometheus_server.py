"""The embedded Prometheus helper against a real Triton: it scrapes Triton's metrics port, loads the
project's alert rules, and evaluates every dashboard and alert query without an error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from deploytools import ALERTS_FILE, all_queries, grafana_to_promql, infer_echo, run, tool

from streams.embedded import TritonServer
from streams.embedded.prometheus import PrometheusError, PrometheusServer, render_config

pytestmark = pytest.mark.integration
needs_prometheus = pytest.mark.skipif(
    tool("prometheus") is None, reason="prometheus (Debian package) is not installed"
)


def evaluated_rules(prometheus: PrometheusServer, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The loaded rules once each has been evaluated at least once."""
    deadline = time.monotonic() + timeout
    while True:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return rules
        if time.monotonic() > deadline:
            raise PrometheusError(f"rules not evaluated after {timeout:.0f}s: {rules}")
        time.sleep(0.5)


def test_render_config_is_a_valid_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    path = tmp_path / "prometheus.yml"
    path.write_text(
        render_config({"ecom-triton": ["127.0.0.1:8002"]}, scrape_interval="1s", rule_files=[ALERTS_FILE])
    )
    result = run([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
def test_prometheus_scrapes_triton_and_evaluates_every_query(echo_triton: TritonServer) -> None:
    target = f"127.0.0.1:{echo_triton.metrics_port}"
    with PrometheusServer({"ecom-triton": [target]}, rule_files=[ALERTS_FILE]) as prometheus:
        prometheus.wait_for_scrapes(["ecom-triton"])
        before = prometheus.query('nv_inference_count{job="ecom-triton", model="echo"}')
        assert len(before) == 1
        count = float(before[0]["value"][1])
        assert count >= 3  # the fixture's inferences

        for value in (4.0, 5.0):
            infer_echo(echo_triton, value)
        # Later scrapes see them: wait on the data, not on the clock.
        prometheus.wait_until(f'nv_inference_count{{model="echo"}} >= {count + 2}')
        assert [float(s["value"][1]) for s in prometheus.query('up{job="ecom-triton"}')] == [1.0]

        failures = []
        for where, query in all_queries():
            try:
                prometheus.query(grafana_to_promql(query))
            except PrometheusError as e:
                failures.append(f"{where}: {e}")
        assert not failures, "\n".join(failures)

        rules = evaluated_rules(prometheus)
        alerts = [where for where, _ in all_queries() if where.startswith("alert:")]
        assert len(rules) == len(alerts) > 0
        assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]


@needs_prometheus
def test_a_bad_query_is_an_error(echo_triton: TritonServer) -> None:
    target = f"127.0.0.1:{echo_triton.metrics_port}"
    with PrometheusServer({"ecom-triton": [target]}) as server, pytest.raises(PrometheusError, match="parse"):
        server.query("sum by (model (nv_inference_count)")
