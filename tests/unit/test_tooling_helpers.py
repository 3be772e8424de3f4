"""The helpers every figure goes through: percentiles and values read from Prometheus text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tooling.promtext import metric_sum, series_labels
from tooling.stats import percentile

EXPOSITION = """\
# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="ecom_fusion",version="1"} 30
nv_inference_count{model="echo",version="1"} 3
# HELP ecom_inference_requests_total Inference requests by outcome.
# TYPE ecom_inference_requests_total counter
ecom_inference_requests_total{kind="review",outcome="ok"} 7.0
ecom_inference_requests_total{kind="review",outcome="retry"} 2.0
ecom_inference_requests_total{kind="product",outcome="retry"} 1.0
ecom_inference_requests_created{kind="review",outcome="ok"} 1.7e+09
# HELP ecom_inference_batch_size Rows per request.
# TYPE ecom_inference_batch_size histogram
ecom_inference_batch_size_bucket{kind="review",le="+Inf"} 4.0
ecom_inference_batch_size_count{kind="review"} 4.0
ecom_inference_batch_size_sum{kind="review"} 30.0
ecom_dependency_up{dependency="triton",note="a \\"quoted\\" value"} 0.0
"""


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    values = list(rng.exponential(size=101))
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))


def test_metric_sum_by_exposed_name_and_labels() -> None:
    # Triton's counters have no `_total` suffix: they are read under the name they are exposed with.
    assert metric_sum(EXPOSITION, "nv_inference_count") == 33
    assert metric_sum(EXPOSITION, "nv_inference_count", model="echo") == 3
    assert metric_sum(EXPOSITION, "ecom_inference_requests_total", outcome="retry") == 3.0
    assert metric_sum(EXPOSITION, "ecom_inference_requests_total", kind="review", outcome="retry") == 2.0
    assert metric_sum(EXPOSITION, "ecom_inference_batch_size_sum", kind="review") == 30.0
    assert metric_sum(EXPOSITION, "ecom_dependency_up", dependency="triton") == 0.0
    # A prefix of another name is not that name; an absent metric sums to zero.
    assert metric_sum(EXPOSITION, "ecom_inference_requests") == 0.0
    assert metric_sum(EXPOSITION, "ecom_dead_letters_total") == 0.0


def test_series_labels_are_the_exposed_ones() -> None:
    series = series_labels(EXPOSITION)
    assert series["nv_inference_count"] == {"model", "version"}
    assert series["ecom_inference_batch_size_bucket"] == {"kind", "le"}
    assert "nv_inference_count_total" not in series
