"""The whole stream: input topic -> worker -> Triton -> output topic, on the real broker.

One worker process (`python -m streams worker`, as deployed) per configuration, with its own topics and
consumer group; its settings go in as `ECOM_*` variables, so the micro-batched and the naive runs are the
same code with different settings. Two kinds of phase per event kind:

- saturate: a closed loop keeps `backlog` events produced but not yet answered, so the worker always has
  work queued; the sustained rate is the number of outputs the worker published (by their
  `processed_ts`) in a window after a warm-up, divided by its length. Every event is then drained and
  accounted for.
- paced: an open loop produces at a fixed rate (a fraction of the sustained rate) with `ts` = the send
  time; latency = the output's `processed_ts` - the event's `ts` (event to enriched, the service's own
  `ecom_end_to_end_latency_seconds`), over the events sent after a short warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.inputs import BenchInputs, Kind, Product, Review, cycle, event_fields, items
from benchmarks.stats import cpu_seconds, latency_summary, tree_cpu_seconds, windowed_rate
from benchmarks.triton_load import counter_delta, triton_counters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    """The worker settings a run varies (everything else: the service's defaults)."""

    name: str
    batch_max_size: int = 32
    batch_linger_ms: float = 10.0
    max_in_flight: int = 2
    agent_concurrency: int = 64

    @classmethod
    def service_defaults(cls, name: str = "micro-batched") -> StreamConfig:
        from streams.settings import Settings

        s = Settings()
        return cls(name, s.batch_max_size, s.batch_linger_ms, s.max_in_flight, s.agent_concurrency)

    def describe(self) -> dict[str, Any]:
        """The settings this configuration sets, by `Settings` field name."""
        return {
            "batch_max_size": self.batch_max_size,
            "batch_linger_ms": self.batch_linger_ms,
            "max_in_flight": self.max_in_flight,
            "agent_concurrency": self.agent_concurrency,
        }


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Phase:
    name: str
    kind: Kind
    started: float = field(default_factory=time.time)
    sent: int = 0
    outputs: list[tuple[float, float]] = field(default_factory=list)  # (processed_ts, source_ts)
    dead: Counter[str] = field(default_factory=Counter)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def received(self) -> int:
        return len(self.outputs) + sum(self.dead.values())


class Traffic:
    """A producer for the input topics and a reader of the output and dead-letter topics."""

    def __init__(self, settings: Any, inputs: BenchInputs) -> None:
        from streams.topics import TopicNames

        self.settings = settings
        self.names = TopicNames.from_settings(settings)
        self.inputs = inputs
        self.phases: dict[str, Phase] = {}
        self._sources = {kind: cycle(list(items(inputs, kind))) for kind in ("review", "product")}
        self._fields: dict[int, dict[str, Any]] = {}
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._deliveries: list[asyncio.Future[Any]] = []
        self.delivery_errors: list[str] = []
        self.unattributed = 0

    def topic(self, kind: Kind) -> str:
        return self.names.reviews if kind == "review" else self.names.product_uploads

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from streams.topics import client_options
        from tooling.replay import assign_from_beginning

        options = client_options(self.settings)
        self._producer = AIOKafkaProducer(
            **options,
            acks="all",
            linger_ms=0,
            max_request_size=4_000_000,
            compression_type=self.settings.producer_compression,
        )
        await self._producer.start()
        consumer = AIOKafkaConsumer(
            **options,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=250,  # latency is read from processed_ts, not from arrival here
        )
        await consumer.start()
        topics = [self.names.review_sentiment, self.names.product_categories]
        topics += [self.names.dlq(self.names.reviews), self.names.dlq(self.names.product_uploads)]
        await assign_from_beginning(consumer, topics)
        self._consumer = consumer
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _read_forever(self) -> None:
        from tooling.replay import record_value

        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
            touched: set[str] = set()
            for tp, messages in batches.items():
                dead = tp.topic.endswith(".dlq")
                for m in messages:
                    value = record_value(m)  # a dead letter: what its headers say
                    event_id = str(value.get("event_id") or "")
                    phase = self.phases.get(event_id.split("-", 1)[0])
                    if phase is None:
                        self.unattributed += 1
                        continue
                    if dead:
                        phase.dead[str(value["error"]["type"])] += 1
                    else:
                        phase.outputs.append((parse_ts(value["processed_ts"]), parse_ts(value["source_ts"])))
                    touched.add(phase.name)
            for name in touched:
                self.phases[name].arrived.set()

    def new_phase(self, kind: Kind) -> Phase:
        phase = Phase(f"p{len(self.phases)}", kind)
        self.phases[phase.name] = phase
        return phase

    async def send(self, phase: Phase, n: int) -> None:
        source = self._sources[phase.kind]
        topic = self.topic(phase.kind)
        for _ in range(n):
            item: Review | Product = next(source)
            fields = self._fields.get(id(item))
            if fields is None:
                fields = self._fields[id(item)] = event_fields(item)
            value = orjson.dumps({**fields, "event_id": f"{phase.name}-{phase.sent}", "ts": now_iso()})
            key = str(fields["product_id"]).encode()
            future = await self._producer.send(topic, value, key=key)
            self._deliveries.append(future)
            phase.sent += 1
        if len(self._deliveries) > 5000:
            await self._settle()

    async def _settle(self) -> None:
        results = await asyncio.gather(*self._deliveries, return_exceptions=True)
        self._deliveries.clear()
        for r in results:
            if isinstance(r, BaseException):
                self.delivery_errors.append(f"{type(r).__name__}: {r}")

    async def drain(self, phase: Phase, wait_s: float) -> int:
        """Wait until every event of the phase has its output or dead letter; the number missing."""
        await self._settle()
        deadline = time.monotonic() + wait_s
        sent = phase.sent
        while phase.received < sent and time.monotonic() < deadline:
            phase.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(phase.arrived.wait(), 0.5)
        return max(0, sent - phase.received)


@dataclass
class Probes:
    """CPU seconds of every process taking part, and the workers' and Triton's own counters."""

    worker_pids: list[int]
    worker_metrics_urls: list[str]
    triton_pid: int | None
    triton_metrics_url: str | None
    broker_pid: int | None

    def snapshot(self, kind: Kind) -> dict[str, Any]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        batches = [worker_batches(url, kind) for url in self.worker_metrics_urls]
        snap: dict[str, Any] = {
            "time": time.time(),
            "cpu": {
                "worker": sum(cpu_seconds(pid) for pid in self.worker_pids),
                "triton": tree_cpu_seconds(self.triton_pid) if self.triton_pid else 0.0,
                "broker": cpu_seconds(self.broker_pid) if self.broker_pid else 0.0,
                "load_generator": own.ru_utime + own.ru_stime,
            },
            "worker": {k: sum(b[k] for b in batches) for k in ("requests", "rows")},
        }
        if self.triton_metrics_url:
            snap["triton"] = triton_counters(self.triton_metrics_url)
        return snap

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any], events: int) -> dict[str, Any]:
        wall = after["time"] - before["time"]
        cpu = {k: after["cpu"][k] - before["cpu"][k] for k in after["cpu"]}
        requests = after["worker"]["requests"] - before["worker"]["requests"]
        rows = after["worker"]["rows"] - before["worker"]["rows"]
        out: dict[str, Any] = {
            "wall_s": wall,
            "cpu_cores_busy": {k: v / wall for k, v in cpu.items()} if wall > 0 else {},
            "cpu_ms_per_event": {k: 1000 * v / events for k, v in cpu.items()} if events else {},
            "worker_requests": requests,
            "worker_mean_rows_per_request": rows / requests if requests else None,
        }
        if "triton" in after:
            out["triton"] = counter_delta(before["triton"], after["triton"])
        return out


def worker_batches(metrics_url: str, kind: Kind) -> dict[str, float]:
    """Inference requests and rows the worker sent for `kind` (ecom_inference_batch_size)."""
    from tooling.embedded.worker import http_get
    from tooling.promtext import metric_sum

    try:
        text = http_get(metrics_url, timeout=5)[1]
    except OSError:
        return {"requests": 0.0, "rows": 0.0}
    return {
        "requests": metric_sum(text, "ecom_inference_batch_size_count", kind=kind),
        "rows": metric_sum(text, "ecom_inference_batch_size_sum", kind=kind),
    }


async def saturate(
    traffic: Traffic,
    probes: Probes,
    kind: Kind,
    *,
    duration: float,
    warmup: float,
    backlog: int,
    start_timeout: float = 120.0,
    on_window: Callable[[], None] | None = None,
) -> dict[str, Any]:
    phase = traffic.new_phase(kind)
    first: float | None = None
    window_started = False
    snap0 = snap1 = None
    hard_stop = time.time() + start_timeout + warmup + duration
    while time.time() < hard_stop:
        outstanding = phase.sent - phase.received
        if outstanding < backlog:
            await traffic.send(phase, backlog - outstanding)
        if first is None and phase.outputs:
            first = min(p for p, _ in phase.outputs)
        now = time.time()
        if first is not None and not window_started and now >= first + warmup:
            window_started = True
            snap0 = probes.snapshot(kind)
            if on_window is not None:
                on_window()
        if first is not None and now >= first + warmup + duration:
            snap1 = probes.snapshot(kind)
            break
        phase.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(phase.arrived.wait(), 0.02)
    if first is None or snap0 is None or snap1 is None:
        raise RuntimeError(f"no {kind} outputs within {start_timeout:.0f}s (is the worker consuming?)")
    missing = await traffic.drain(phase, wait_s=120 + backlog / 10)
    w0 = first + warmup
    count, rate = windowed_rate((p for p, _ in phase.outputs), w0, w0 + duration)
    result = {
        "kind": kind,
        "events_per_s": rate,
        "window_s": duration,
        "outputs_in_window": count,
        "sent": phase.sent,
        "missing": missing,
        "dead_letters": dict(phase.dead),
        "backlog": backlog,
        "during_window": Probes.delta(snap0, snap1, count),
    }
    log.info("stream %s saturated: %.1f events/s (%d in %.0fs)", kind, rate, count, duration)
    return result


async def paced(
    traffic: Traffic,
    probes: Probes,
    kind: Kind,
    *,
    rate: float,
    duration: float,
    warmup: float,
) -> dict[str, Any]:
    phase = traffic.new_phase(kind)
    n = max(1, round(rate * duration))
    snap0 = probes.snapshot(kind)
    t0 = time.time()
    for i in range(n):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await traffic.send(phase, 1)
    send_s = time.time() - t0
    missing = await traffic.drain(phase, wait_s=60 + n / max(rate, 1))
    snap1 = probes.snapshot(kind)
    measured = [p - s for p, s in phase.outputs if s >= t0 + warmup]
    lat = latency_summary(measured)
    result: dict[str, Any] = {
        "kind": kind,
        "offered_events_per_s": rate,
        "sent_events_per_s": n / send_s if send_s > 0 else None,
        "sent": n,
        "missing": missing,
        "dead_letters": dict(phase.dead),
        "latency": lat,
        "resources": Probes.delta(snap0, snap1, len(phase.outputs)),
    }
    log.info(
        "stream %s at %.1f/s: p50 %.0f ms, p95 %.0f ms, p99 %.0f ms",
        kind,
        rate,
        lat["p50_ms"],
        lat["p95_ms"],
        lat["p99_ms"],
    )
    return result


@dataclass
class StreamRun:
    """One configuration: `workers` worker processes in one consumer group, their own topics."""

    config: StreamConfig
    broker: Any  # tooling.embedded.Broker
    triton: Any  # tooling.embedded.TritonServer
    run_id: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    processes: list[Any] = field(default_factory=list)  # tooling.embedded.worker.WorkerProcess
    settings: Any = None
    _datadirs: list[Path] = field(default_factory=list)

    @property
    def worker(self) -> Any:
        return self.processes[0]

    def start(self) -> None:
        from streams.settings import Settings
        from streams.topics import create_topics
        from tooling.embedded.worker import QUICK_GROUP, WorkerProcess

        tag = f"bench-{self.run_id}-{self.config.name}"
        partitions = max(4, self.workers)  # every worker owns at least one partition of each input
        self.settings = Settings(
            kafka_bootstrap=self.broker.url,
            triton_grpc_url=self.triton.grpc_url,
            topic_prefix=f"{tag}-",
            app_id=tag,
            partitions=partitions,
            # A lone worker joins its group after the rebalance timeout: keep start-up short.
            broker_rebalance_timeout_s=QUICK_GROUP["broker_rebalance_timeout_s"],
            broker_session_timeout_s=QUICK_GROUP["broker_session_timeout_s"],
            **self.config.describe(),
        )
        asyncio.run(create_topics(self.settings))
        for i in range(self.workers):
            name = f"worker-{self.config.name}" + (f"-{i}" if self.workers > 1 else "")
            # Faust keeps a data folder per app, by default in the working directory (the repository).
            datadir = Path(tempfile.mkdtemp(prefix=f"{tag}-{i}-data-"))
            self._datadirs.append(datadir)
            worker = WorkerProcess(
                self.settings,
                log_dir=self.log_dir,
                name=name,
                env={**self.extra_env, "APP_DATADIR": str(datadir)},
            )
            self.processes.append(worker)
            worker.start(timeout=240)
        if self.workers > 1:
            self._wait_for_assignment()

    def _wait_for_assignment(self, timeout: float = 120.0) -> None:
        """Until every worker owns partitions (the group has settled after the last join)."""
        deadline = time.monotonic() + timeout
        settled_since: float | None = None
        while time.monotonic() < deadline:
            if all(w.consuming() for w in self.processes):
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 2.0:
                    return
            else:
                settled_since = None
            time.sleep(0.5)
        raise RuntimeError(f"{self.workers} workers did not all get partitions within {timeout:.0f}s")

    def stop(self) -> None:
        for worker in self.processes:
            worker.stop()
        for datadir in self._datadirs:
            shutil.rmtree(datadir, ignore_errors=True)

    def probes(self) -> Probes:
        return Probes(
            worker_pids=[w.pid for w in self.processes],
            worker_metrics_urls=[f"{w.url}/metrics" for w in self.processes],
            triton_pid=self.triton.process.pid if self.triton.process.alive() else None,
            triton_metrics_url=self.triton.metrics_url,
            broker_pid=self.broker.process.pid if self.broker.process.alive() else None,
        )


def run_config(
    run: StreamRun,
    inputs: BenchInputs,
    *,
    kinds: Sequence[Kind],
    duration: float,
    warmup: float,
    backlog: int,
    fractions: Sequence[float],
    on_window: Callable[[Kind], Callable[[], None] | None] | None = None,
) -> dict[str, Any]:
    """Start the worker, saturate then pace each kind, stop the worker."""
    started = time.time()
    run.start()
    try:
        result = asyncio.run(_phases(run, inputs, kinds, duration, warmup, backlog, fractions, on_window))
    finally:
        run.stop()
    result["config"] = {"name": run.config.name, **run.config.describe()}
    result["wall_s"] = round(time.time() - started, 1)
    return result


async def _phases(
    run: StreamRun,
    inputs: BenchInputs,
    kinds: Sequence[Kind],
    duration: float,
    warmup: float,
    backlog: int,
    fractions: Sequence[float],
    on_window: Callable[[Kind], Callable[[], None] | None] | None,
) -> dict[str, Any]:
    traffic = Traffic(run.settings, inputs)
    await traffic.start()
    probes = run.probes()
    out: dict[str, Any] = {"kinds": {}}
    try:
        for kind in kinds:
            hook = on_window(kind) if on_window else None
            sat = await saturate(
                traffic, probes, kind, duration=duration, warmup=warmup, backlog=backlog, on_window=hook
            )
            latency = []
            for fraction in fractions:
                rate = fraction * sat["events_per_s"]
                point = await paced(
                    traffic, probes, kind, rate=rate, duration=duration, warmup=min(warmup, duration / 4)
                )
                point["fraction"] = fraction
                latency.append(point)
            out["kinds"][kind] = {"saturated": sat, "paced": latency}
    finally:
        await traffic.stop()
    out["delivery_errors"] = traffic.delivery_errors[:5]
    out["unattributed_records"] = traffic.unattributed
    out["workers"] = len(run.processes)
    out["load_average"] = os.getloadavg()
    return out
