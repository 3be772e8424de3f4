"""Tooling for model rollouts on the embedded default: a two-version model repository, a steady stream.

- `two_version_repository`: a copy of `triton_models/ecom_fusion` that serves a second version beside
  the first. When the project's repository has only version 1, version 2 is a byte-for-byte copy of it,
  named as such (`model_version_name@2`): the mechanism is exercised, not a better model.
- `SteadyStream`: produces events at a steady rate until told to stop, and keeps what the broker
  acknowledged, so that every event sent can be accounted for while the versions change under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.topics import TopicNames, client_options
from tooling.embedded.worker import WorkerProcess
from tooling.replay import Accounting, Collector, new_accounting
from tooling.sample import SampleEvent, build_sample, physical_topic

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "triton_models" / "ecom_fusion"
WEIGHTS = "fusion.safetensors"


def versions_with_weights(model_dir: Path = MODEL_DIR) -> list[int]:
    """The numbered version folders of the model that hold weights, in order."""
    return sorted(int(d.name) for d in model_dir.iterdir() if d.name.isdigit() and (d / WEIGHTS).exists())


def two_version_repository(
    target: Path,
    *,
    serve: Sequence[int] = (1,),
    instances: int | None = None,
    names: dict[int, str] | None = None,
    source: Path = MODEL_DIR,
    copy_of_one: bool = False,
) -> tuple[Path, dict[int, str]]:
    """A model repository under `target` with `ecom_fusion` versions 1 and 2, `serve` loaded at start.

    Version 2 is the project's own version 2 when it has one (unless `copy_of_one`: the tests' choice,
    independent of any second model), else a copy of version 1. Every version gets a name of its own
    (`model_version_name@<v>`: `names`, else the config's, else one made from the model's name and
    marked as a copy where it is one); `instances` overrides the CPU instance count (a lighter server
    for tests). Returns the repository and how each version was made, for the output."""
    model = target / "ecom_fusion"
    model.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copy2(item, model / item.name)
        elif not item.name.isdigit() and item.name != "__pycache__":
            shutil.copytree(item, model / item.name)
    have = versions_with_weights(source)
    origin = {1: "version 1 of triton_models/ecom_fusion"}
    skip = shutil.ignore_patterns("__pycache__", "*.png")
    shutil.copytree(source / "1", model / "1", ignore=skip)
    copied = 2 not in have or copy_of_one
    if not copied:
        shutil.copytree(source / "2", model / "2", ignore=skip)
        origin[2] = "version 2 of triton_models/ecom_fusion"
    else:
        shutil.copytree(source / "1", model / "2", ignore=skip)
        why = " (the repository has no version 2 yet)" if 2 not in have else ""
        origin[2] = f"a copy of version 1{why}: the same model, renumbered"
    text = (model / "config.pbtxt").read_text()
    policy = f"version_policy: {{ specific: {{ versions: [ {', '.join(str(v) for v in serve)} ] }} }}"
    text, found = re.subn(r"(?m)^version_policy:.*$", policy, text)
    if not found:
        text += policy + "\n"
    if instances is not None:
        text = re.sub(
            r"(?m)^instance_group \[.*\]$",
            f"instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]",
            text,
        )
    declared = dict(re.findall(r'key: "model_version_name(@\d+)?" value \{ string_value: "([^"]*)"', text))
    one = declared.get("@1", declared.get("", "ecom_fusion"))
    pinned = {
        1: one if "@1" in declared else f"{one} (v1)",
        2: f"{one} (v2, a copy of v1)" if copied else declared.get("@2", "ecom_fusion version 2"),
    }
    pinned |= names or {}
    text = re.sub(r'(?m)^parameters \{ key: "model_version_name@\d+".*\n', "", text)
    for version, name in sorted(pinned.items()):
        text += f'parameters {{ key: "model_version_name@{version}" value {{ string_value: "{name}" }} }}\n'
    (model / "config.pbtxt").write_text(text)
    return target, origin


class SteadyStream:
    """Events at `rate` per second, in order, until `stop()`; `sent` holds those the broker acknowledged."""

    def __init__(self, settings: Settings, events: Iterable[SampleEvent], rate: float) -> None:
        self.settings = settings
        self.events = iter(events)
        self.rate = rate
        self.sent: list[SampleEvent] = []
        self.refused: list[tuple[SampleEvent, str]] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> list[SampleEvent]:
        from aiokafka import AIOKafkaProducer

        names = TopicNames.from_settings(self.settings)
        producer = AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            linger_ms=5,
            max_request_size=max(2_000_000, self.settings.max_message_bytes * 2),
        )
        await producer.start()
        started = time.perf_counter()
        pending: list[tuple[SampleEvent, asyncio.Future[Any]]] = []
        try:
            for i, event in enumerate(self.events):
                if self._stop.is_set():
                    break
                ahead = started + i / self.rate - time.perf_counter()
                if ahead > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), ahead)
                        break
                    except TimeoutError:
                        pass
                future = await producer.send(
                    physical_topic(names, event.topic), event.render(), key=event.key
                )
                pending.append((event, future))
            results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        finally:
            await producer.stop()
        for (event, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                self.refused.append((event, f"{type(result).__name__}: {result}"))
            else:
                self.sent.append(event)
        return self.sent


# --- `python -m streams demo --rollout` ----------------------------------------------------------------
@dataclass(frozen=True)
class RolloutDemoOptions:
    reviews: int = 150  # per phase
    products: int = 50  # per phase
    rate: float = 15.0  # events/s, steady
    canary_fraction: float = 0.3
    live_f1_window: int = 50
    seed: int = 0
    timeout: float = 600
    log_dir: str | None = None


def rollout_demo_command(settings: Settings, args: Any) -> int:
    """`python -m streams demo --rollout [--rate R] [--seed S] [--timeout T] [--log-dir D]`."""
    options = RolloutDemoOptions(seed=args.seed, timeout=args.timeout, log_dir=args.log_dir)
    if args.rate:
        options = replace(options, rate=args.rate)
    return run_rollout_demo(settings, options)


def run_rollout_demo(settings: Settings, options: RolloutDemoOptions) -> int:
    """Shadow, canary, then promotion with the old version unloaded under a steady stream, on the embedded
    default with two versions of the model. Stops everything it started, also on Ctrl-C or SIGTERM."""
    from tooling.embedded.process import sigterm_as_interrupt

    with sigterm_as_interrupt():
        try:
            return _rollout_demo(settings, options)
        except KeyboardInterrupt:
            _say("\ninterrupted: stopping the worker, Triton and the broker")
            return 130


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _rollout_demo(settings: Settings, options: RolloutDemoOptions) -> int:
    from streams.rollout_cli import ModelControl
    from streams.topics import create_topics
    from tooling.embedded import Broker, TritonServer

    log_dir = Path(options.log_dir or tempfile.mkdtemp(prefix="ecom-rollout-demo-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    _say(f"ecom-enrichment rollout demo; logs in {log_dir}")
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker(log_dir=log_dir))
        _say(f"[1/6] Kafka-compatible broker (Tansu) on {broker.bootstrap}")
        repository, origin = two_version_repository(log_dir / "models", serve=(1, 2), instances=1)
        _say(f"[2/6] model repository {repository} (a temporary copy, one CPU instance per version):")
        for version, made in sorted(origin.items()):
            _say(f"      version {version}: {made}")
        triton = TritonServer(repository, ["ecom_fusion"], log_dir=log_dir)
        stack.callback(triton.stop)
        triton.start(timeout=600)
        control = ModelControl(triton.grpc_url, "ecom_fusion", triton.admin_key)
        stack.callback(control.client.close)
        names = {s.version: s.name for s in control.states() if s.state == "READY"}
        _say(f"      Triton on {triton.grpc_url}, explicit model control with an admin key; serving:")
        for served, name in sorted(names.items()):
            _say(f"      version {served} as {name!r}")
        base = settings.model_copy(
            update={
                "kafka_bootstrap": broker.url,
                "triton_grpc_url": triton.grpc_url,
                "live_f1_window": options.live_f1_window,
            }
        )
        asyncio.run(create_topics(base))
        fraction = options.canary_fraction
        phases = (
            _Phase(
                "[3/6] shadow: version 1 answers, version 2 sees every batch too (never published)",
                {"model_version": "1", "shadow_version": "2"},
            ),
            _Phase(
                f"[4/6] canary: {fraction:.0%} of the products to version 2, the others to version 1",
                {"model_version": "1", "canary_version": "2", "canary_fraction": fraction},
            ),
            _Phase(
                "[5/6] promote: version 2 answers everything; `model unload 1` mid-stream",
                {"model_version": "2"},
                unload="1",
            ),
        )
        ok = True
        for i, phase in enumerate(phases):
            _say(phase.title)
            # One consumer group throughout: each phase is a restart of the worker with new settings, and
            # takes up the stream where the previous one committed.
            worker_settings = base.model_copy(update={"app_id": "rollout-demo", **phase.settings})
            worker = WorkerProcess(worker_settings, log_dir=log_dir, name=f"worker-{i}")
            stack.callback(worker.stop)
            worker.start()
            events = build_sample(
                reviews=options.reviews,
                products=options.products,
                clicks=0,
                broken=False,
                seed=options.seed + i,
                max_message_bytes=base.max_message_bytes,
            )
            accounting = asyncio.run(_phase(worker_settings, events, options, control, phase.unload))
            metrics_text = metrics_when_shadow_done(worker, shadow=bool(phase.settings.get("shadow_version")))
            ok = _report(accounting, metrics_text, names, control) and ok
            worker.stop()
        _say("[6/6] done: every event accounted for" if ok else "[6/6] done, with events missing (above)")
        return 0 if ok else 1


def metrics_when_shadow_done(worker: WorkerProcess, wait_s: float = 60.0, *, shadow: bool = True) -> str:
    """A worker's metrics once its shadow has compared or dropped every row the primary answered (the
    side path trails the outputs), or after `wait_s`; at once without a shadow."""
    from tooling.promtext import metric_sum

    deadline = time.monotonic() + wait_s
    while True:
        text = worker.metrics()
        primary = metric_sum(text, "ecom_model_rows_total", role="primary")
        settled = metric_sum(text, "ecom_model_rows_total", role="shadow")
        settled += metric_sum(text, "ecom_shadow_dropped_total")
        if not shadow or settled >= primary or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


@dataclass(frozen=True)
class _Phase:
    title: str
    settings: dict[str, Any]  # the worker's settings in this phase
    unload: str | None = None  # a version unloaded a third of the way through the phase's stream


async def _phase(
    settings: Settings,
    events: list[SampleEvent],
    options: RolloutDemoOptions,
    control: Any,
    unload: str | None,
) -> Accounting:
    from streams.rollout_cli import change_versions

    stream = SteadyStream(settings, events, options.rate)
    producing = asyncio.create_task(stream.run())
    if unload is not None:
        await asyncio.sleep(len(events) / options.rate / 3)
        _say(f"      python -m streams model unload {unload} (while the stream goes on)")
        out = io.StringIO()
        await asyncio.to_thread(change_versions, control, settings, unload, load=False, out=out)
        for line in out.getvalue().splitlines():
            _say(f"        {line}")
    sent = await producing
    collector = Collector(settings)
    await collector.start()
    try:
        return await collector.collect(new_accounting(sent), wait_s=options.timeout, settle=1.0)
    finally:
        await collector.stop()


def _report(accounting: Accounting, metrics_text: str, names: dict[str, str], control: Any) -> bool:
    from streams.rollout import macro_f1
    from tooling.promtext import metric_sum

    outputs = [(e, r) for e, r in accounting.records() if not r.is_dead_letter]
    by_version = Counter(str(r.value["model"]["version"]) for _, r in outputs)
    dead = sum(1 for _, r in accounting.records() if r.is_dead_letter)
    produced = sum(accounting.produced.values())
    _say(
        f"      outputs by version: {', '.join(f'{v} {n}' for v, n in sorted(by_version.items()))}; "
        f"accounted for {produced - len(accounting.missing)}/{produced}, dead letters {dead}"
    )
    per_product: dict[str, set[str]] = {}
    for _, r in outputs:
        per_product.setdefault(str(r.value["product_id"]), set()).add(str(r.value["model"]["version"]))
    if len(by_version) > 1:
        mixed = sum(1 for v in per_product.values() if len(v) > 1)
        on = Counter(next(iter(v)) for v in per_product.values() if len(v) == 1)
        _say(
            f"      products: {len(per_product)}; each saw one version: {len(per_product) - mixed}, "
            f"saw both: {mixed}; " + ", ".join(f"{n} on {v}" for v, n in sorted(on.items()))
        )
    compared = metric_sum(metrics_text, "ecom_model_rows_total", role="shadow")
    if compared:
        parts = []
        for aspect in ("sentiment", "category", "embedding"):
            agree = metric_sum(metrics_text, "ecom_shadow_agreement_total", aspect=aspect, outcome="agree")
            total = agree + metric_sum(
                metrics_text, "ecom_shadow_agreement_total", aspect=aspect, outcome="disagree"
            )
            if total:
                parts.append(f"{aspect} {agree / total:.1%}")
        n = metric_sum(metrics_text, "ecom_shadow_agreement_cosine_count")
        if n:
            mean = metric_sum(metrics_text, "ecom_shadow_agreement_cosine_sum") / n
            parts.append(f"mean embedding cosine {mean:.4f}")
        dropped = metric_sum(metrics_text, "ecom_shadow_dropped_total")
        _say(f"      shadow agreement with the primary: {', '.join(parts)}")
        _say(f"      ({compared:.0f} rows compared, {dropped:.0f} dropped)")
    for version in ("1", "2"):
        counts = {
            (p, a): metric_sum(
                metrics_text, "ecom_live_sentiment_total", version=version, predicted=p, actual=a
            )
            for p in ("negative", "neutral", "positive")
            for a in ("negative", "neutral", "positive")
        }
        pairs = [pa for pa, n in counts.items() for _ in range(int(n))]
        if pairs:
            hits = sum(1 for p, a in pairs if p == a)
            _say(
                f"      live quality of version {version} ({names.get(version, '?')}): macro-F1 "
                f"{macro_f1(pairs):.3f}, accuracy {hits / len(pairs):.1%} against the star ratings "
                f"({len(pairs)} rated reviews)"
            )
    served = ", ".join(f"{s.version} {s.state}" for s in control.states())
    _say(f"      Triton now: {served}")
    return not accounting.missing and not accounting.misrouted()
