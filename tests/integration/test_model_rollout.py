"""A new model version shipped while the stream runs, on the real broker and a real Triton.

Triton serves a two-version copy of the model repository (tooling.rollout: version 2 is a copy of
version 1 under its own name), in explicit model-control mode with an admin key, started by this module
and stopped by its handle. The versions are changed with the service's own command line
(`python -m streams model ...`) while a worker process enriches a steady stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.rollout import Rollout
from streams.settings import Settings
from streams.topics import create_topics
from tooling.embedded import Broker, TritonServer
from tooling.embedded.worker import QUICK_GROUP, WorkerProcess, http_get
from tooling.promtext import metric_sum
from tooling.replay import Accounting, Collector, new_accounting, parse_ts
from tooling.rollout import SteadyStream, metrics_when_shadow_done, two_version_repository
from tooling.sample import build_sample

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO_ROOT = Path(__file__).resolve().parents[2]
V1, V2 = "ecom_fusion test (v1)", "ecom_fusion test (v2)"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("two-versions")
    repository, _ = two_version_repository(
        root / "models", serve=(1,), instances=1, names={1: V1, 2: V2}, copy_of_one=True
    )
    with TritonServer(repository, ["ecom_fusion"], log_dir=root) as server:
        yield server


def cli(server: TritonServer, *argv: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m streams model ...` against the module's Triton, as an operator runs it."""
    env = {
        **os.environ,
        "ECOM_TRITON_GRPC_URL": server.grpc_url,
        "ECOM_TRITON_ADMIN_KEY": server.admin_key if key is None else key,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams", "model", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def served(server: TritonServer) -> list[str]:
    listing = cli(server, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    return sorted(json.loads(listing.stdout)["ready"], key=int)


def serve_exactly(server: TritonServer, versions: set[str]) -> None:
    for version in sorted(versions - set(served(server))):
        done = cli(server, "load", version)
        assert done.returncode == 0, done.stdout + done.stderr
    for version in sorted(set(served(server)) - versions):
        done = cli(server, "unload", version)
        assert done.returncode == 0, done.stdout + done.stderr
    assert set(served(server)) == versions


def settings_for(broker: Broker, server: TritonServer, run: str, **overrides: Any) -> Settings:
    return Settings(
        kafka_bootstrap=broker.url,
        triton_grpc_url=server.grpc_url,
        topic_prefix=f"{run}-",
        app_id=run,
        max_message_bytes=200_000,
        **QUICK_GROUP,
        **overrides,
    )


async def collect(settings: Settings, accounting: Accounting, wait_s: float) -> Accounting:
    collector = Collector(settings)
    await collector.start()
    try:
        return await collector.collect(accounting, wait_s=wait_s, settle=2.0)
    finally:
        await collector.stop()


def test_the_command_line_needs_the_key_and_keeps_one_version(two_versions: TritonServer) -> None:
    refused = cli(two_versions, "load", "2", key="wrong-key-0123456789abcdef")
    assert refused.returncode == 2 and "admin key is missing or wrong" in refused.stderr
    without = cli(two_versions, "list", key="")
    assert without.returncode == 0 and "needs ECOM_TRITON_ADMIN_KEY" in without.stdout
    serve_exactly(two_versions, {"1"})
    last = cli(two_versions, "unload", "1")
    assert last.returncode == 2 and "only one served" in last.stderr
    listing = cli(two_versions, "list")
    assert listing.returncode == 0 and V1 in listing.stdout, listing.stdout


def test_loading_v2_then_unloading_v1_under_a_steady_stream_loses_nothing(
    broker: Broker, two_versions: TritonServer, unique_suffix: str, new_worker: Callable[..., WorkerProcess]
) -> None:
    serve_exactly(two_versions, {"1"})
    settings = settings_for(broker, two_versions, f"rollout-{unique_suffix}")  # primary: Triton's latest
    asyncio.run(create_topics(settings))
    worker = new_worker(settings).start()
    events = build_sample(
        reviews=3000,
        products=2000,
        clicks=0,
        broken=False,
        seed=11,
        max_message_bytes=settings.max_message_bytes,
    )
    marks: dict[str, float] = {}
    not_ready: list[str] = []  # the worker's /readyz answers other than 200 while the versions change

    async def watch_readiness(done: asyncio.Event) -> None:
        while not done.is_set():
            status, body = await asyncio.to_thread(http_get, f"{worker.url}/readyz")
            if status != 200:
                not_ready.append(body)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)

    async def scenario() -> tuple[list[Any], Accounting]:
        stream = SteadyStream(settings, events, rate=8.0)
        producing = asyncio.create_task(stream.run())
        changed = asyncio.Event()
        watching = asyncio.create_task(watch_readiness(changed))
        await asyncio.sleep(15)  # version 1 answers for a while
        marks["load"] = _now()
        loaded = await asyncio.to_thread(cli, two_versions, "load", "2")
        marks["loaded"] = _now()
        await asyncio.sleep(10)  # both versions served; requests without a version go to the latest
        marks["unload"] = _now()
        unloaded = await asyncio.to_thread(cli, two_versions, "unload", "1")
        marks["unloaded"] = _now()
        await asyncio.sleep(10)  # version 2 alone
        changed.set()
        await watching
        stream.stop()
        sent = await producing
        assert stream.refused == []
        accounting = new_accounting(sent)
        return [loaded, unloaded], await collect(settings, accounting, wait_s=600)

    (loaded, unloaded), accounting = asyncio.run(scenario())
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert unloaded.returncode == 0, unloaded.stdout + unloaded.stderr

    outputs = [(event, r) for event, r in accounting.records() if not r.is_dead_letter]
    versions = Counter(r.value["model"]["version"] for _, r in outputs)
    metrics = worker.metrics()
    requests = {
        outcome: sum(
            metric_sum(metrics, "ecom_inference_requests_total", kind=k, outcome=outcome)
            for k in ("review", "product")
        )
        for outcome in ("ok", "retry", "error")
    }
    dead = sum(1 for _, r in accounting.records() if r.is_dead_letter)
    took = {k: marks[f"{k}ed"] - marks[k] for k in ("load", "unload")}
    report = (
        f"sent {sum(accounting.produced.values())}, outputs {len(outputs)} {dict(versions)}, "
        f"missing {len(accounting.missing)}, dead letters {dead}, requests {requests}, "
        f"load {took['load']:.0f}s, unload {took['unload']:.0f}s, /readyz not ready {len(not_ready)} times"
    )
    print(report)
    # Every event accounted for; no good event dead-lettered; no request failed or was retried.
    assert accounting.missing == [], report + worker.tail()
    assert accounting.misrouted() == [], report
    assert requests["error"] == 0 and requests["retry"] == 0, report
    # The worker stayed ready throughout: Triton's server readiness drops during a load, the model's not.
    assert not_ready == [], not_ready[:3]
    # The version on the outputs switches: version 1 before the load, version 2 once version 1 is gone.
    assert set(versions) == {V1, V2} and min(versions.values()) > 0, report
    for _, r in outputs:
        processed = parse_ts(r.value["processed_ts"]).timestamp()
        if processed < marks["load"]:
            assert r.value["model"]["version"] == V1, r.value
        if processed > marks["unloaded"]:
            assert r.value["model"]["version"] == V2, r.value
    # The worker counted rows per version that answered.
    assert metric_sum(metrics, "ecom_model_rows_total", version="1", role="primary") > 0
    assert metric_sum(metrics, "ecom_model_rows_total", version="2", role="primary") > 0


def test_shadow_of_a_version_against_itself_agrees_and_the_canary_keeps_its_products(
    broker: Broker, two_versions: TritonServer, unique_suffix: str, new_worker: Callable[..., WorkerProcess]
) -> None:
    serve_exactly(two_versions, {"1", "2"})
    settings = settings_for(
        broker,
        two_versions,
        f"shadow-{unique_suffix}",
        model_version="1",
        shadow_version="1",
        canary_version="2",
        canary_fraction=0.4,
        live_f1_window=20,
    )
    asyncio.run(create_topics(settings))
    worker = new_worker(settings).start()
    events = build_sample(
        reviews=160, products=40, clicks=0, broken=False, seed=5, max_message_bytes=settings.max_message_bytes
    )

    async def run() -> Accounting:
        stream = SteadyStream(settings, events, rate=20.0)
        sent = await stream.run()
        return await collect(settings, new_accounting(sent), wait_s=400)

    accounting = asyncio.run(run())
    assert accounting.missing == [] and accounting.misrouted() == []
    # Canary: each product saw one version, and exactly the products the stable hash gives the canary.
    seen: dict[str, set[str]] = {}
    for _, r in accounting.records():
        seen.setdefault(r.value["product_id"], set()).add(r.value["model"]["version"])
    assert all(len(v) == 1 for v in seen.values()), seen
    rollout = Rollout("2", 0.4)
    expected = {p: V2 if rollout.route(p) == "2" else V1 for p in seen}
    assert {p: next(iter(v)) for p, v in seen.items()} == expected
    share = sum(1 for v in expected.values() if v == V2) / len(expected)
    print(f"canary: {share:.0%} of {len(expected)} products on version 2")
    assert 0 < share < 1

    # Shadow of version 1 against itself: full agreement on every aspect compared.
    metrics = metrics_when_shadow_done(worker)
    agree = metric_sum(metrics, "ecom_shadow_agreement_total", outcome="agree")
    disagree = metric_sum(metrics, "ecom_shadow_agreement_total", outcome="disagree")
    incomparable = metric_sum(metrics, "ecom_shadow_agreement_total", outcome="incomparable")
    dropped = metric_sum(metrics, "ecom_shadow_dropped_total")
    print(
        f"shadow: agree {agree:.0f}, disagree {disagree:.0f}, other {incomparable:.0f}, dropped {dropped:.0f}"
    )
    assert agree > 0 and disagree == 0 and incomparable == 0
    # Live quality per version: the primary's and the shadow's rated reviews (both version 1), the canary's.
    rated = {v: metric_sum(metrics, "ecom_live_sentiment_total", version=v) for v in ("1", "2")}
    reviews_on = Counter(
        r.value["model"]["version"] for _, r in accounting.records() if "sentiment" in r.value
    )
    assert rated["2"] == reviews_on[V2] and rated["1"] >= reviews_on[V1], (rated, reviews_on)


def _now() -> float:
    import time

    return time.time()
