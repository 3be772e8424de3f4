"""The embedded Prometheus helper against a real Triton: it scrapes Triton's metrics port, loads the
project's alert rules, and evaluates every dashboard and alert query without an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploytools import ALERTS_FILE, PROMETHEUS_DIR, all_queries, grafana_to_promql, infer_echo, run, tool

from tooling.embedded import TritonServer
from tooling.embedded.prometheus import PrometheusError, PrometheusServer, render_config

pytestmark = pytest.mark.integration
needs_prometheus = pytest.mark.skipif(
    tool("prometheus") is None, reason="prometheus (Debian package) is not installed"
)


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


def test_the_shipped_config_on_local_targets_keeps_its_jobs(tmp_path: Path) -> None:
    """What the live scrape test runs: deploy/prometheus/prometheus.yml with loopback targets."""
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    targets = {"ecom-worker": ["127.0.0.1:1"], "ecom-triton": ["127.0.0.1:2"]}
    text = render_config(targets, scrape_interval="1s", rule_files=[ALERTS_FILE], base_config=shipped)
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    assert set(jobs) == set(targets)
    for shipped_job in shipped["scrape_configs"]:
        name = shipped_job["job_name"]
        if name in jobs:
            assert jobs[name]["static_configs"] == [{"targets": targets[name]}]
            assert not [k for k in jobs[name] if k.endswith("_sd_configs")]
            assert jobs[name]["metrics_path"] == shipped_job["metrics_path"]
    with pytest.raises(ValueError, match="no scrape job 'worker'"):
        render_config({"worker": ["127.0.0.1:1"]}, scrape_interval="1s", base_config=shipped)
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = run([promtool, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
def test_prometheus_scrapes_triton_and_evaluates_every_query(
    echo_triton: TritonServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{echo_triton.metrics_port}"
    with PrometheusServer(
        {"ecom-triton": [target]}, rule_files=[ALERTS_FILE], log_dir=tmp_path
    ) as prometheus:
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

        rules = prometheus.wait_for_rules()
        alerts = [where for where, _ in all_queries() if where.startswith("alert:")]
        assert len(rules) == len(alerts) > 0
        assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]


@needs_prometheus
def test_a_bad_query_is_an_error(echo_triton: TritonServer, tmp_path: Path) -> None:
    target = f"127.0.0.1:{echo_triton.metrics_port}"
    with (
        PrometheusServer({"ecom-triton": [target]}, log_dir=tmp_path) as server,
        pytest.raises(PrometheusError, match="parse"),
    ):
        server.query("sum by (model (nv_inference_count)")
