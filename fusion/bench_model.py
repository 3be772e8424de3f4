"""In-process batched inference latency / throughput of the served network, on real inputs.

    python -m fusion.bench_model --device cpu --batch-sizes 1 8 32 --output runs/bench_cpu.json
    python -m fusion.bench_model --device cuda --batch-sizes 1 8 32 128 256 --output runs/bench_gpu.json
    python -m fusion.bench_model --device cpu --threads 1 --runtimes torch openvino onnxruntime-int8 \
        --network-only --quality --output runs/bench_runtimes.json

Inputs: held-out reviews (text), Fashion-MNIST test images encoded as PNG (image), and both together.
Each batch runs the serving path `FusionService.run` (validation, decoding, preprocessing, network),
one request per row, exactly as `model.py` calls it inside Triton; the network-only time (`Predictor`
on already prepared inputs) is reported beside it.

`--runtimes` measures the CPU runtimes of `fusion.fast` in one run: items per CPU-second (the CPU time
of the whole process, every thread included, so the figure is per core used and holds on a machine
shared with other work) at each batch size, the best batch of each, and its ratio to the fp32 torch
network at torch's best batch. `--quality` adds the test-split metrics of each runtime (the model
card's evaluation, `fusion.train.evaluate_exported`) and their differences from torch.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from fusion.data import load_fashion_mnist, load_reviews, review_splits
from fusion.fast import RUNTIMES
from fusion.preprocess import prepare_image
from fusion.serving import FusionService

DEFAULT_VERSION_DIR = Path(__file__).resolve().parents[1] / "triton_models" / "ecom_fusion" / "1"


def _png(array: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str, repeats: int, warmup: int) -> tuple[list[float], float]:
    """Wall time of each repetition, and the process CPU time of all of them together."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    cpu0 = time.process_time()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times, time.process_time() - cpu0


def _summary(timed: tuple[list[float], float], batch: int) -> dict[str, float]:
    times, cpu = timed
    ordered = sorted(times)
    return {
        "latency_ms_p50": 1000 * statistics.median(ordered),
        "latency_ms_p95": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "latency_ms_mean": 1000 * statistics.fmean(ordered),
        "items_per_second": batch / statistics.median(ordered),
        "cpu_ms_per_item": 1000 * cpu / (batch * len(times)),
        "items_per_cpu_second": batch * len(times) / max(cpu, 1e-9),
    }


def _quality(service: FusionService, seed: int = 0) -> dict[str, Any]:
    """The model card's test-split metrics, computed with this service's predictor."""
    from fusion.train import evaluate_exported

    reviews = load_reviews()
    test_rows = review_splits(reviews, seed)["test"]
    metrics, _ = evaluate_exported(
        service.predictor, reviews, test_rows, load_fashion_mnist("test"), np.random.default_rng(seed + 1)
    )
    return metrics


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif key != "n":
            out[f"{prefix}{key}"] = float(value)
    return out


def compare_runtimes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: each runtime's best network-only items per CPU-second and its ratio to torch's best."""
    table: dict[str, Any] = {}
    for mode in sorted({r["mode"] for r in results}):
        best: dict[str, dict[str, Any]] = {}
        for r in results:
            if r["mode"] != mode:
                continue
            rate = r["network_only"]["items_per_cpu_second"]
            if r["runtime"] not in best or rate > best[r["runtime"]]["items_per_cpu_second"]:
                best[r["runtime"]] = {"batch_size": r["batch_size"], "items_per_cpu_second": rate}
        base = best.get("torch", {}).get("items_per_cpu_second")
        for entry in best.values():
            entry["vs_torch"] = entry["items_per_cpu_second"] / base if base else None
        table[mode] = best
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.bench_model", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--version-dir", type=Path, default=DEFAULT_VERSION_DIR)
    p.add_argument("--modes", nargs="+", default=["text", "image", "both"], choices=["text", "image", "both"])
    p.add_argument("--output", type=Path, default=Path("runs/bench_model.json"))
    p.add_argument(
        "--runtimes", nargs="+", default=["torch"], choices=list(RUNTIMES), help="fusion.fast runtimes"
    )
    p.add_argument("--network-only", action="store_true", help="skip the serving path (decode, validate)")
    p.add_argument("--quality", action="store_true", help="test-split metrics of each runtime vs torch")
    p.add_argument(
        "--torch-metrics",
        type=Path,
        default=None,
        help="a metrics.json whose test figures stand for torch's (the training run's own evaluation of"
        " the same file through the same code): --quality then skips evaluating torch again",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()

    biggest = max(args.batch_sizes)
    reviews = load_reviews()
    test_rows = review_splits(reviews)["test"][:biggest]
    texts = [reviews.texts[i] for i in test_rows]
    fm = load_fashion_mnist("test")
    grey = [fm.images[i] for i in range(biggest)]
    pngs = [_png(g) for g in grey]

    results: list[dict[str, Any]] = []
    quality: dict[str, Any] = {}
    loads: dict[str, float] = {}
    for runtime in args.runtimes:
        t0 = time.perf_counter()
        service = FusionService(args.version_dir, args.device, runtime=runtime, threads=threads)
        loads[runtime] = time.perf_counter() - t0
        predictor = service.predictor
        prepared = [prepare_image(g, service.image_size) for g in grey]
        for mode in args.modes:
            for batch in args.batch_sizes:
                t_in = [texts[i].encode() if mode != "image" else b"" for i in range(batch)]
                i_in = [pngs[i] if mode != "text" else b"" for i in range(batch)]
                requests = [[(t_in[i], i_in[i])] for i in range(batch)]
                net_texts = [texts[i] if mode != "image" else None for i in range(batch)]
                net_images = [prepared[i] if mode != "text" else None for i in range(batch)]

                def serve(requests: Any = requests, service: FusionService = service) -> None:
                    outcomes = service.run(requests)
                    assert all(o.outputs is not None for o in outcomes)

                def network(
                    net_texts: Any = net_texts, net_images: Any = net_images, predictor: Any = predictor
                ) -> None:
                    predictor.predict(net_texts, net_images)

                record: dict[str, Any] = {"runtime": service.runtime, "mode": mode, "batch_size": batch}
                if not args.network_only:
                    record["serving_path"] = _summary(
                        _timed(serve, args.device, args.repeats, args.warmup), batch
                    )
                record["network_only"] = _summary(
                    _timed(network, args.device, args.repeats, args.warmup), batch
                )
                results.append(record)
                n = record["network_only"]
                served = (
                    f"  serving path {record['serving_path']['items_per_second']:8.1f} items/s"
                    if "serving_path" in record
                    else ""
                )
                sys.stdout.write(
                    f"{service.runtime:>16} {mode:>5} batch {batch:>4}:{served}  network p50"
                    f" {n['latency_ms_p50']:8.1f} ms {n['items_per_second']:8.1f} items/s"
                    f" {n['items_per_cpu_second']:8.1f} items/CPU-s\n"
                )
                sys.stdout.flush()
        if args.quality and service.runtime == "torch" and args.torch_metrics is not None:
            quality["torch"] = json.loads(args.torch_metrics.read_text())["model"]
            sys.stdout.write(f"{'torch':>16} test metrics: from {args.torch_metrics}\n")
        elif args.quality:
            quality[service.runtime] = _quality(service)
            sys.stdout.write(f"{service.runtime:>16} test metrics: {json.dumps(quality[service.runtime])}\n")
        del service, predictor

    comparison = compare_runtimes(results)
    for mode, best in comparison.items():
        for runtime, entry in best.items():
            ratio = f"{entry['vs_torch']:.2f}x torch" if entry["vs_torch"] else "-"
            sys.stdout.write(
                f"best {mode:>5} {runtime:>16}: batch {entry['batch_size']:>4}"
                f" {entry['items_per_cpu_second']:8.1f} items/CPU-s ({ratio})\n"
            )
    deltas: dict[str, dict[str, float]] = {}
    if "torch" in quality:
        reference = _flat(quality["torch"])
        for runtime, metrics in quality.items():
            if runtime == "torch":
                continue
            deltas[runtime] = {k: v - reference[k] for k, v in _flat(metrics).items() if k in reference}
            worst = max(deltas[runtime].items(), key=lambda kv: abs(kv[1]))
            sys.stdout.write(
                f"{runtime}: largest test-metric difference from torch {worst[0]} {worst[1]:+.4f}\n"
            )
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "version_dir": str(args.version_dir),
        "repeats": args.repeats,
        "load_seconds": loads,
        "results": results,
        "best_per_runtime": comparison,
        "quality": quality,
        "quality_minus_torch": deltas,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
