"""The benchmark's shadow line: rates and CPU per event without and with a shadow, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import markdown
from benchmarks.run import RunOptions, shadow_counts, shadow_summary, summarise


def run(events_per_s: float, worker_ms: float, triton_ms: float) -> dict[str, Any]:
    window = {"cpu_ms_per_event": {"worker": worker_ms, "triton": triton_ms, "broker": 0.1}}
    return {"kinds": {"review": {"saturated": {"events_per_s": events_per_s, "during_window": window}}}}


def test_the_shadow_line_puts_off_and_on_side_by_side(tmp_path: Path) -> None:
    shadow = {"shadow_version": "1", "off": run(60.0, 2.0, 20.0), "on": run(40.0, 3.5, 41.0)}
    shadow["on"]["shadow"] = {
        "compared_rows": 900.0,
        "agree": 900.0,
        "disagree": 0.0,
        "dropped_queue_full": 12.0,
    }
    summary = shadow_summary(shadow, "review")
    assert summary == {
        "shadow_off_events_per_s": 60.0,
        "shadow_off_worker_cpu_ms_per_event": 2.0,
        "shadow_off_triton_cpu_ms_per_event": 20.0,
        "shadow_on_events_per_s": 40.0,
        "shadow_on_worker_cpu_ms_per_event": 3.5,
        "shadow_on_triton_cpu_ms_per_event": 41.0,
    }
    data = {"shadow": shadow}
    data["summary"] = summarise(data, RunOptions(out=tmp_path, kinds=("review",)))
    text = markdown(data)
    assert "## Shadow cost" in text and "`ECOM_SHADOW_VERSION=1`" in text
    assert "| review | 60.0 / 40.0 | 2.00 / 3.50 | 20.00 / 41.00 |" in text
    assert "900 rows compared" in text and "queue_full 12" in text


def test_no_shadow_part_no_shadow_figures() -> None:
    assert set(shadow_summary({}, "review").values()) == {None}


def test_shadow_counts_read_the_workers_metrics() -> None:
    text = "\n".join(
        [
            'ecom_model_rows_total{kind="review",role="shadow",version="1"} 30.0',
            'ecom_model_rows_total{kind="review",role="primary",version="1"} 32.0',
            'ecom_shadow_agreement_total{aspect="sentiment",kind="review",outcome="agree"} 29.0',
            'ecom_shadow_agreement_total{aspect="sentiment",kind="review",outcome="disagree"} 1.0',
            'ecom_shadow_dropped_total{kind="review",reason="timeout"} 2.0',
        ]
    )
    counts = shadow_counts(text)
    assert counts["compared_rows"] == 30 and counts["agree"] == 29 and counts["disagree"] == 1
    assert counts["dropped_timeout"] == 2 and counts["dropped_queue_full"] == 0
