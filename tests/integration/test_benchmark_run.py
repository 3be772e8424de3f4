"""The benchmark runs end to end on a tiny input: prepare, then every measured part with its own servers.

This checks that the command works and that its result document is complete and consistent; the
figures themselves are measurements, not test outcomes (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.__main__ import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_benchmark_runs_on_a_tiny_input(tmp_path: Path) -> None:
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    assert main(["prepare", "--out", str(inputs), "--reviews", "8", "--products", "8"]) == 0
    code = main(
        [
            "run",
            "--inputs", str(inputs),
            "--out", str(out),
            "--parts", "model,triton,stream,naive",
            "--batch-sizes", "1,4",
            "--model-seconds", "0.2",
            "--triton-loads", "2x1,1x4",
            "--duration", "1.5",
            "--warmup", "0.5",
            "--load-fractions", "0.5",
            "--backlog", "16",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    assert (out / "results.png").stat().st_size > 0
    for kind in ("review", "product"):
        summary = data["summary"][kind]
        for key in (
            "model_items_per_s",
            "triton_best_rows_per_s",
            "stream_events_per_s",
            "naive_events_per_s",
        ):
            assert summary[key] > 0, (kind, key)
        assert summary["pipeline_efficiency"] == pytest.approx(
            summary["stream_events_per_s"] / summary["model_items_per_s"]
        )
        assert summary["latency_at_half"]["n"] > 0
        for part in ("stream", "naive"):
            k = data[part]["kinds"][kind]
            # Every event sent came back as an output; none was dead-lettered.
            assert k["saturated"]["missing"] == 0
            assert k["saturated"]["dead_letters"] == {}
            assert all(p["missing"] == 0 and not p["dead_letters"] for p in k["paced"])
        assert all(p["errors"] == 0 for p in data["triton"][kind])
    # The naive run really sent one event per request; the micro-batched one batched under backlog.
    naive = data["naive"]["kinds"]["review"]["saturated"]["during_window"]
    assert naive["worker_mean_rows_per_request"] == 1
    batched = data["stream"]["kinds"]["review"]["saturated"]["during_window"]
    assert batched["worker_mean_rows_per_request"] > 1
    assert not math.isnan(data["summary"]["review"]["latency_at_half"]["p99_ms"])
