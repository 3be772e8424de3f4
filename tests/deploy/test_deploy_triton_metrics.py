"""Triton's metric names and labels in the dashboard and alerts, against a live Triton's /metrics.

The server is the real tritonserver of the embedded default with a trivial model; the metric family
names and labels do not depend on the model. GPU metrics (nv_gpu_*) exist only on a GPU: here they are
checked against the contract's list (tooling.contracts.TRITON_METRICS, also rendered in
docs/architecture.md), and against a live scrape only where a GPU is present.
"""

from __future__ import annotations

import shutil
import urllib.request

import pytest
from deploytools import (
    PROMETHEUS_SYNTHETIC,
    TARGET_LABELS,
    all_queries,
    promql_grouping_labels,
    promql_metric_names,
    promql_selector_labels,
    read_contracts,
)

from tooling.embedded import TritonServer
from tooling.promtext import series_labels

pytestmark = pytest.mark.integration


def scrape(server: TritonServer) -> dict[str, set[str]]:
    """Series name -> label names, from the server's metrics port, under the names it exposes."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        return series_labels(resp.read().decode())


def test_triton_exports_every_nv_metric_the_queries_use(echo_triton: TritonServer) -> None:
    live = scrape(echo_triton)
    assert "nv_inference_count" in live, "the scrape returned no per-model metrics"
    problems = []
    for where, query in all_queries():
        names = {n for n in promql_metric_names(query) if n.startswith("nv_")}
        for name in names:
            if name.startswith("nv_gpu_"):
                if name not in read_contracts().triton_metrics:
                    problems.append(f"{where}: {name} is not a documented GPU metric")
                continue
            if name not in live:
                problems.append(f"{where}: Triton exports no {name}")
        for name, labels in promql_selector_labels(query).items():
            if name in live and not labels <= live[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label(s) {sorted(labels - live[name])}")
        if names and all(n in live for n in names):
            grouping = promql_grouping_labels(query) - TARGET_LABELS
            available = set().union(*(live[n] for n in names))
            if not grouping <= available:
                problems.append(
                    f"{where}: grouped by {sorted(grouping - available)}, not a label of {sorted(names)}"
                )
    assert not problems, "\n".join(problems)


def test_documented_triton_metrics_exist(echo_triton: TritonServer) -> None:
    """The contract's Triton list is what this Triton version really exports (GPU ones aside)."""
    live = scrape(echo_triton)
    documented = {n for n in read_contracts().triton_metrics if not n.startswith("nv_gpu_")}
    assert documented <= set(live), f"documented but not exported: {sorted(documented - set(live))}"
    assert live["nv_inference_count"] >= {"model", "version"}


def test_synthetic_names_are_not_exported_by_triton(echo_triton: TritonServer) -> None:
    assert not PROMETHEUS_SYNTHETIC & set(scrape(echo_triton))


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no NVIDIA GPU here: nv_gpu_* needs one")
def test_gpu_metrics_exist_on_a_gpu(echo_triton: TritonServer) -> None:
    # The embedded server starts with --allow-gpu-metrics=false; a GPU run needs its own server.
    gpu_server = TritonServer(echo_triton.model_repository, ["echo"], extra_args=["--allow-gpu-metrics=true"])
    with gpu_server:
        live = scrape(gpu_server)
    used = {n for _, q in all_queries() for n in promql_metric_names(q) if n.startswith("nv_gpu_")}
    assert used <= set(live), f"not exported on this GPU: {sorted(used - set(live))}"
