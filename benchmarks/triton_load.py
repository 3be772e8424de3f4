"""Triton alone: closed-loop load from concurrent clients, throughput and latency per load point.

A load point is `concurrency` x `rows` (e.g. 64x1: 64 clients each with one single-row request
outstanding, what a naive service sends; 2x32: two 32-row requests outstanding, what the micro-batcher
sends). The client is the service's own (`streams.triton_client.TritonModel`, one gRPC channel), so the
figures are what the worker can get from Triton. Triton's own counters give the batch it executed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.inputs import BenchInputs, Kind, cycle, items, model_row
from benchmarks.stats import latency_summary, tree_cpu_seconds
from tooling.promtext import metric_sum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int
    rows: int

    @property
    def label(self) -> str:
        return f"{self.concurrency}x{self.rows}"

    @property
    def in_flight_rows(self) -> int:
        return self.concurrency * self.rows

    @classmethod
    def parse(cls, text: str) -> LoadPoint:
        """`CxR` (concurrency x rows per request) or `C` (single-row requests)."""
        conc, _, rows = text.strip().lower().partition("x")
        point = cls(int(conc), int(rows or 1))
        if point.concurrency < 1 or point.rows < 1:
            raise ValueError(f"load point {text!r}: both numbers must be >= 1")
        return point


def triton_counters(metrics_url: str) -> dict[str, float]:
    """nv_inference_count / exec_count / request_success and the summed durations (all models)."""
    wanted = (
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_request_duration_us",
    )
    totals = dict.fromkeys(wanted, 0.0)
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:  # noqa: S310  (our own loopback URL)
            text = resp.read().decode()
    except OSError:
        return totals
    return {name: metric_sum(text, name) for name in wanted}


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    rows, execs, reqs = (
        d["nv_inference_count"],
        d["nv_inference_exec_count"],
        d["nv_inference_request_success"],
    )
    return {
        "rows": int(rows),
        "executions": int(execs),
        "mean_rows_per_execution": rows / execs if execs else None,
        "queue_ms_per_request": d["nv_inference_queue_duration_us"] / reqs / 1000 if reqs else None,
        "compute_ms_per_execution": d["nv_inference_compute_infer_duration_us"] / execs / 1000
        if execs
        else None,
    }


async def _run_point(
    url: str,
    model_name: str,
    rows: list[tuple[bytes, bytes]],
    point: LoadPoint,
    duration: float,
    warmup: float,
    deadline_s: float,
) -> dict[str, Any]:
    from streams.contract import ModelInput
    from streams.triton_client import TritonModel

    client = TritonModel(url, model_name, timeout=deadline_s)
    source = cycle([ModelInput(text=t, image=i) for t, i in rows])
    completions: list[tuple[float, float, int]] = []  # (end, latency, rows)
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = start + warmup + duration

    async def one_client() -> None:
        while time.perf_counter() < stop_at:
            batch = [next(source) for _ in range(point.rows)]
            t0 = time.perf_counter()
            try:
                await client.infer(batch)
            except Exception as exc:  # noqa: BLE001  (counted and reported, the load goes on)
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            completions.append((t1, t1 - t0, point.rows))

    try:
        await client.info()  # connect once before the clock starts
        start = time.perf_counter()
        stop_at = start + warmup + duration
        await asyncio.gather(*(one_client() for _ in range(point.concurrency)))
    finally:
        await client.close()
    w0, w1 = start + warmup, start + warmup + duration
    window = [c for c in completions if w0 <= c[0] < w1]
    return {
        "load": point.label,
        "concurrency": point.concurrency,
        "rows_per_request": point.rows,
        "rows_in_flight": point.in_flight_rows,
        "rows_per_s": sum(c[2] for c in window) / duration,
        "requests": len(window),
        "latency": latency_summary([c[1] for c in window]),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def measure_triton(
    inputs: BenchInputs,
    *,
    url: str,
    metrics_url: str,
    server_pid: int | None,
    kinds: Sequence[Kind],
    points: Sequence[LoadPoint],
    duration: float,
    warmup: float,
    model_name: str = "ecom_fusion",
    timeout: float = 60.0,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kind in kinds:
        rows = [model_row(item) for item in items(inputs, kind)]
        out = []
        for point in points:
            before = triton_counters(metrics_url)
            cpu0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
            record = asyncio.run(_run_point(url, model_name, rows, point, duration, warmup, timeout))
            record["server"] = counter_delta(before, triton_counters(metrics_url))
            if server_pid:
                # Over warm-up and window together, per row the server executed.
                executed = record["server"]["rows"]
                cpu = tree_cpu_seconds(server_pid) - cpu0
                record["server"]["cpu_ms_per_row"] = 1000 * cpu / executed if executed else None
            out.append(record)
            lat = record["latency"]
            log.info(
                "triton %s %s: %.1f rows/s, p50 %.1f ms, p99 %.1f ms, %d errors",
                kind,
                point.label,
                record["rows_per_s"],
                lat["p50_ms"],
                lat["p99_ms"],
                record["errors"],
            )
        result[kind] = out
    return result
