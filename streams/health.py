"""Liveness, readiness and metrics on the worker's one HTTP port (ECOM_WEB_PORT).

- `/livez`: 200 while the event loop answers and every agent actor is running.
- `/readyz`: 200 when the last probe reached the broker and found Triton and the model ready, the model
  answering a real inference of a known-good row of each kind; 503 with the reason otherwise.
- `/metrics`: Prometheus text format.

`probe()` runs every `health_interval_s` (started with the runtime): it asks the broker for its cluster
metadata, Triton for server and model readiness, the model for its answer to a known-good row of each
kind (a model whose Python stub died is still "ready" to Triton, but answers nothing), and the consumer
for the log end offsets of its assigned input partitions to update `ecom_consumer_lag`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.errors import EnrichmentError
from streams.inference import known_good_row
from streams.settings import Settings
from streams.topics import TopicNames, client_options
from streams.topology import MODEL_KINDS
from streams.undecodable import stopped_partitions

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)


class Health:
    def __init__(self, settings: Settings, app: faust.App, model: Any) -> None:
        self.settings = settings
        self.app = app
        self.model = model
        self.inputs = set(TopicNames.from_settings(settings).inputs)
        self.kafka_up = False
        self.triton_up = False
        self.detail: dict[str, str] = {"kafka": "not probed yet", "triton": "not probed yet"}
        self._admin: Any = None
        self._lag_series: set[tuple[str, str]] = set()  # (topic, partition) with a lag series

    # --- probes -----------------------------------------------------------------------------
    async def probe(self) -> None:
        await asyncio.gather(self._probe_kafka(), self._probe_triton())
        try:
            await self._update_lag()
        except Exception as exc:  # noqa: BLE001  (best effort: e.g. no assignment during a rebalance)
            log.debug("consumer lag not updated: %s: %s", type(exc).__name__, exc)

    async def _probe_kafka(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        try:
            if self._admin is None:
                self._admin = AIOKafkaAdminClient(**client_options(self.settings), request_timeout_ms=5000)
                await asyncio.wait_for(self._admin.start(), 10)
            cluster = await asyncio.wait_for(self._admin.describe_cluster(), 10)
            up, detail = bool(cluster.get("brokers")), f"{len(cluster.get('brokers', []))} broker(s)"
        except Exception as exc:  # noqa: BLE001  (any failure means "not reachable now")
            up, detail = False, f"{type(exc).__name__}: {exc}"
            await self._close_admin()
        self._set("kafka", up, detail)

    async def _probe_triton(self) -> None:
        model = self.settings.triton_model
        ready = getattr(self.model, "ready", None)
        try:
            up = bool(await ready()) if ready is not None else True
            detail = "server and model ready" if up else f"model {model} not ready"
        except Exception as exc:  # noqa: BLE001
            up, detail = False, f"{type(exc).__name__}: {exc}"
        for kind in MODEL_KINDS if up else ():
            try:
                await self.model.infer([known_good_row(kind)])
            except Exception as exc:  # noqa: BLE001  (whatever it is, the model cannot answer)
                reason = exc.reason if isinstance(exc, EnrichmentError) else type(exc).__name__
                up = False
                detail = f"model {model} is loaded but fails a known-good {kind} row: {reason}: {exc}"
                break
        else:
            if up:
                detail = f"server and model ready; {model} answers a known-good row of each kind"
        self._set("triton", up, detail)

    def _set(self, dependency: str, up: bool, detail: str) -> None:
        if up != getattr(self, f"{dependency}_up"):
            (log.info if up else log.warning)("%s %s: %s", dependency, "up" if up else "down", detail)
        setattr(self, f"{dependency}_up", up)
        self.detail[dependency] = detail
        metrics.DEPENDENCY_UP.labels(dependency).set(1 if up else 0)

    async def _update_lag(self) -> None:
        """`ecom_consumer_lag` of each assigned input partition: its log end minus the committed offset.

        The end is the larger of the broker's answer to a ListOffsets request and the end its last fetch
        response stated: the embedded Tansu broker answers the first with the first offset of the
        partition's last batch + 1 (short by the rest of that batch), Apache Kafka with the true end.
        Partitions no longer assigned lose their series, so a worker never reports another's lag.
        """
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in self.inputs]
        self._forget_lag({(tp.topic, str(tp.partition)) for tp in tps})
        if not tps:
            return
        highwaters = await consumer.highwaters(*tps)
        committed = getattr(consumer, "_committed_offset", {})
        for tp in tps:
            end = log_end(highwaters.get(tp), fetched_end(consumer, tp))
            if end is None:
                continue
            done = committed.get(tp) or 0
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, end - done))
            self._lag_series.add(labels)

    def _forget_lag(self, keep: set[tuple[str, str]]) -> None:
        for labels in self._lag_series - keep:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(*labels)
        self._lag_series &= keep

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def close(self) -> None:
        await self._close_admin()

    # --- answers ------------------------------------------------------------------------------
    def alive(self) -> tuple[bool, dict[str, Any]]:
        agents: dict[str, Any] = {}
        ok = True
        for name, agent in self.app.agents.items():
            actors = list(getattr(agent, "_actors", ()))
            running = sum(1 for a in actors if a.actor_task is not None and not a.actor_task.done())
            agents[name] = {"running": running, "expected": agent.concurrency}
            # Before the worker has started its agents there is nothing to judge.
            if actors and running < len(actors):
                ok = False
        return ok, {"agents": agents}

    def assigned(self) -> int:
        """Input partitions this worker owns now (0 before it has joined its group, or when idle)."""
        try:
            return sum(1 for tp in self.app.consumer.assignment() if tp.topic in self.inputs)
        except Exception:  # noqa: BLE001  (no consumer yet)
            return 0

    def ready(self) -> tuple[bool, dict[str, Any]]:
        # Owning no partition is not "unready": a worker beyond the partition count is a hot standby.
        ok = self.kafka_up and self.triton_up
        body: dict[str, Any] = {
            "kafka": self.kafka_up,
            "triton": self.triton_up,
            "assigned_partitions": self.assigned(),
        }
        detail = dict(self.detail)
        # A partition stopped at a batch it cannot decode waits for an operator (streams.undecodable).
        stopped = stopped_partitions(self.app).snapshot()
        if stopped:
            ok = False
            body["stopped_partitions"] = [s.as_dict() for s in stopped]
            where = "; ".join(s.describe() for s in stopped)
            detail["consumer"] = f"stopped at an undecodable batch: {where}"
        return ok, {**body, "detail": detail}


def fetched_end(consumer: Any, tp: Any) -> int | None:
    """The log end the broker stated in its last fetch response for `tp` (None before one)."""
    try:
        end = consumer.highwater(tp)
    except Exception:  # noqa: BLE001  (not assigned any more, or no fetch yet)
        return None
    return int(end) if end is not None else None


def log_end(*ends: int | None) -> int | None:
    """The furthest of the ends known for a partition (each is one the log has reached)."""
    known = [e for e in ends if e is not None]
    return max(known) if known else None


def install_health_pages(app: faust.App, health: Health) -> None:
    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        ok, body = health.alive()
        return web.json({"status": "ok" if ok else "failing", **body}, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        ok, body = health.ready()
        return web.json({"status": "ready" if ok else "not ready", **body}, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
