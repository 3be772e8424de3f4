"""`python -m benchmarks prepare|run|ann` (docs/benchmarks.md; `ann`: docs/recommendations.md)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.run import (
    DEFAULT_STREAM_SWEEP,
    DEFAULT_TRITON_LOADS,
    DEFAULT_TRITON_SWEEP,
    PARTS,
    REPO_ROOT,
    RunOptions,
    default_out,
)


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _specs(text: str) -> list[str]:
    """`;`-separated sweep points (each may hold commas); `none` for no points."""
    return [] if text.strip().lower() in ("", "none") else [x.strip() for x in text.split(";") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="write the benchmark's inputs (needs the data sets)")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--reviews", type=int, default=2000, help="held-out reviews")
    prep.add_argument("--products", type=int, default=2000, help="Fashion-MNIST test listings")
    prep.add_argument("--seed", type=int, default=0)

    sub.add_parser(
        "ann",
        add_help=False,
        help="nearest-neighbour indexes for content similarity (`python -m benchmarks ann --help`)",
    )

    run = sub.add_parser("run", help="measure model, Triton, stream and naive stream in one run")
    run.add_argument("--inputs", type=Path, help="folder from `prepare` (default: prepare into OUT/inputs)")
    run.add_argument("--out", type=Path, help="folder for results.json, results.md, results.png")
    run.add_argument("--device", default="cpu", help="in-process model device: cpu or cuda")
    run.add_argument("--triton-config-name", help="Triton custom config (configs/NAME.pbtxt), e.g. gpu")
    run.add_argument("--model-repository", type=Path, default=REPO_ROOT / "triton_models")
    run.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    run.add_argument("--kinds", default="review,product")
    run.add_argument("--duration", type=float, default=15.0, help="seconds per measured phase")
    run.add_argument("--warmup", type=float, default=3.0, help="seconds before a phase's window opens")
    run.add_argument("--sweep-duration", type=float, default=10.0, help="seconds per sweep phase")
    run.add_argument("--model-seconds", type=float, default=4.0, help="seconds per in-process batch size")
    run.add_argument("--batch-sizes", default="1,8,32,64", help="in-process batch sizes")
    run.add_argument("--model-threads", type=int, default=0, help="torch threads in-process (0: torch's)")
    run.add_argument(
        "--triton-loads",
        default=",".join(DEFAULT_TRITON_LOADS),
        help="Triton-alone load points, CONCURRENCYxROWS",
    )
    run.add_argument("--triton-sweep-loads", default="2x32,64x1")
    run.add_argument("--load-fractions", default="0.25,0.5,0.75", help="paced rates, fractions of saturated")
    run.add_argument("--backlog", type=int, default=256, help="events kept queued while saturating")
    run.add_argument("--workers", type=int, default=1, help="worker processes per stream run (one group)")
    run.add_argument(
        "--stream-sweep",
        default=";".join(DEFAULT_STREAM_SWEEP),
        help="';'-separated worker settings, e.g. 'batch=8;linger=0;inflight=4,concurrency=128'",
    )
    run.add_argument(
        "--triton-sweep",
        default=";".join(DEFAULT_TRITON_SWEEP),
        help="';'-separated Triton config changes, e.g. 'delay=0;instances=2;threads=2'",
    )
    run.add_argument("--profile-seconds", type=float, default=15.0)
    run.add_argument("--prepare-reviews", type=int, default=1000)
    run.add_argument("--prepare-products", type=int, default=1000)
    run.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra worker environment for every stream run, e.g. ECOM_LOG_LEVEL=WARNING (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ann"]:  # its own options (benchmarks.ann)
        from benchmarks.ann import main as ann_main

        return ann_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The worker and Triton's Python stub import `streams` and `fusion` from this checkout even where the
    # project is not installed (the GPU machine): they inherit this environment.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])
    if args.command == "prepare":
        from benchmarks.inputs import prepare

        inputs = prepare(args.out, reviews=args.reviews, products=args.products, seed=args.seed)
        sys.stdout.write(
            f"wrote {len(inputs.reviews)} reviews and {len(inputs.products)} listings to {args.out}\n"
        )
        return 0

    from benchmarks.run import run
    from benchmarks.stream import StreamConfig  # noqa: F401  (fail early on a broken install)
    from benchmarks.triton_load import LoadPoint
    from benchmarks.tritonconfig import TritonVariant

    worker_env = {}
    for item in args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.isupper():
            raise SystemExit(f"--worker-env {item!r}: expected NAME=VALUE (ECOM_* or a Faust variable)")
        worker_env[key] = value
    options = RunOptions(
        out=args.out or default_out(),
        inputs=args.inputs,
        device=args.device,
        triton_config_name=args.triton_config_name,
        model_repository=args.model_repository,
        parts=tuple(_list(args.parts)),
        kinds=tuple(_list(args.kinds)),  # type: ignore[arg-type]
        duration=args.duration,
        warmup=args.warmup,
        sweep_duration=args.sweep_duration,
        model_seconds=args.model_seconds,
        batch_sizes=tuple(int(x) for x in _list(args.batch_sizes)),
        model_threads=args.model_threads,
        triton_loads=tuple(LoadPoint.parse(x) for x in _list(args.triton_loads)),
        triton_sweep_loads=tuple(LoadPoint.parse(x) for x in _list(args.triton_sweep_loads)),
        load_fractions=tuple(float(x) for x in _list(args.load_fractions)),
        backlog=args.backlog,
        workers=args.workers,
        stream_sweep=tuple(_specs(args.stream_sweep)),
        triton_sweep=tuple(TritonVariant.parse(x) for x in _specs(args.triton_sweep)),
        profile_seconds=args.profile_seconds,
        prepare_reviews=args.prepare_reviews,
        prepare_products=args.prepare_products,
        worker_env=worker_env,
    )
    bad_kinds = set(options.kinds) - {"review", "product"}
    if bad_kinds:
        raise SystemExit(f"--kinds: unknown {sorted(bad_kinds)}")
    sys.stdout.write(f"results go to {options.out}\n")
    from tooling.embedded.process import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a killed benchmark still stops its servers by PID
        data = run(options)
    sys.stdout.write((options.out / "results.md").read_text())
    summary = data.get("summary", {})
    for kind, s in summary.items():
        sys.stdout.write(
            f"{kind}: pipeline efficiency (stream / model) {_ratio(s['pipeline_efficiency'])}, "
            f"micro-batched / naive {_ratio(s['microbatched_vs_naive'])}\n"
        )
    sys.stdout.write(f"wrote {options.out / 'results.json'}, results.md, results.png\n")
    return 0


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
