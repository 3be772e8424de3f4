"""The recommender's state on `ECOM_TABLE_STORE=rocksdb://`, in the running service: a SIGKILLed worker
restarted on its data directory recovers from its local copy plus the changelogs' tail, holds exactly
what it held before, and exactly what a worker with an empty data directory restores from the changelogs
alone (the local copy never runs ahead of them: streams.faust_ext.DeliveredFirstStore).

One test, the counterpart of test_recommend_worker's kill test on the in-memory store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_recommend_worker import (
    CONFIG,
    answers,
    assert_rows_match,
    assert_same_answer,
    item_rows,
    orders_of,
    reference,
    served_items,
    state_only,
    user_state,
    wait_until,
)

from streams.recommend.engine import Click
from streams.settings import Settings
from streams.topics import create_topics
from tooling.embedded.worker import WorkerProcess
from tooling.recommend_eval.protocol import clicks_from_frame, load_orders, synthesise_clicks
from tooling.recommend_eval.through_service import click_event, wait_item_updates_applied
from tooling.replay import replay_and_collect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def instacart() -> list[Click]:
    return clicks_from_frame(synthesise_clicks(load_orders()))


def rocksdb(settings: Settings, data_dir: Path) -> Settings:
    return settings.model_copy(update={"table_store": "rocksdb://", "data_dir": str(data_dir)})


def test_rocksdb_state_survives_a_kill_from_the_local_copy_and_matches_the_changelog(
    service_settings: Callable[..., Settings],
    new_worker: Callable[..., WorkerProcess],
    instacart: list[Click],
    tmp_path: Path,
) -> None:
    settings = service_settings("rocks")
    asyncio.run(create_topics(settings))
    users = sorted({c.user_id for c in instacart}, key=lambda u: int(u[3:]))[131:134]
    part1 = orders_of(instacart, users, slice(0, 3))
    ref = reference(part1)
    assert max(len(r) for r in ref.neighbours.values()) < CONFIG.neighbour_capacity, (
        "no row may be pruned, so that the order updates arrive in cannot change it"
    )

    worker = new_worker(rocksdb(settings, tmp_path / "data-1"))
    worker.start()
    accounting = asyncio.run(
        replay_and_collect(settings, [click_event(c) for c in part1], wait_s=120, settle=0.5)
    )
    assert accounting.missing == [], worker.tail()
    asyncio.run(wait_item_updates_applied(settings, wait_s=60))

    items = sorted({c.product_id for c in part1})
    before_users = {u: user_state(worker, u) for u in users}
    before_items = {i: item_rows(worker, i) for i in items}
    for u in users:
        assert state_only(before_users[u]) == ref.users[u], u
        assert before_users[u]["out"] is not None and isinstance(before_users[u]["at"], int)
    for i in items:
        assert_rows_match(before_items[i], ref, i)
    tables = tmp_path / "data-1" / "v1" / "tables"
    assert any(tables.glob("recommend-users-*.db")), "the tables live in RocksDB on the data directory"

    worker.kill()  # SIGKILL: no flush, no commit, no goodbye
    worker.start()
    wait_until(lambda: all(user_state(worker, u) for u in users), 60, "the users table is restored")
    assert {u: user_state(worker, u) for u in users} == before_users
    assert {i: item_rows(worker, i) for i in items} == before_items

    # A worker that never saw the local copy restores the same from the changelogs alone.
    worker.stop()
    cold = new_worker(rocksdb(settings, tmp_path / "data-2"), name="cold")
    cold.start()
    wait_until(lambda: all(user_state(cold, u) for u in users), 60, "the users table is restored")
    assert {u: user_state(cold, u) for u in users} == before_users
    assert {i: item_rows(cold, i) for i in items} == before_items

    (probe, *_) = orders_of(instacart, users[:1], slice(3, 4))
    time.sleep(1.1)  # past the popular list's one-second cache
    accounting = asyncio.run(replay_and_collect(settings, [click_event(probe)], wait_s=120, settle=0.5))
    assert accounting.missing == [], cold.tail()
    answer = answers(accounting)[probe.event_id]
    assert_same_answer(answer, ref.on_click(probe))
    assert "history" in {source for _, source in served_items(answer)}, "not what an empty state gives"
