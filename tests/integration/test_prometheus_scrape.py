"""A real scrape: a real Prometheus server scrapes a running worker and Triton while real events flow,
with the shipped scrape jobs (deploy/prometheus/prometheus.yml) and alert rules (alerts.yml); every
number below is read back through Prometheus's HTTP API, and the Grafana dashboard's own queries and
the alert rules are evaluated on that live data.

The sample goes in two waves. The worker's labelled series appear with their first event, so a burst
that lands between two scrapes shows up as a series whose first sample already holds the burst, and
rate() over it is 0. The second wave arrives once Prometheus holds the first wave's totals: every rate
below is then computed over a real increase between two scrapes, not over a lucky scrape timing.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings
from streams.topics import TopicNames, create_topics
from streams.topology import ROUTES
from tooling.embedded import TritonServer
from tooling.embedded.prometheus import (
    PrometheusError,
    PrometheusServer,
    dashboard_queries,
    grafana_to_promql,
    prometheus_binary,
)
from tooling.embedded.worker import WorkerProcess
from tooling.replay import produce
from tooling.sample import SampleEvent, build_sample

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "ecom-enrichment.json"
WORKER_JOB, TRITON_JOB = "ecom-worker", "ecom-triton"  # the shipped job names the rules and panels use
MODEL = "ecom_fusion"


def _have_prometheus() -> bool:
    try:
        prometheus_binary()
    except FileNotFoundError:
        return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not _have_prometheus(), reason="prometheus (Debian package) is not installed"),
]

# Panels that stay empty without a GPU; everything else must show data on a CPU run.
GPU_ONLY = ("nv_gpu_",)
# Panels whose series must be positive after the run (throughput, latency, batch size, Triton work).
# The rest (lag, queue time, in flight, dependencies) may legitimately read 0 when the run is over.
MUST_BE_POSITIVE = (
    "Events consumed per second",
    "Events produced per second",
    "Processing outcome per second",
    "Dead letters per second",
    "End-to-end latency",
    "Recommendation latency",
    "Inference batch size sent by the workers",
    "Triton batch size executed",
    "Triton compute and request time",
    "Inference latency seen by the workers",
    "Workers scraped",
    "Worker CPU",
    "Worker resident memory",
)


@pytest.fixture
def settings(service_settings: Callable[..., Settings]) -> Settings:
    # A live macro-F1 window the two waves of rated reviews fill, so that its panel has data too.
    return service_settings("prom", live_f1_window=10)


@pytest.fixture
def worker(settings: Settings, new_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    asyncio.run(create_topics(settings))
    return new_worker(settings).start()


@pytest.fixture
def prometheus(worker: WorkerProcess, triton: TritonServer, tmp_path: Path) -> Iterator[PrometheusServer]:
    targets = {
        WORKER_JOB: [f"127.0.0.1:{worker.web_port}"],
        TRITON_JOB: [f"127.0.0.1:{triton.metrics_port}"],
    }
    shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    with PrometheusServer(
        targets, scrape_interval="1s", rule_files=[ALERTS], base_config=shipped, log_dir=tmp_path
    ) as server:
        server.wait_for_scrapes([WORKER_JOB, TRITON_JOB])
        yield server


def wave(run: str, seed: int, max_message_bytes: int) -> list[SampleEvent]:
    """Real held-out reviews, Fashion-MNIST listings and Instacart clicks, plus one broken event per
    way to fail (so the dead-letter panel and alert have data too)."""
    return build_sample(
        reviews=12,
        products=12,
        clicks=24,
        broken=True,
        seed=seed,
        max_message_bytes=max_message_bytes,
        run=run,
    )


def scraped_total(prometheus: PrometheusServer, metric: str, selector: str = "") -> float:
    result = prometheus.query(f'sum({metric}{{job="{WORKER_JOB}"{selector}}})')
    return float(result[0]["value"][1]) if result else 0.0


def wait_for_processed(prometheus: PrometheusServer, expected: int, worker: WorkerProcess) -> None:
    """Until Prometheus has scraped a processed count of `expected` (every event published or
    dead-lettered: the counter moves after the broker acknowledged the output)."""
    try:
        prometheus.wait_until(
            f'sum(ecom_events_processed_total{{job="{WORKER_JOB}"}}) >= {expected}', timeout=240
        )
    except PrometheusError as e:
        raise AssertionError(f"{e}\nworker log:\n{worker.tail()}") from e


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def alert_states(prometheus: PrometheusServer) -> dict[str, str]:
    return {rule["name"]: rule["state"] for rule in prometheus.rules() if rule["type"] == "alerting"}


def test_prometheus_scrapes_the_running_service_and_the_dashboard_shows_it(
    settings: Settings, worker: WorkerProcess, prometheus: PrometheusServer
) -> None:
    started = time.monotonic()
    names = TopicNames.from_settings(settings)
    first = wave(f"prom1-{settings.app_id}", 1, settings.max_message_bytes)
    second = wave(f"prom2-{settings.app_id}", 2, settings.max_message_bytes)
    events = [*first, *second]
    inferred = {  # rows the second wave must send to Triton (valid reviews and listings)
        "review": sum(1 for e in second if e.topic == "reviews" and e.expect == "output"),
        "product": sum(1 for e in second if e.topic == "product-uploads" and e.expect == "output"),
    }

    produced = asyncio.run(produce(settings, first))
    assert produced.refused == []
    wait_for_processed(prometheus, len(first), worker)
    triton_before = prometheus.value(f'sum(nv_inference_count{{job="{TRITON_JOB}", model="{MODEL}"}})')
    rows_before = scraped_total(prometheus, "ecom_inference_batch_size_sum")

    produced = asyncio.run(produce(settings, second))
    assert produced.refused == []
    wait_for_processed(prometheus, len(events), worker)

    # --- The worker's counters, as Prometheus scraped them, account for every event. --------------
    for logical, topic in zip((r.input for r in ROUTES), names.inputs, strict=True):
        sent = sum(1 for e in events if e.topic == logical)
        dead = sum(1 for e in events if e.topic == logical and e.expect == "dlq")
        selector = f', topic="{topic}"'
        assert scraped_total(prometheus, "ecom_events_consumed_total", selector) == sent
        assert scraped_total(
            prometheus, "ecom_events_processed_total", f'{selector}, outcome="enriched"'
        ) == (sent - dead)
        assert (
            scraped_total(prometheus, "ecom_events_processed_total", f'{selector}, outcome="dead_lettered"')
            == dead
        )
        # One end-to-end latency observation per published output.
        assert scraped_total(prometheus, "ecom_end_to_end_latency_seconds_count", selector) == sent - dead
    assert scraped_total(prometheus, "ecom_dead_letters_total") == sum(e.expect == "dlq" for e in events)

    # --- Throughput, latency and batch size as rates and quantiles over the live data. --------------
    throughput = prometheus.value(f'sum(rate(ecom_events_processed_total{{job="{WORKER_JOB}"}}[5m]))')
    assert throughput > 0
    sent_to = [names(r.input) for r in ROUTES if any(e.topic == r.input for e in events)]
    for topic in sent_to:  # the inputs this test sent events to (the sample has no search queries)
        p99 = prometheus.value(
            "histogram_quantile(0.99, sum by (le) (rate("
            f'ecom_end_to_end_latency_seconds_bucket{{job="{WORKER_JOB}", topic="{topic}"}}[5m])))'
        )
        assert math.isfinite(p99) and p99 > 0, (topic, p99)
    for kind in inferred:
        selector = f', kind="{kind}"'
        assert scraped_total(prometheus, "ecom_inference_batch_size_count", selector) > 0
        mean_batch = prometheus.value(
            f'sum(rate(ecom_inference_batch_size_sum{{job="{WORKER_JOB}"{selector}}}[5m]))'
            f' / sum(rate(ecom_inference_batch_size_count{{job="{WORKER_JOB}"{selector}}}[5m]))'
        )
        assert 1 <= mean_batch <= settings.batch_max_size, (kind, mean_batch)
    rows_sent = scraped_total(prometheus, "ecom_inference_batch_size_sum") - rows_before
    assert rows_sent >= sum(inferred.values())

    # --- Triton's own counters saw the same work (a retried request counts twice there, hence >=). --
    prometheus.wait_until(
        f'sum(nv_inference_count{{job="{TRITON_JOB}", model="{MODEL}"}}) - {triton_before} >= {rows_sent}'
    )
    executions = prometheus.value(f'sum(nv_inference_exec_count{{job="{TRITON_JOB}", model="{MODEL}"}})')
    assert executions > 0
    assert prometheus.value(f'sum(rate(nv_inference_count{{job="{TRITON_JOB}", model="{MODEL}"}}[5m]))') > 0

    # --- Every dashboard query on this data: non-empty, and positive where work was done. -----------
    dashboard = json.loads(DASHBOARD.read_text())
    # The topics of a route this test sent nothing to (search) stay at 0; the others must move.
    idle = {names(t) for r in ROUTES if names(r.input) not in sent_to for t in (r.input, r.output, r.dlq)}
    empty, not_positive = [], []
    for title, query in dashboard_queries(dashboard):
        if any(prefix in query for prefix in GPU_ONLY):
            continue
        result = prometheus.query(grafana_to_promql(query))
        if not result:
            empty.append(f"{title}: {query}")
        elif title.startswith(MUST_BE_POSITIVE):
            busy = [series for series in result if series["metric"].get("topic") not in idle]
            if not all(math.isfinite(v) and v > 0 for v in values(busy)):
                not_positive.append(f"{title}: {query} -> {values(busy)}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    assert not not_positive, "dashboard queries without a positive value:\n" + "\n".join(not_positive)
    scraped_workers = prometheus.value(f'count(up{{job="{WORKER_JOB}"}} == 1)')
    assert scraped_workers == 1
    assert {
        s["metric"]["topic"] for s in prometheus.query(f'ecom_events_consumed_total{{job="{WORKER_JOB}"}}')
    } == set(names.inputs), "the dashboard's topic variable lists the input topics"

    # Lag returns to 0 once the worker has committed past the last event.
    prometheus.wait_until(f'sum(ecom_consumer_lag{{job="{WORKER_JOB}"}}) == 0')

    # --- The shipped alert rules on live data. ----------------------------------------------------
    rules = prometheus.wait_for_rules()
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    # Every input had broken events (over 1 %): the dead-letter alert is active for each input topic
    # (pending until its `for:` has passed).
    deadline = time.monotonic() + 30
    while alert_states(prometheus)["EcomDeadLetterRateHigh"] == "inactive" and time.monotonic() < deadline:
        time.sleep(0.5)
    dead_letter_rule = next(r for r in prometheus.rules() if r["name"] == "EcomDeadLetterRateHigh")
    assert dead_letter_rule["state"] in ("pending", "firing"), dead_letter_rule
    assert {a["labels"]["topic"] for a in dead_letter_rule["alerts"]} == set(sent_to)
    # Both targets are up and the worker reaches both dependencies: none of these may be active.
    states = alert_states(prometheus)
    for healthy in ("EcomWorkerDown", "EcomTritonDown", "EcomTritonNotReady", "EcomKafkaUnreachable"):
        assert states[healthy] == "inactive", (healthy, states)

    print(  # past pytest's capture with -s; the report quotes it
        f"\nscrape test: {len(events)} events, {rows_sent:.0f} rows inferred in the second wave, "
        f"{executions:.0f} Triton executions so far, test body {time.monotonic() - started:.1f}s"
    )
