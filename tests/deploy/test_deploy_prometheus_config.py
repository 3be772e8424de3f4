"""deploy/prometheus: promtool accepts the config and the alert rules (compose file and the k8s
PrometheusRule alike), the alert unit tests pass, and the scrape jobs point at the contract ports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploytools import ALERTS_FILE, COMPOSE_FILE, DEPLOY_TESTS, K8S, PROMETHEUS_DIR, load_compose, run, tool

PROMTOOL = tool("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed"
)


@needs_promtool
def test_promtool_accepts_the_config() -> None:
    result = run([str(PROMTOOL), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = run([str(PROMTOOL), "check", "rules", str(ALERTS_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_kubernetes_prometheus_rule(tmp_path: Path) -> None:
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    extracted = tmp_path / "prometheusrule-spec.yml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    result = run([str(PROMTOOL), "check", "rules", str(extracted)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    """tests/deploy/alerts_test.yml: each alert fires on series that should trigger it, and not before."""
    result = run([str(PROMTOOL), "test", "rules", "alerts_test.yml"], cwd=DEPLOY_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check is not vacuous: a PromQL syntax error fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum by (topic ("}]}]})
    )
    assert run([str(PROMTOOL), "check", "rules", str(broken)]).returncode != 0


def test_every_alert_has_a_test_case() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY_TESTS / "alerts_test.yml").read_text())["tests"]
    tested = {
        case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_every_alert_has_severity_and_summary() -> None:
    for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_scrape_jobs_point_at_the_compose_services_on_contract_ports() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = load_compose(COMPOSE_FILE)["services"]
    worker = jobs["ecom-worker"]["dns_sd_configs"][0]
    assert worker["names"] == ["worker"] and worker["port"] == 6066 and "worker" in services
    assert jobs["ecom-triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert "--metrics-port=8002" in services["triton"]["command"]
    assert [str(PROMETHEUS_DIR / f) for f in config["rule_files"]] == [str(ALERTS_FILE)]
