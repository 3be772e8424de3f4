"""deploy/grafana: the dashboard JSON loads, covers what operators need, every query parses as PromQL,
and every metric and label it (and the alert rules) names is one the worker really registers or the
contract lists for Triton. The live check of Triton's names is in test_deploy_triton_metrics.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from deploytools import (
    CLIENT_LIBRARY_METRICS,
    COMPOSE_FILE,
    PROMETHEUS_SYNTHETIC,
    REPO_ROOT,
    TARGET_LABELS,
    all_queries,
    dashboard_panels,
    dashboard_queries,
    expand_sample_names,
    grafana_to_promql,
    load_compose,
    load_dashboard,
    promql_grouping_labels,
    promql_metric_names,
    promql_selector_labels,
    read_contracts,
    run,
    sample_base,
    tool,
)

GRAFANA = REPO_ROOT / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def worker_registry() -> dict[str, tuple[str, frozenset[str]]]:
    """Metric family -> (type, label names) as `streams.metrics` registers them in prometheus-client."""
    try:
        import streams.metrics as metrics_module
    except ImportError as e:  # a failure, not a skip: the dashboard would show nothing
        pytest.fail(
            f"streams.metrics cannot be imported ({e}); the dashboard's worker metrics are unverified"
        )
    registries = [
        v for v in vars(metrics_module).values() if isinstance(v, prometheus_client.CollectorRegistry)
    ]
    registry = registries[0] if registries else prometheus_client.REGISTRY
    collectors = [
        v for v in vars(metrics_module).values() if isinstance(v, prometheus_client.metrics.MetricWrapperBase)
    ]
    labels = {c._name: frozenset(c._labelnames) for c in collectors}
    families = {}
    for family in registry.collect():
        if family.name.startswith("ecom_"):
            families[family.name] = (family.type, labels.get(family.name, frozenset()))
    assert families, "streams.metrics registered no ecom_ metric"
    return families


def registered_series() -> dict[str, frozenset[str]]:
    """Every series name the worker can expose -> its label names."""
    series = {}
    for name, (metric_type, labels) in worker_registry().items():
        for sample in expand_sample_names(name, metric_type):
            series[sample] = labels
    return series


def test_dashboard_loads_with_unique_ids_and_a_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = list(dashboard_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(q) for _, q in dashboard_queries(dashboard)))
    needs = {
        "throughput per topic": {"ecom_events_consumed_total", "ecom_events_produced_total"},
        "end-to-end latency percentiles": {"ecom_end_to_end_latency_seconds_bucket"},
        "consumer lag": {"ecom_consumer_lag"},
        "dead letters": {"ecom_dead_letters_total"},
        "inference batch size": {"ecom_inference_batch_size_bucket", "nv_inference_exec_count"},
        "inference queue time": {"nv_inference_queue_duration_us"},
        "GPU utilisation": {"nv_gpu_utilization"},
        "worker CPU and memory": {"process_cpu_seconds_total", "process_resident_memory_bytes"},
    }
    for need, metrics in needs.items():
        assert metrics <= used, f"dashboard lacks {need}: {sorted(metrics - used)}"
    quantiles = {q for _, q in dashboard_queries(dashboard) if "ecom_end_to_end_latency_seconds_bucket" in q}
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}," in expr for expr in quantiles), f"no p{q} latency"


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule): a typo in a panel fails here, not in Grafana."""
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    rules = [
        {"record": f"ecom:query_{i}", "expr": grafana_to_promql(q)} for i, (_, q) in enumerate(all_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_uses_metrics_and_labels_of_the_contract() -> None:
    contracts = read_contracts()
    worker = {}
    for metric in contracts.worker_metrics.values():
        for sample in expand_sample_names(metric.name, metric.type):
            worker[sample] = metric.labels
    problems = []
    for where, query in all_queries():
        names = promql_metric_names(query)
        if not names:
            problems.append(f"{where}: names no metric")
        for name in names:
            if name in PROMETHEUS_SYNTHETIC or name in CLIENT_LIBRARY_METRICS:
                continue
            if name.startswith("nv_"):
                if name not in contracts.triton_metrics:
                    problems.append(f"{where}: {name} is not in the contract's Triton metrics")
            elif name not in worker:
                problems.append(f"{where}: {name} is not in the contract's worker metrics")
        for name, labels in promql_selector_labels(query).items():
            if name in worker and not labels <= worker[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label(s) {sorted(labels - worker[name])}")
    assert not problems, "\n".join(problems)


def test_every_worker_metric_in_queries_is_registered_by_the_service() -> None:
    """Against what `streams.metrics` really registers: a renamed metric or label fails here."""
    series = registered_series()
    problems = []
    for where, query in all_queries():
        names = {n for n in promql_metric_names(query) if n.startswith("ecom_")}
        for name in names - set(series):
            problems.append(f"{where}: {name} is not exported by streams.metrics")
        for name, labels in promql_selector_labels(query).items():
            if name in series and not labels <= series[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label(s) {sorted(labels - series[name])}")
        # Grouping labels must exist on at least one worker metric of the query (Triton ones are
        # checked against a live server).
        if names and not any(n.startswith("nv_") for n in promql_metric_names(query)):
            available = set().union(*(series.get(n, frozenset()) for n in names)) | TARGET_LABELS
            missing = promql_grouping_labels(query) - available
            if missing:
                problems.append(f"{where}: grouped by {sorted(missing)}, which no metric of the query has")
    assert not problems, "\n".join(problems)


def test_process_metrics_the_queries_use_are_in_the_workers_registry() -> None:
    """The worker's /metrics serves prometheus-client's default registry, whose process collector
    exports these (on Linux, as in the images; the live scrape test reads them from a running worker).
    Any other name that is neither the service's nor Triton's fails here."""
    used = set()
    for _, query in all_queries():
        used |= {
            n
            for n in promql_metric_names(query)
            if not n.startswith(("ecom_", "nv_")) and n not in PROMETHEUS_SYNTHETIC
        }
    assert used <= CLIENT_LIBRARY_METRICS, (
        f"queries use unknown metrics: {sorted(used - CLIENT_LIBRARY_METRICS)}"
    )
    exported = {sample.name for family in prometheus_client.REGISTRY.collect() for sample in family.samples}
    assert exported >= CLIENT_LIBRARY_METRICS, sorted(CLIENT_LIBRARY_METRICS - exported)


def test_the_registry_matches_the_contract() -> None:
    """The registry the worker exports holds every collector of streams.metrics (the contract, which
    docs/architecture.md's table is rendered from) with its type and labels."""
    families = worker_registry()
    contract = read_contracts().worker_metrics
    registered = {}
    for name, (metric_type, labels) in families.items():
        contract_name = f"{name}_total" if metric_type == "counter" else name
        registered[contract_name] = (metric_type, labels)
    expected = {name: (m.type, m.labels) for name, m in contract.items()}
    missing = set(expected) - set(registered)
    assert not missing, f"contract metrics not registered: {sorted(missing)}"
    for name, spec in expected.items():
        assert registered[name] == spec, f"{name}: registered {registered[name]}, contract {spec}"


def test_sample_base_resolution() -> None:
    known = {"ecom_x": 1, "ecom_y_total": 1}
    assert sample_base("ecom_x_bucket", known) == "ecom_x"
    assert sample_base("ecom_y_total", known) == "ecom_y_total"
    assert sample_base("ecom_z", known) is None


def test_promql_helpers_extract_what_they_should() -> None:
    query = (
        'histogram_quantile(0.99, sum by (le, topic) (rate(ecom_a_bucket{topic=~"$topic", x!="1e3"}'
        "[$__rate_interval]))) / on (topic) group_left ecom_b offset 5m > 1e-9"
    )
    assert promql_metric_names(query) == {"ecom_a_bucket", "ecom_b"}
    assert promql_selector_labels(query) == {"ecom_a_bucket": {"topic", "x"}}
    assert promql_grouping_labels(query) == {"le", "topic"}


def test_provisioning_matches_the_compose_mounts() -> None:
    grafana = load_compose(COMPOSE_FILE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/ecom-enrichment.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == path
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (GRAFANA / "dashboards" / Path(home).name).is_file()
