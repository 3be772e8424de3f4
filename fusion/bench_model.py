"""In-process batched inference latency / throughput of the served network, on real inputs.

    python -m fusion.bench_model --device cpu --batch-sizes 1 8 32 --output runs/bench_cpu.json
    python -m fusion.bench_model --device cuda --batch-sizes 1 8 32 128 256 --output runs/bench_gpu.json

Inputs: held-out reviews (text), Fashion-MNIST test images encoded as PNG (image), and both together.
Each batch runs the serving path `FusionService.run` (validation, decoding, preprocessing, network),
one request per row, exactly as `model.py` calls it inside Triton; the network-only time (`Predictor`
on already prepared inputs) is reported beside it.
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


def _timed(fn: Any, device: str, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], batch: int) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "latency_ms_p50": 1000 * statistics.median(ordered),
        "latency_ms_p95": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "latency_ms_mean": 1000 * statistics.fmean(ordered),
        "items_per_second": batch / statistics.median(ordered),
    }


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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    service = FusionService(args.version_dir, args.device)
    predictor = service.predictor
    biggest = max(args.batch_sizes)
    reviews = load_reviews()
    test_rows = review_splits(reviews)["test"][:biggest]
    texts = [reviews.texts[i] for i in test_rows]
    fm = load_fashion_mnist("test")
    grey = [fm.images[i] for i in range(biggest)]
    pngs = [_png(g) for g in grey]
    prepared = [prepare_image(g, service.image_size) for g in grey]

    results: list[dict[str, Any]] = []
    for mode in args.modes:
        for batch in args.batch_sizes:
            t_in = [texts[i].encode() if mode != "image" else b"" for i in range(batch)]
            i_in = [pngs[i] if mode != "text" else b"" for i in range(batch)]
            requests = [[(t_in[i], i_in[i])] for i in range(batch)]
            net_texts = [texts[i] if mode != "image" else None for i in range(batch)]
            net_images = [prepared[i] if mode != "text" else None for i in range(batch)]

            def serve(requests: Any = requests) -> None:
                outcomes = service.run(requests)
                assert all(o.outputs is not None for o in outcomes)

            def network(net_texts: Any = net_texts, net_images: Any = net_images) -> None:
                predictor.predict(net_texts, net_images)

            record = {"mode": mode, "batch_size": batch}
            record["serving_path"] = _summary(_timed(serve, args.device, args.repeats, args.warmup), batch)
            record["network_only"] = _summary(_timed(network, args.device, args.repeats, args.warmup), batch)
            results.append(record)
            s = record["serving_path"]
            sys.stdout.write(
                f"{mode:>5} batch {batch:>4}: p50 {s['latency_ms_p50']:8.1f} ms"
                f"  {s['items_per_second']:8.1f} items/s"
                f"  (network only {record['network_only']['items_per_second']:.1f} items/s)\n"
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
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
