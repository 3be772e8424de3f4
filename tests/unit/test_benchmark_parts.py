"""The benchmark's pure parts: statistics, load points, config variants, inputs, profile parsing, report."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from benchmarks.inputs import Product, Review, event_fields, load_inputs, model_row, write_inputs
from benchmarks.profile import parse_frame, read_collapsed, summarise
from benchmarks.report import markdown
from benchmarks.run import RunOptions, naive_config, sweep_config
from benchmarks.run import summarise as summarise_results
from benchmarks.stats import latency_summary, ratio, windowed_rate
from benchmarks.stream import StreamConfig
from benchmarks.triton_load import LoadPoint, counter_delta
from benchmarks.tritonconfig import TritonVariant, apply_variant, current_settings
from streams.events import ProductUploadEvent, ReviewEvent
from streams.settings import Settings
from streams.validation import Limits, product_input, review_input
from tooling.sample import png_bytes

REPO = Path(__file__).resolve().parents[2]


def test_latency_summary_is_in_milliseconds() -> None:
    s = latency_summary([0.010, 0.020, 0.030])
    assert s["n"] == 3
    assert s["p50_ms"] == pytest.approx(20.0)
    assert s["max_ms"] == pytest.approx(30.0)
    assert latency_summary([])["n"] == 0


def test_windowed_rate_counts_half_open_window() -> None:
    assert windowed_rate([0.5, 1.0, 1.5, 2.0, 3.0], 1.0, 3.0) == (3, 1.5)
    with pytest.raises(ValueError):
        windowed_rate([1.0], 2.0, 2.0)


def test_ratio_refuses_missing_figures() -> None:
    assert ratio(8.0, 2.0) == 4.0
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def test_load_points_parse() -> None:
    assert LoadPoint.parse("64x1") == LoadPoint(64, 1)
    assert LoadPoint.parse("8") == LoadPoint(8, 1)
    assert LoadPoint.parse(" 2X32 ").in_flight_rows == 64
    with pytest.raises(ValueError):
        LoadPoint.parse("0x4")


def test_triton_counter_delta() -> None:
    before = dict.fromkeys(
        (
            "nv_inference_count",
            "nv_inference_exec_count",
            "nv_inference_request_success",
            "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us",
        ),
        0.0,
    )
    after = {
        **before,
        "nv_inference_count": 64.0,
        "nv_inference_exec_count": 2.0,
        "nv_inference_request_success": 64.0,
        "nv_inference_queue_duration_us": 64_000.0,
        "nv_inference_compute_infer_duration_us": 100_000.0,
    }
    d = counter_delta(before, after)
    assert d["mean_rows_per_execution"] == 32
    assert d["queue_ms_per_request"] == pytest.approx(1.0)
    assert d["compute_ms_per_execution"] == pytest.approx(50.0)


@pytest.mark.parametrize("path", ["config.pbtxt", "configs/gpu.pbtxt"])
def test_triton_variants_change_only_what_they_name(path: str) -> None:
    text = (REPO / "triton_models" / "ecom_fusion" / path).read_text()
    before = current_settings(text)
    assert None not in before.values(), "the generated config no longer has a setting the sweep varies"
    variant = TritonVariant.parse("delay=0,instances=3,threads=2,max_batch=16,preferred=8")
    changed = apply_variant(text, variant)
    assert current_settings(changed) == {
        "queue_delay_us": 0,
        "instances": 3,
        "torch_threads": 2,
        "max_batch_size": 16,
        "preferred_batch_size": 8,
    }
    assert "preferred_batch_size" not in apply_variant(changed, TritonVariant.parse("preferred=0"))
    only_delay = apply_variant(text, TritonVariant.parse("delay=777"))
    assert current_settings(only_delay) == {**before, "queue_delay_us": 777}
    assert only_delay.replace("777", str(before["queue_delay_us"])) == text


def test_triton_variant_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        TritonVariant.parse("priority=4")


def test_sweep_and_naive_configs_change_one_setting() -> None:
    base = StreamConfig("micro-batched", 32, 10.0, 2, 64)
    assert sweep_config(base, "batch=64,concurrency=128") == StreamConfig(
        "batch64-concurrency128", 64, 10.0, 2, 128
    )
    assert sweep_config(base, "linger=2.5").batch_linger_ms == 2.5
    naive = naive_config(base)
    assert (naive.batch_max_size, naive.batch_linger_ms, naive.max_in_flight) == (1, 0.0, 2)
    assert Settings(**naive.describe()).to_env()["ECOM_BATCH_MAX_SIZE"] == "1"
    with pytest.raises(ValueError):
        sweep_config(base, "threads=2")


def _items() -> tuple[list[Review], list[Product]]:
    png = png_bytes(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    reviews = [Review("wcr-1", "clothing-7", "Lovely dress, runs small. Returned it.", 2)]
    products = [
        Product("fmnist-test-3", "Dress", "Fits well. Great colour!", png, 3),
        Product("fmnist-test-4", "Sneaker", None, png, 7),
    ]
    return reviews, products


def test_inputs_round_trip(tmp_path: Path) -> None:
    reviews, products = _items()
    write_inputs(tmp_path, reviews, products, {"seed": 0})
    loaded = load_inputs(tmp_path)
    assert loaded.reviews == reviews
    assert loaded.products == products
    assert loaded.manifest["counts"] == {"review": 1, "product": 2}


def test_load_inputs_names_the_prepare_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="benchmarks prepare"):
        load_inputs(tmp_path)


def test_events_are_what_the_service_accepts_and_rows_what_it_sends() -> None:
    """The benchmark's events pass the worker's own schema and checks, and its in-process rows equal the
    rows the worker sends to Triton for them."""
    reviews, products = _items()
    limits = Limits()
    now = datetime.now(UTC).isoformat()
    review = ReviewEvent.model_validate({**event_fields(reviews[0]), "event_id": "e1", "ts": now})
    assert review_input(review, limits) == _as_input(model_row(reviews[0]))
    for product in products:
        event = ProductUploadEvent.model_validate({**event_fields(product), "event_id": "e2", "ts": now})
        assert base64.b64decode(event.image or "") == product.image
        assert product_input(event, limits) == _as_input(model_row(product))


def _as_input(row: tuple[bytes, bytes]) -> object:
    from streams.contract import ModelInput

    return ModelInput(text=row[0], image=row[1])


_ROOT = 'process 1:"python -m streams worker";thread (0x1);run (asyncio/base_events.py:600)'
COLLAPSED = "\n".join(
    [
        f"{_ROOT};_on_message (streams/app.py:10);parse (pydantic/main.py:5) 30",
        f"{_ROOT};infer (tritonclient/grpc/aio/__init__.py:9) 50",
        f"{_ROOT} 20",
    ]
)


def test_profile_summary_shares(tmp_path: Path) -> None:
    assert parse_frame("infer (tritonclient/grpc/aio/__init__.py:9)") == (
        "infer",
        "tritonclient/grpc/aio/__init__.py",
    )
    stacks = read_collapsed(COLLAPSED.splitlines())
    assert [n for _, n in stacks] == [30, 50, 20]
    path = tmp_path / "worker.txt"
    path.write_text(COLLAPSED)
    summary = summarise(path)
    assert summary["samples"] == 100
    buckets = {b["bucket"]: b["share"] for b in summary["buckets"]}
    assert buckets == {"triton client (request/response)": 0.5, "pydantic (schemas)": 0.3, "asyncio": 0.2}
    inclusive = {r["function"]: r["share"] for r in summary["inclusive"]}
    assert inclusive["run (asyncio/base_events.py)"] == 1.0


def _results() -> dict[str, object]:
    lat = {"n": 10, "p50_ms": 40.0, "p95_ms": 60.0, "p99_ms": 80.0, "max_ms": 90.0, "mean_ms": 45.0}
    stream = {
        "config": {
            "name": "micro-batched",
            "batch_max_size": 32,
            "batch_linger_ms": 10.0,
            "max_in_flight": 2,
            "agent_concurrency": 64,
        },
        "kinds": {
            "review": {
                "saturated": {
                    "events_per_s": 90.0,
                    "missing": 0,
                    "dead_letters": {},
                    "during_window": {"cpu_ms_per_event": {"worker": 2.0, "triton": 23.0, "broker": 1.0}},
                },
                "paced": [
                    {
                        "fraction": 0.5,
                        "offered_events_per_s": 45.0,
                        "latency": lat,
                        "missing": 0,
                        "dead_letters": {},
                        "resources": {},
                    }
                ],
            }
        },
    }
    naive = {
        **stream,
        "kinds": {
            "review": {
                **stream["kinds"]["review"],  # type: ignore[index]
                "saturated": {"events_per_s": 30.0, "missing": 0, "dead_letters": {}, "during_window": {}},
            }
        },
    }
    return {
        "model": {
            "device": "cpu",
            "torch_threads": 2,
            "device_name": "x",
            "kinds": {
                "review": {
                    "serving_path": [{"batch_size": 32, "items_per_s": 100.0, "batch_ms_p50": 320.0}],
                    "best": {"batch_size": 32, "items_per_s": 100.0, "cpu_ms_per_item": 20.0},
                    "network_only": {"batch_size": 32, "items_per_s": 110.0},
                }
            },
        },
        "triton": {
            "review": [
                {
                    "load": "2x32",
                    "rows_per_request": 32,
                    "rows_in_flight": 64,
                    "rows_per_s": 95.0,
                    "latency": lat,
                    "errors": 0,
                    "server": {},
                }
            ]
        },
        "stream": stream,
        "naive": naive,
    }


def test_summary_ratios_and_markdown() -> None:
    data = _results()
    summary = summarise_results(data, RunOptions(out=Path("/tmp"), kinds=("review",)))
    s = summary["review"]
    assert s["pipeline_efficiency"] == pytest.approx(0.9)
    assert s["microbatched_vs_naive"] == pytest.approx(3.0)
    assert s["stream_vs_triton_alone"] == pytest.approx(90 / 95)
    assert s["latency_at_half"]["p99_ms"] == 80.0
    assert s["cpu_efficiency"] == pytest.approx(20 / 25)  # the broker is not the service
    data["summary"] = summary
    text = markdown(data)
    assert (
        "| review | 100.0 (batch 32) | 95.0 | 90.0 | 30.0 | 0.90 | 3.0 | 0.80 (20.0 / 25.0 ms) "
        "| 40 / 60 / 80 at 45.0/s |" in text
    )


LIGHT_RUN_PATH = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pandas", "pyarrow", "sklearn", "scipy"}:
            raise ImportError(f"the benchmark's run path imported {name}")
        return None

sys.meta_path.insert(0, Block())
import benchmarks.__main__, benchmarks.run, benchmarks.stream, benchmarks.triton_load
import benchmarks.model, benchmarks.report, benchmarks.profile, benchmarks.tritonconfig
import fusion.serving  # the model, in-process and inside Triton
import streams.app, streams.worker, tooling.embedded.worker  # the worker process
from pathlib import Path
from benchmarks.inputs import load_inputs, model_row
inputs = load_inputs(Path(sys.argv[1]))
print(len([model_row(x) for x in inputs.reviews + inputs.products]))
"""


def test_run_path_needs_no_data_science_stack(tmp_path: Path) -> None:
    """The run step (and the worker) work with the packages listed for the GPU machine: no pandas, pyarrow,
    scikit-learn or scipy."""
    import subprocess
    import sys

    reviews, products = _items()
    write_inputs(tmp_path, reviews, products, {})
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_RUN_PATH, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3"


def test_triton_stub_finds_the_model_code_in_this_environment() -> None:
    """The stub ignores PYTHONPATH: `fusion` and the base encoders must be installed where it looks."""
    from benchmarks.run import missing_for_triton_stub

    assert missing_for_triton_stub() == []
