"""The model's own speed: batched inference in this process, no servers.

The serving path is `fusion.serving.FusionService.run`, the very code `model.py` runs inside Triton on a
dynamic batch (one request per row: validation, PNG decoding, tokenisation, preprocessing, the network),
fed with the rows the worker would send for the same inputs. The network alone (`Predictor.predict` on
already decoded and prepared inputs) is measured beside it at the best batch size.

The model runs in the runtime the served config selects for the version (`runtime` parameter of
`config.pbtxt`, `fusion.fast`; OpenVINO on the CPU), so that the stream's figures compare with the same
network; when that is not torch, the fp32 torch network is measured too, as kinds named
"<kind> (torch fp32)" (one line each in the report), with its ratio in `runtime_vs_torch`.
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
    runtime = served_runtime(version_dir, device)
    started = time.perf_counter()
    service = FusionService(version_dir, device, runtime=runtime, threads=max(threads, 1))
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
        "runtime": service.runtime,
        "kinds": {},
    }
    for kind in kinds:
        result["kinds"][kind] = _measure_kind(service, inputs, kind, batch_sizes, sync, seconds, warmup)
    if service.runtime != "torch":
        del service
        gc.collect()
        service = FusionService(version_dir, device)
        ratios: dict[str, float] = {}
        for kind in kinds:
            ref = _measure_kind(service, inputs, kind, batch_sizes, sync, seconds, warmup)
            result["kinds"][f"{kind} (torch fp32)"] = ref
            # CPU per item at each one's best batch: a ratio that holds on a shared machine.
            ratios[kind] = ref["best"]["cpu_ms_per_item"] / result["kinds"][kind]["best"]["cpu_ms_per_item"]
            log.info("model %s: %s uses %.2fx less CPU per item than torch fp32", kind, runtime, ratios[kind])
        result["runtime_vs_torch"] = ratios
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


def served_runtime(version_dir: Path, device: str) -> str:
    """The runtime Triton runs this version in on `device`: the config's `runtime` parameter when the
    version's model.py reads it and the device is a CPU, else torch."""
    import re

    model_py = version_dir / "model.py"
    config = version_dir.parent / "config.pbtxt"
    if not device.startswith("cpu") or not model_py.exists() or not config.exists():
        return "torch"
    if '"runtime"' not in model_py.read_text():
        return "torch"
    found = re.search(r'key: "runtime" value \{ string_value: "([^"]*)" \}', config.read_text())
    return found.group(1) if found else "torch"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
