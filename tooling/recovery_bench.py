"""How long a worker takes to serve again after it is lost, for a given state size, on each table store.

`python -m tooling.recovery_bench --users 20000 --items 10000` starts the embedded broker and Triton,
then for each store (`--stores memory:// rocksdb://`):

1. fills the tables' changelogs with N users and M items in the stored format (what the worker itself
   writes: `UserState` records with the last click absorbed, `[version, row, applied]` item rows).
   The records are real: the Instacart sample replayed in process through the worker's wiring
   (`LocalRecommender`, each click with its clickstream coordinates), its 593 shoppers' records copied
   under new ids up to N, its item rows up to M (`--state-cache` keeps them for the next run);
2. cold start: a worker on an empty data directory, timed from its start until it serves: /readyz
   answers, it owns partitions, and its state pages return a sample of users and items equal to what
   was written;
3. clicks: the sample's clicks of shoppers in the state, in one burst; the worker's CPU per click and
   its resident memory;
4. restart after SIGKILL: the worker is killed and started again on the same data directory (a crashed
   container restarting in its pod), timed the same way. On memory:// it restores every table from the
   changelogs again; on rocksdb:// from its local copy plus the changelogs' tail;
5. with `--failover`: two workers (standby replicas 1), both serving (a click answered on every
   partition) and given time for their standby copies; one is SIGKILLed and a click sent at once on
   every partition: the time until the last is answered (the broker's session timeout, 6 s here, is
   part of it).

Prints one table and writes the figures as JSON (`--out`). Nothing here is imported by the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.recommend.config import RecommenderConfig
from streams.recommend.dedup import Origin
from streams.recommend.engine import Click, partition_of
from streams.settings import Settings
from streams.topics import changelog_topic, client_options, create_topics
from streams.topology import TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_USERS
from tooling.embedded.worker import QUICK_GROUP, REPO_ROOT, WorkerProcess
from tooling.procstats import cpu_seconds, rss_bytes
from tooling.recommend_eval.local import LocalRecommender
from tooling.recommend_eval.protocol import clicks_from_frame, load_orders, synthesise_clicks
from tooling.recommend_eval.through_service import click_event, wait_item_updates_applied
from tooling.replay import replay_and_collect

SAMPLE = 40  # users and items read back to decide that a worker serves
STANDBY_CATCH_UP_S = 45.0  # after both workers serve, before one is killed (a cold restore took ~40 s)


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201  (a command-line tool)


# --- the state: real records, copied up to the size asked ---------------------------------------------
@dataclass
class State:
    users: dict[str, dict[str, Any]]  # user_id -> stored record
    items: dict[str, tuple[list[Any], list[Any]]]  # item -> stored neighbour row, stored stats
    clicks: list[Click]  # the sample's clicks of shoppers whose ids are in `users`

    def bytes(self) -> dict[str, int]:
        def size(key: str, value: Any) -> int:
            return len(orjson.dumps(key)) + len(orjson.dumps(value))

        return {
            TABLE_USERS: sum(size(u, r) for u, r in self.users.items()),
            TABLE_NEIGHBOURS: sum(size(i, r) for i, (r, _) in self.items.items()),
            TABLE_ITEM_STATS: sum(size(i, s) for i, (_, s) in self.items.items()),
        }


def clickstream_partition(user: str, partitions: int) -> int:
    """The clickstream partition of a user's clicks (the default partitioner: murmur2 of the key)."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(user.encode()) & 0x7FFFFFFF) % partitions


def build_state(users: int, items: int, partitions: int, seed: int = 1) -> State:
    """The sample replayed in process through the worker's wiring (`LocalRecommender`), each click with
    its clickstream coordinates as the worker passes them; its tables as stored, the shoppers' records
    copied under new ids up to `users`, the item rows up to `items`."""
    clicks = clicks_from_frame(synthesise_clicks(load_orders()))
    ref = LocalRecommender(RecommenderConfig(), partitions=partitions)
    offsets = [0] * partitions
    for click in clicks:
        p = clickstream_partition(click.user_id, partitions)
        ref.on_click(click, rank=False, origin=Origin(p, offsets[p]))
        offsets[p] += 1
    tables = ref.tables()
    # `at` (the offset of the last click absorbed) -1: the clicks replayed later on a new clickstream
    # topic then all count as new. A real offset is a few bytes longer.
    templates = {u: dict(record) | {"at": -1} for u, record in tables[TABLE_USERS].items()}
    names = sorted(templates)
    out_users: dict[str, dict[str, Any]] = {}
    for n in range(users):
        template = names[n % len(names)]
        copy = n // len(names)
        out_users[template if copy == 0 else f"{template}-{copy}"] = templates[template]
    neighbours, stats = tables[TABLE_NEIGHBOURS], tables[TABLE_ITEM_STATS]
    rows = sorted(i for i in stats if i in neighbours)
    random.Random(seed).shuffle(rows)  # noqa: S311  (a sample, not cryptography)
    out_items: dict[str, tuple[list[Any], list[Any]]] = {}
    for n in range(items):
        item = rows[n % len(rows)]
        copy = n // len(rows)
        out_items[item if copy == 0 else f"{item}-{copy}"] = (list(neighbours[item]), list(stats[item]))
    in_state = {u for u in names if u in out_users}
    return State(out_users, out_items, [c for c in clicks if c.user_id in in_state])


async def fill_changelogs(settings: Settings, state: State) -> float:
    """Write the state into the tables' changelogs as the worker would (same keys, values, partitions)."""
    from aiokafka import AIOKafkaProducer

    started = time.perf_counter()
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=20, max_batch_size=512_000)
    await producer.start()
    try:
        p = settings.partitions
        users = changelog_topic(settings, TABLE_USERS)
        neighbours = changelog_topic(settings, TABLE_NEIGHBOURS)
        stats = changelog_topic(settings, TABLE_ITEM_STATS)
        sends = []
        for user, record in state.users.items():
            # The users table is co-partitioned with the clickstream (the default partitioner's murmur2).
            partition = clickstream_partition(user, p)
            sends.append(
                await producer.send(users, orjson.dumps(record), orjson.dumps(user), partition=partition)
            )
        for item, (row, st) in state.items.items():
            partition = partition_of(item, p)
            key = orjson.dumps(item)
            sends.append(await producer.send(neighbours, orjson.dumps(row), key, partition=partition))
            sends.append(await producer.send(stats, orjson.dumps(st), key, partition=partition))
        await asyncio.gather(*sends)
        # Each partition ends with a batch of one record (the last record written again: the same
        # state). The embedded broker reported a highwater below the end of a partition that ends in a
        # batch of many, and Faust's recovery then stopped a worker at the next rebalance
        # (ConsistencyError); the workers' own writes are mostly batches of one.
        last: dict[tuple[str, int], tuple[bytes, bytes]] = {}
        for user, record in state.users.items():
            partition = clickstream_partition(user, p)
            last[(users, partition)] = (orjson.dumps(record), orjson.dumps(user))
        for item, (row, st) in state.items.items():
            partition = partition_of(item, p)
            last[(neighbours, partition)] = (orjson.dumps(row), orjson.dumps(item))
            last[(stats, partition)] = (orjson.dumps(st), orjson.dumps(item))
        for (topic, partition), (value, key) in last.items():
            await producer.send_and_wait(topic, value, key, partition=partition)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# --- serving -------------------------------------------------------------------------------------------
def serves(worker: WorkerProcess, state: State, users: Sequence[str], items: Sequence[str]) -> bool:
    """Ready, owning partitions, and the sample of users and items read back as written."""
    if not worker.consuming():
        return False
    for user in users:
        status, body = worker.state(f"/recommend/users/{user}", timeout=10)
        if status != 200 or json.loads(body)["state"] != json.loads(orjson.dumps(state.users[user])):
            return False
    for item in items:
        status, body = worker.state(f"/recommend/items/{item}", timeout=10)
        if status != 200:
            return False
        page = json.loads(body)
        row, st = state.items[item]  # as stored: [version, value, applied]
        if page["neighbours"] != json.loads(orjson.dumps(row[1])) or page["stats"] != st[1]:
            return False
    return True


def wait_serving(
    ready: Callable[[], bool],
    started: float,
    workers: Sequence[WorkerProcess],
    wait_s: float = 600.0,
    poll_s: float = 0.2,
) -> float:
    while not probe(ready):
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} exited:\n{worker.tail()}")
        if time.perf_counter() - started > wait_s:
            raise TimeoutError(f"not serving after {wait_s:.0f}s")
        time.sleep(poll_s)
    return time.perf_counter() - started


def probe(ready: Callable[[], bool]) -> bool:
    """`ready()`, False while a worker's port does not answer yet."""
    try:
        return ready()
    except OSError:  # urllib's URLError included: the web server is not up (yet)
        return False


def start_timed(worker: WorkerProcess, ready: Callable[[], bool]) -> float:
    started = time.perf_counter()
    worker.start(wait_ready=False)
    return wait_serving(ready, started, [worker])


@dataclass
class StoreRun:
    store: str
    fill_s: float = 0.0
    cold_start_s: float = 0.0
    cold_rss_mb: float = 0.0
    clicks: int = 0
    cpu_ms_per_click: float = 0.0
    rss_after_clicks_mb: float = 0.0
    restart_after_kill_s: float = 0.0
    restart_rss_mb: float = 0.0
    local_store_mb: float = 0.0
    failover_s: float | None = None
    notes: list[str] = field(default_factory=list)


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def run_store(
    store: str, base: Settings, state: State, clicks: int, log_dir: Path, failover: bool
) -> StoreRun:
    tag = store.split(":")[0]
    settings = base.model_copy(
        update={
            "app_id": f"{base.app_id}-{tag}",
            "topic_prefix": f"{base.app_id}-{tag}-",
            "table_store": store,
            "data_dir": str(log_dir / f"{tag}-data-1"),
        }
    )
    asyncio.run(create_topics(settings))
    run = StoreRun(store)
    run.fill_s = asyncio.run(fill_changelogs(settings, state))
    say(f"[{tag}] changelogs filled in {run.fill_s:.1f}s")
    rng = random.Random(7)  # noqa: S311  (a sample, not cryptography)
    users = rng.sample(sorted(state.users), min(SAMPLE, len(state.users)))
    items = rng.sample(sorted(state.items), min(SAMPLE, len(state.items)))

    worker = WorkerProcess(settings, log_dir=log_dir, name=f"{tag}-worker")
    try:
        run.cold_start_s = start_timed(worker, lambda: serves(worker, state, users, items))
        run.cold_rss_mb = (rss_bytes(worker.pid) or 0) / 1e6
        say(f"[{tag}] cold start served after {run.cold_start_s:.1f}s, RSS {run.cold_rss_mb:.0f} MB")

        chosen = state.clicks[:clicks]
        cpu0 = cpu_seconds(worker.pid)
        accounting = asyncio.run(
            replay_and_collect(settings, [click_event(c) for c in chosen], wait_s=600, settle=0.5)
        )
        cpu1 = cpu_seconds(worker.pid)
        run.clicks = len(chosen) - len(accounting.missing)
        run.cpu_ms_per_click = 1000 * (cpu1 - cpu0) / max(1, run.clicks)
        run.rss_after_clicks_mb = (rss_bytes(worker.pid) or 0) / 1e6
        if accounting.missing:
            run.notes.append(f"{len(accounting.missing)} clicks unanswered")
        say(
            f"[{tag}] {run.clicks} clicks: {run.cpu_ms_per_click:.2f} ms CPU per click, "
            f"RSS {run.rss_after_clicks_mb:.0f} MB"
        )
        # The clicks changed the sampled shoppers and items: read back what the worker holds now.
        asyncio.run(wait_item_updates_applied(settings, wait_s=600))
        refresh(worker, state, users, items)
        time.sleep(2.0)  # past a commit interval and the changelog's last acknowledgements

        worker.kill()
        run.restart_after_kill_s = start_timed(worker, lambda: serves(worker, state, users, items))
        run.restart_rss_mb = (rss_bytes(worker.pid) or 0) / 1e6
        say(f"[{tag}] restart after SIGKILL served after {run.restart_after_kill_s:.1f}s")
        worker.stop()
        run.local_store_mb = directory_mb(Path(str(settings.data_dir)))

        if failover:
            try:
                run.failover_s = measure_failover(settings, state, log_dir, tag)
                say(f"[{tag}] failover served after {run.failover_s:.1f}s")
            except (RuntimeError, TimeoutError) as exc:  # reported with the other figures
                run.notes.append(f"failover not measured: {str(exc)[:2000]}")
                say(f"[{tag}] failover not measured: {exc}")
    finally:
        worker.stop()
    return run


def refresh(worker: WorkerProcess, state: State, users: Sequence[str], items: Sequence[str]) -> None:
    for user in users:
        status, body = worker.state(f"/recommend/users/{user}", timeout=10)
        if status == 200:
            state.users[user] = json.loads(body)["state"]
    for item in items:
        status, body = worker.state(f"/recommend/items/{item}", timeout=10)
        if status == 200:
            page = json.loads(body)
            state.items[item] = ([0, page["neighbours"]], [0, page["stats"]])  # the values compared


def measure_failover(settings: Settings, state: State, log_dir: Path, tag: str) -> float:
    """Two workers with standby replicas 1, both serving; one is SIGKILLed, and a click is sent at once
    for a shopper of every clickstream partition. The time until the last of them is answered: the
    broker noticing the loss (the session timeout), the rebalance, the survivor's recovery of the lost
    partitions (from its standby copy and the changelog), and the click itself."""

    workers = [
        WorkerProcess(
            settings.model_copy(
                update={"data_dir": str(log_dir / f"{tag}-data-{n}"), "table_standby_replicas": 1}
            ),
            log_dir=log_dir,
            name=f"{tag}-failover-{n}",
        )
        for n in (2, 3)
    ]
    probes: dict[int, str] = {}
    for user in sorted(state.users):
        probes.setdefault(clickstream_partition(user, settings.partitions), user)
    item = sorted(state.items)[0]
    try:
        # Both at once (as a deployment starts them): a worker joining a group that is already
        # consuming once crashed Faust's recovery of the global tables here (ConsistencyError).
        for worker in workers:
            worker.start(wait_ready=False)
        wait_serving(lambda: all(w.consuming() for w in workers), time.perf_counter(), workers)
        # A worker owns partitions before it has restored them: a click answered on every partition
        # shows both have (Faust processes a partition's events only once its tables are restored).
        # Then time for the standby copies, which follow, to catch up.
        warm = [
            click_event(Click(f"warm-{p}", u, f"warm-{p}", item, "view", time.time()))
            for p, u in sorted(probes.items())
        ]
        accounting = asyncio.run(replay_and_collect(settings, warm, wait_s=600, settle=0.0))
        if accounting.missing:
            raise TimeoutError("the two workers did not both serve before the failover")
        time.sleep(STANDBY_CATCH_UP_S)
        events = [
            click_event(Click(f"failover-{p}", u, f"failover-{p}", item, "view", time.time()))
            for p, u in sorted(probes.items())
        ]
        started = time.perf_counter()
        workers[0].kill()
        accounting = asyncio.run(replay_and_collect(settings, events, wait_s=300, settle=0.0))
        if accounting.missing:
            survivor = workers[1]
            state_of = "running" if survivor.alive() else f"exited:\n{survivor.tail()}"
            raise TimeoutError(
                f"{len(accounting.missing)} probe clicks unanswered after the failover; survivor {state_of}"
            )
        return time.perf_counter() - started
    finally:
        for worker in workers:
            worker.stop()


def print_report(state: State, runs: Sequence[StoreRun]) -> None:
    sizes = state.bytes()
    say(
        f"\nstate: {len(state.users):,} users ({sizes[TABLE_USERS] / 1e6:.1f} MB serialised), "
        f"{len(state.items):,} items (neighbour rows {sizes[TABLE_NEIGHBOURS] / 1e6:.1f} MB, "
        f"stats {sizes[TABLE_ITEM_STATS] / 1e6:.1f} MB)"
    )
    rows = [
        ("cold start, from the changelogs (s)", "cold_start_s", "{:.1f}"),
        ("resident memory after it (MB)", "cold_rss_mb", "{:.0f}"),
        ("worker CPU per click (ms)", "cpu_ms_per_click", "{:.2f}"),
        ("resident memory after the clicks (MB)", "rss_after_clicks_mb", "{:.0f}"),
        ("restart after SIGKILL, same data dir (s)", "restart_after_kill_s", "{:.1f}"),
        ("local store on disk (MB)", "local_store_mb", "{:.1f}"),
        ("failover to a second worker (s)", "failover_s", "{:.1f}"),
    ]
    say(f"{'':44}" + "".join(f"{r.store:>14}" for r in runs))
    for label, attr, fmt in rows:
        values = [getattr(r, attr) for r in runs]
        say(f"{label:44}" + "".join(f"{'-' if v is None else fmt.format(v):>14}" for v in values))
    for r in runs:
        for note in r.notes:
            say(f"{r.store}: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tooling.recovery_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clicks", type=int, default=2_000, help="clicks replayed to measure CPU per click")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stores", nargs="+", default=["memory://", "rocksdb://"])
    parser.add_argument("--failover", action="store_true", help="also time a two-worker failover")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument(
        "--state-cache", type=Path, default=None, help="keep the built state here (JSON) for the next run"
    )
    args = parser.parse_args(argv)

    from tooling.embedded import Broker, TritonServer

    cache = args.state_cache
    if cache is not None and cache.exists():
        saved = json.loads(cache.read_text())
        state = State(saved["users"], saved["items"], [Click(*c) for c in saved["clicks"]])
        say(f"state read from {cache}")
    else:
        say(f"building {args.users:,} users and {args.items:,} items from the Instacart sample")
        state = build_state(args.users, args.items, args.partitions)
        if cache is not None:
            clicks = [[getattr(c, f) for f in Click.__dataclass_fields__] for c in state.clicks]
            cache.write_text(json.dumps({"users": state.users, "items": state.items, "clicks": clicks}))
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ecom-recovery-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    say(f"logs and data directories in {log_dir}")
    runs: list[StoreRun] = []
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker(log_dir=log_dir))
        triton = TritonServer(REPO_ROOT / "triton_models", ["ecom_fusion"], log_dir=log_dir)
        stack.callback(triton.stop)
        triton.start(timeout=300)
        base = Settings(
            kafka_bootstrap=broker.url,
            triton_grpc_url=triton.grpc_url,
            app_id=f"recovery-{int(time.time())}",
            partitions=args.partitions,
            **QUICK_GROUP,
        )
        for store in args.stores:
            runs.append(run_store(store, base, state, args.clicks, log_dir, args.failover))
    print_report(state, runs)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        figures = {"users": len(state.users), "items": len(state.items), "bytes": state.bytes()}
        args.out.write_text(json.dumps({"state": figures, "runs": [vars(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
