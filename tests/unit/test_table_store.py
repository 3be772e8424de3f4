"""The tables on `rocksdb://` (streams.faust_ext.DeliveredFirstStore): what reaches the local copy, when,
and what a restarted worker finds there. No broker: a changelog send is acknowledged (or failed) by hand,
the way Faust's producer resolves it, and a restart is a new app on the same data directory."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP
from faust.types.tuples import RecordMetadata
from streams_fakes import FakeModel, RecordingPublisher

from streams import faust_ext
from streams.app import EnrichmentApp, create_app
from streams.recommend.engine import partition_of
from streams.settings import Settings
from streams.topology import TABLE_ITEM_STATS, TABLE_NEIGHBOURS, TABLE_USERS

PARTITIONS = 4
_offsets = itertools.count(100)


def new_app(data_dir: Path, store: str = "rocksdb://") -> EnrichmentApp:
    settings = Settings(
        kafka_bootstrap="kafka://127.0.0.1:1",
        topic_prefix="t-",
        partitions=PARTITIONS,
        table_store=store,  # type: ignore[arg-type]
        data_dir=str(data_dir),
    )
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    app.finalize()
    app.flow_control.resume()
    return app


@pytest.fixture(autouse=True)
def current_event_loop() -> Iterator[None]:
    """Faust's futures take the current event loop; a sync test has none once an async test has run."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[EnrichmentApp]]:
    """Apps made by a test; their databases are closed at the end (RocksDB locks them per process)."""
    made: list[EnrichmentApp] = []
    yield made
    for app in made:
        close(app)


def close(app: EnrichmentApp) -> None:
    for table in app.tables.values():
        store = table.data
        if isinstance(store, faust_ext.DeliveredFirstStore):
            for db in store._dbs.values():
                db.close()
            store._dbs.clear()
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


def restart(apps: list[EnrichmentApp], data_dir: Path) -> EnrichmentApp:
    """A new worker on the same data directory, its databases open as after a partition assignment."""
    for app in apps:
        close(app)
    app = new_app(data_dir)
    apps.append(app)
    for table in app.tables.values():
        for partition in range(PARTITIONS):
            table.data._db_for_partition(partition)
    return app


def ack(fut: Any) -> None:
    """What Faust's producer does when the broker acknowledges a changelog record."""
    message = fut.message
    tp = TP(message.channel.get_topic_name(), message.partition)
    fut.set_result(RecordMetadata(tp.topic, tp.partition, tp, next(_offsets)))
    message.callback(fut)


def fail(fut: Any) -> None:
    fut.set_exception(RuntimeError("broker gone"))
    fut.exception()  # as the caller awaiting it would


def changelog_tp(table: Any, partition: int) -> TP:
    return TP(table.changelog_topic.get_topic_name(), partition)


def test_the_settings_choose_the_store(tmp_path: Path, apps: list[EnrichmentApp]) -> None:
    rocks = new_app(tmp_path / "a")
    memory = new_app(tmp_path / "b", store="memory://")
    apps += [rocks, memory]
    assert rocks.conf.datadir == tmp_path / "a"
    assert all(isinstance(t.data, faust_ext.DeliveredFirstStore) for t in rocks.tables.values())
    assert all(type(t.data).__module__ == "faust.stores.memory" for t in memory.tables.values())
    assert Settings().table_store == "memory://" and Settings().table_standby_replicas == 1
    app = create_app(Settings(table_standby_replicas=2), model=FakeModel(), publisher=RecordingPublisher())
    assert app.conf.table_standby_replicas == 2


def test_a_change_reaches_the_local_copy_only_once_the_changelog_has_it(
    tmp_path: Path, apps: list[EnrichmentApp]
) -> None:
    app = new_app(tmp_path)
    apps.append(app)
    table = app.tables[TABLE_NEIGHBOURS]
    pending = faust_ext.track_writes()
    table["chips"] = [1, {"salsa": [1.0, 0.0]}, {"0": [1]}]
    table["salsa"] = [1, {"chips": [1.0, 0.0]}, {"0": [1]}]
    chips, _ = pending
    # Read back at once, before any acknowledgement.
    assert table.get("salsa") == [1, {"chips": [1.0, 0.0]}, {"0": [1]}]
    assert "chips" in table and "nachos" not in table
    ack(chips)
    offset = chips.result().offset

    again = restart(apps, tmp_path)
    table = again.tables[TABLE_NEIGHBOURS]
    # Acknowledged: in the local copy, its offset persisted where Faust's recovery starts from.
    assert table.get("chips") == [1, {"salsa": [1.0, 0.0]}, {"0": [1]}]
    assert table.persisted_offset(changelog_tp(table, partition_of("chips", PARTITIONS))) == offset
    # Never acknowledged (the SIGKILL came first): not in the changelog, so not in the local copy either.
    assert table.get("salsa") is None


def test_each_change_is_written_in_the_order_the_changelog_took_it(
    tmp_path: Path, apps: list[EnrichmentApp]
) -> None:
    app = new_app(tmp_path)
    apps.append(app)
    table = app.tables[TABLE_ITEM_STATS]
    pending = faust_ext.track_writes()
    table["milk"] = [1, [1.0, 1.0, 0.0, 1, 0], {"0": [5]}]
    table["milk"] = [2, [2.0, 2.0, 0.0, 2, 1], {"0": [5, 6]}]
    first, second = pending
    ack(first)
    assert table.get("milk")[0] == 2, "the newer change, still on its way, is what the worker reads"
    again = restart(apps, tmp_path)
    assert again.tables[TABLE_ITEM_STATS].get("milk") == [1, [1.0, 1.0, 0.0, 1, 0], {"0": [5]}]
    del second


def test_a_failed_changelog_write_stays_readable_but_never_reaches_the_local_copy(
    tmp_path: Path, apps: list[EnrichmentApp]
) -> None:
    app = new_app(tmp_path)
    apps.append(app)
    table = app.tables[TABLE_ITEM_STATS]
    pending = faust_ext.track_writes()
    table["milk"] = [1, [1.0, 1.0, 0.0, 1, 0], {}]
    fail(pending[0])
    assert table.get("milk")[0] == 1, "as on the in-memory store: the next write carries it again"
    table["milk"] = [2, [2.0, 2.0, 0.0, 2, 1], {}]
    ack(pending[1])
    assert table.get("milk")[0] == 2
    table["bread"] = [1, [1.0, 1.0, 0.0, 1, 0], {}]
    fail(pending[2])
    again = restart(apps, tmp_path)
    assert again.tables[TABLE_ITEM_STATS].get("milk")[0] == 2
    assert again.tables[TABLE_ITEM_STATS].get("bread") is None


def changelog_event(table: Any, key: str, value: Any, offset: int) -> Any:
    partition = partition_of(key, PARTITIONS)
    message = SimpleNamespace(
        key=orjson.dumps(key),
        value=orjson.dumps(value),
        partition=partition,
        offset=offset,
        tp=changelog_tp(table, partition),
    )
    return SimpleNamespace(key=key, value=value, message=message)


def test_replicated_records_apply_by_version_and_the_offset_moves_past_the_stale_ones(
    tmp_path: Path, apps: list[EnrichmentApp]
) -> None:
    app = new_app(tmp_path)
    apps.append(app)
    table = app.tables[TABLE_ITEM_STATS]
    table.apply_changelog_batch(
        [
            changelog_event(table, "eggs", [3, [3.0, 3.0, 0.0, 3, 0], {"1": [7]}], 10),
            changelog_event(table, "eggs", [1, [1.0, 1.0, 0.0, 1, 0], {}], 11),  # older, in the same batch
        ]
    )
    assert table.get("eggs") == [3, [3.0, 3.0, 0.0, 3, 0], {"1": [7]}]
    tp = changelog_tp(table, partition_of("eggs", PARTITIONS))
    assert table.persisted_offset(tp) == 11, "the stale record is covered by the newer copy"

    # Another worker's newer record arrives while a change of ours is still on its way: it wins, and our
    # older change, acknowledged afterwards, does not overwrite it in the local copy.
    pending = faust_ext.track_writes()
    table["eggs"] = [4, [4.0, 4.0, 0.0, 4, 0], {}]
    table.apply_changelog_batch([changelog_event(table, "eggs", [9, [9.0, 9.0, 0.0, 9, 0], {}], 12)])
    assert table.get("eggs")[0] == 9
    ack(pending[0])
    assert table.get("eggs")[0] == 9
    assert restart(apps, tmp_path).tables[TABLE_ITEM_STATS].get("eggs")[0] == 9


async def clicks_through_the_agents(app: EnrichmentApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shoppers' clicks, then the item updates they sent, through the real agents; every table write
    acknowledged as the broker would."""

    async def acknowledged() -> None:
        pending = faust_ext._pending_writes.get()
        for fut in pending or ():
            if not fut.done():
                ack(fut)

    monkeypatch.setattr(faust_ext, "delivered", acknowledged)
    publisher = app.runtime.publisher
    assert isinstance(publisher, RecordingPublisher)
    clicks = [("u1", "chips"), ("u2", "milk"), ("u1", "salsa"), ("u2", "bread"), ("u1", "milk")]
    async with app.agents["enrich-t-clickstream"].test_context() as ctx:
        for i, (user, product) in enumerate(clicks):
            click = {
                "event_id": f"c{i}",
                "user_id": user,
                "session_id": f"s-{user}",
                "product_id": product,
                "action": "add_to_cart",
                "ts": i,
            }
            await ctx.put(orjson.dumps(click), key=user.encode())
        await finished(app, lambda: len(publisher.on("t-recommendations")) == len(clicks))
    updates_topic = app.runtime.recommend.item_updates_topic
    sent = [(k, v) for t, k, v in publisher.sent if t == updates_topic]
    async with app.agents["recommend-item-updates"].test_context() as ctx:
        for key, value in sent:
            await ctx.put(orjson.dumps(value), key=key)


async def finished(app: EnrichmentApp, done: Callable[[], bool], wait_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + wait_s
    while not (done() and len(app.in_flight) == 0):
        assert asyncio.get_running_loop().time() < deadline, "the clicks were not all answered"
        await asyncio.sleep(0.01)


def stored(app: EnrichmentApp) -> dict[str, Any]:
    users = app.tables[TABLE_USERS]
    out: dict[str, Any] = {f"user {u}": users.get(u) for u in ("u1", "u2")}
    for name in (TABLE_NEIGHBOURS, TABLE_ITEM_STATS):
        out |= {f"{name} {k}": v for k, v in app.tables[name].items()}
    return out


async def test_every_record_round_trips_through_rocksdb_as_the_memory_store_holds_it(
    tmp_path: Path, apps: list[EnrichmentApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = new_app(tmp_path / "memory", store="memory://")
    rocks = new_app(tmp_path / "rocks")
    apps += [memory, rocks]
    await clicks_through_the_agents(memory, monkeypatch)
    await clicks_through_the_agents(rocks, monkeypatch)
    expected = stored(memory)
    user = expected["user u1"]
    assert {"at", "out"} <= user.keys(), "a user's record carries the last click it absorbed"
    assert expected[f"{TABLE_NEIGHBOURS} chips"][2], "a row carries the clicks it absorbed"
    restarted = restart(apps, tmp_path / "rocks")
    assert stored(restarted) == expected
    assert isinstance(restarted.tables[TABLE_USERS].data, faust_ext.DeliveredFirstStore)
    assert not isinstance(memory.tables[TABLE_USERS].data, faust_ext.DeliveredFirstStore)
