"""The model's own speed: batched inference in this process, no servers.

The serving path is `fusion.serving.FusionService.run`, the very code `model.py` runs inside Triton on a
dynamic batch (one request per row: validation, PNG decoding, tokenisation, preprocessing, the network),
fed with the rows the worker would send for the same inputs. The network alone (`Predictor.predict` on
already decoded and prepared inputs) is measured beside it at the best batch size.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.inputs import KINDS, BenchInputs, Kind, cycle, items, model_row

log = logging.getLogger(__name__)

DEFAULT_VERSION_DIR = Path(__file__).resolve().parents[1] / "triton_models" / "ecom_fusion" / "1"


def _timed_loop(
    fn: Callable[[], None], sync: Callable[[], None], seconds: float, min_reps: int = 3
) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def measure_model(
    inputs: BenchInputs,
    *,
    kinds: Sequence[Kind] = KINDS,
    batch_sizes: Sequence[int] = (1, 8, 32, 64),
    device: str = "cpu",
    threads: int = 0,
    seconds: float = 5.0,
    warmup: int = 2,
    version_dir: Path = DEFAULT_VERSION_DIR,
) -> dict[str, Any]:
    import torch

    from fusion.serving import FusionService

    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    service = FusionService(version_dir, device)
    load_s = time.perf_counter() - started

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    result: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else _cpu_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_seconds": round(load_s, 2),
        "kinds": {},
    }
    for kind in kinds:
        result["kinds"][kind] = _measure_kind(service, inputs, kind, batch_sizes, sync, seconds, warmup)
    del service  # free the model before the servers start
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def _measure_kind(
    service: Any,
    inputs: BenchInputs,
    kind: Kind,
    batch_sizes: Sequence[int],
    sync: Callable[[], None],
    seconds: float,
    warmup: int,
) -> dict[str, Any]:
    from fusion.preprocess import prepare_image, validate_request

    rows_iter = cycle([model_row(item) for item in items(inputs, kind)])
    points: list[dict[str, Any]] = []
    for batch in batch_sizes:
        # Every repetition takes the next rows: one row measured over and over would not be the data.
        def serve(batch: int = batch) -> None:
            outcomes = service.run([[next(rows_iter)] for _ in range(batch)])
            bad = [o.error for o in outcomes if o.outputs is None]
            if bad:
                raise RuntimeError(f"the model rejected benchmark inputs: {bad[0]}")

        for _ in range(warmup):
            serve()
        sync()
        cpu0 = time.process_time()
        times = _timed_loop(serve, sync, seconds)
        cpu = time.process_time() - cpu0  # every thread of this process: torch's intra-op ones too
        total = sum(times)
        points.append(
            {
                "batch_size": batch,
                "batches": len(times),
                "items_per_s": batch * len(times) / total,
                "batch_ms_p50": 1000 * sorted(times)[len(times) // 2],
                "cpu_ms_per_item": 1000 * cpu / (batch * len(times)),
            }
        )
        log.info("model %s batch %d: %.1f items/s", kind, batch, points[-1]["items_per_s"])
    best = max(points, key=lambda p: float(p["items_per_s"]))
    best_batch = int(best["batch_size"])

    # The network alone at the best batch size, on inputs decoded and prepared beforehand.
    prepared: list[tuple[str | None, Any]] = []
    for _ in range(max(4 * best_batch, 64)):
        text_raw, image_raw = next(rows_iter)
        text, grey = validate_request(text_raw, image_raw, service.limits)
        prepared.append((text, None if grey is None else prepare_image(grey, service.image_size)))
    pool = cycle(prepared)

    def network() -> None:
        chunk = [next(pool) for _ in range(best_batch)]
        service.predictor.predict([t for t, _ in chunk], [i for _, i in chunk])

    for _ in range(warmup):
        network()
    times = _timed_loop(network, sync, seconds)
    return {
        "serving_path": points,
        "best": {
            "batch_size": best_batch,
            "items_per_s": best["items_per_s"],
            "cpu_ms_per_item": best["cpu_ms_per_item"],
        },
        "network_only": {
            "batch_size": best_batch,
            "items_per_s": best_batch * len(times) / sum(times),
        },
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
