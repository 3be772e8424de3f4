"""The recommender's state in the running service: recovered after a kill, shared by two workers.

Real broker, real Triton (the worker's readiness needs it), real worker processes, Instacart clicks.
A reference `LocalRecommender` runs the same clicks in this process (the service's own wiring, over
dicts): the state the service holds, reads back and answers with must match it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from streams.recommend.config import RecommenderConfig
from streams.recommend.engine import Click
from streams.settings import Settings
from streams.topics import create_topics
from tooling.embedded.worker import WorkerProcess
from tooling.recommend_eval.local import LocalRecommender
from tooling.recommend_eval.protocol import clicks_from_frame, load_orders, synthesise_clicks
from tooling.recommend_eval.through_service import click_event, wait_item_updates_applied
from tooling.replay import Accounting, replay_and_collect
from tooling.sample import build_sample

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CONFIG = RecommenderConfig()


@pytest.fixture(scope="module")
def instacart() -> list[Click]:
    """The sample's clicks in time order (one add_to_cart per order line)."""
    return clicks_from_frame(synthesise_clicks(load_orders()))


def orders_of(clicks: Sequence[Click], users: Sequence[str], orders: slice) -> list[Click]:
    """The chosen orders of each user (by their position in the user's history), in time order."""
    sessions: dict[str, list[str]] = {}
    for c in clicks:
        if c.user_id in users and c.session_id not in sessions.setdefault(c.user_id, []):
            sessions[c.user_id].append(c.session_id)
    chosen = {s for u in users for s in sessions[u][orders]}
    return [c for c in clicks if c.session_id in chosen]


def answers(accounting: Accounting) -> dict[str, dict[str, Any]]:
    """event_id -> its (first) recommendation event."""
    out = {}
    for event_id, records in accounting.received.items():
        assert not records[0].is_dead_letter, records[0].value
        out[event_id] = records[0].value
    return out


def get_json(worker: WorkerProcess, path: str) -> Any:
    status, body = worker.state(path, timeout=10)
    assert status in (200, 404), body
    return json.loads(body)


def user_state(worker: WorkerProcess, user: str) -> Any:
    return get_json(worker, f"/recommend/users/{user}")["state"]


def item_rows(worker: WorkerProcess, item: str) -> tuple[Any, Any]:
    body = get_json(worker, f"/recommend/items/{item}")
    return body["neighbours"], body["stats"]


def wait_until(condition: Any, wait_s: float, what: str) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {wait_s:.0f}s: {what}")
        time.sleep(0.25)


def reference(clicks: Sequence[Click]) -> LocalRecommender:
    ref = LocalRecommender(CONFIG, partitions=4)
    for c in clicks:
        ref.on_click(c, rank=False)
    return ref


def assert_rows_match(rows: tuple[Any, Any], ref: LocalRecommender, item: str) -> None:
    neighbours, stats = rows
    assert stats == pytest.approx(ref.stats[item]), item
    expected = ref.neighbours.get(item)
    if expected:
        # Pair weights are summed in arrival order, rounded to 4 decimals at each step.
        assert neighbours.keys() == expected.keys(), item
        for nb, (count, error) in expected.items():
            assert neighbours[nb] == pytest.approx([count, error], abs=1e-3), (item, nb)
    else:
        assert not neighbours, item


@pytest.fixture
def settings(service_settings: Callable[..., Settings]) -> Settings:
    # Other workers' embeddings are indexed twice a second instead of every 5 s.
    s = service_settings("rec", embedding_sync_interval_s=0.5)
    asyncio.run(create_topics(s))
    return s


def settle(settings: Settings, workers: Sequence[WorkerProcess], ref: LocalRecommender, item: str) -> None:
    """Until the item updates sent so far are applied and every worker reads them, so that the next
    click is ranked on the same state as the reference's; then past the one-second cache of the
    popular list."""
    asyncio.run(wait_item_updates_applied(settings, wait_s=60))
    expected = pytest.approx(ref.stats[item])
    for w in workers:
        wait_until(lambda w=w: item_rows(w, item)[1] == expected, 30, f"{item} on {w.name}")
    time.sleep(1.1)


def served_items(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["product_id"], i["source"]) for i in answer["items"]]


def assert_same_answer(answer: dict[str, Any], expected: Sequence[Any] | None) -> None:
    assert expected is not None
    assert served_items(answer) == [(r.product_id, r.source) for r in expected]
    assert [i["score"] for i in answer["items"]] == pytest.approx([r.score for r in expected], abs=1e-3)


def test_state_is_recovered_from_the_changelog_after_a_kill(
    settings: Settings, new_worker: Callable[..., WorkerProcess], instacart: list[Click]
) -> None:
    users = sorted({c.user_id for c in instacart}, key=lambda u: int(u[3:]))[:3]
    part1 = orders_of(instacart, users, slice(0, 3))
    ref = reference(part1)
    assert max(len(r) for r in ref.neighbours.values()) < CONFIG.neighbour_capacity, (
        "no row may be pruned, so that the order updates arrive in cannot change it"
    )

    worker = new_worker(settings)
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
    for i in items:
        assert_rows_match(before_items[i], ref, i)

    assert worker.process is not None
    worker.process.kill()  # SIGKILL: no flush, no commit, no goodbye
    worker.start()
    # It owns partitions before it has restored them: wait for the tables to be read back.
    wait_until(lambda: all(user_state(worker, u) for u in users), 60, "the users table is restored")
    # The restarted worker restored every table from its changelog before consuming again.
    assert {u: user_state(worker, u) for u in users} == before_users
    assert {i: item_rows(worker, i) for i in items} == before_items

    # Part 2: the first add-to-cart of a shopper's next order. Its answer depends on what part 1
    # left: the shopper's history, the neighbours of the item, the popular items.
    (probe, *_) = orders_of(instacart, users[:1], slice(3, 4))
    time.sleep(1.1)  # past the popular list's one-second cache
    accounting = asyncio.run(replay_and_collect(settings, [click_event(probe)], wait_s=120, settle=0.5))
    assert accounting.missing == [], worker.tail()
    answer = answers(accounting)[probe.event_id]
    assert_same_answer(answer, ref.on_click(probe))
    # Not what an empty state would give.
    assert {"history", "cooccurrence"} <= {source for _, source in served_items(answer)}
    assert answer["latency_ms"] >= 0


def one_user_per_partition(partitions: int) -> list[str]:
    """User ids whose clicks land on each partition of the clickstream (Kafka's default partitioner)."""
    from aiokafka.partitioner import murmur2

    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        user = f"newcomer-{n}"
        found.setdefault((murmur2(user.encode()) & 0x7FFFFFFF) % partitions, user)
        n += 1
    return [found[p] for p in range(partitions)]


def test_two_workers_read_every_row_and_index_every_embedding(
    settings: Settings, new_worker: Callable[..., WorkerProcess], instacart: list[Click]
) -> None:
    first = new_worker(settings, name="worker-1")
    second = new_worker(settings, name="worker-2")
    first.start()
    second.start()
    wait_until(lambda: first.consuming() and second.consuming(), 60, "both workers own partitions")

    users = sorted({c.user_id for c in instacart}, key=lambda u: int(u[3:]))[3:11]
    clicks = orders_of(instacart, users, slice(0, 2))
    ref = reference(clicks)
    assert max(len(r) for r in ref.neighbours.values()) < CONFIG.neighbour_capacity
    accounting = asyncio.run(
        replay_and_collect(settings, [click_event(c) for c in clicks], wait_s=120, settle=0.5)
    )
    assert accounting.missing == [], first.tail() + second.tail()
    asyncio.run(wait_item_updates_applied(settings, wait_s=60))

    # Each worker wrote the rows of the partitions it owns; both must read all of them.
    items = sorted({c.product_id for c in clicks})
    wait_until(
        lambda: all(item_rows(first, i) == item_rows(second, i) for i in items),
        30,
        "both workers hold the same item rows",
    )
    for i in items:
        assert_rows_match(item_rows(first, i), ref, i)

    # Cold start: product photos enriched by Triton. Their embeddings, written by whichever worker
    # owns each product's partition, are indexed by both; a click on one brings up the others.
    products = build_sample(
        reviews=0, products=6, clicks=0, broken=False, seed=5, max_message_bytes=200_000, run="cold"
    )
    accounting = asyncio.run(replay_and_collect(settings, products, wait_s=120, settle=0.5))
    assert accounting.missing == [], first.tail() + second.tail()
    uploaded = {r.value["product_id"]: r.value["embedding"] for _, r in accounting.records()}
    wait_until(
        lambda: all(
            get_json(w, f"/recommend/items/{p}")["embedding"] for w in (first, second) for p in uploaded
        ),
        30,
        "both workers index every embedding",
    )
    for product_id, embedding in uploaded.items():
        ref.on_product(product_id, embedding)

    # One new shopper per clickstream partition, so both workers answer; one click at a time, so that
    # each is ranked on the state the reference has.
    ids = sorted(uploaded)
    for n, user in enumerate(one_user_per_partition(settings.partitions)):
        click = Click(f"cold-{n}", user, f"s-{n}", ids[n % len(ids)], "view", clicks[-1].ts + 60 * n)
        accounting = asyncio.run(replay_and_collect(settings, [click_event(click)], wait_s=120, settle=0.5))
        assert accounting.missing == [], first.tail() + second.tail()
        answer = answers(accounting)[click.event_id]
        assert_same_answer(answer, ref.on_click(click))
        assert "content" in {source for _, source in served_items(answer)}
        settle(settings, [first, second], ref, click.product_id)


def test_no_item_update_is_lost_under_load(
    settings: Settings, new_worker: Callable[..., WorkerProcess], instacart: list[Click]
) -> None:
    # A few thousand clicks in one burst: rows are rewritten while earlier versions of them are still
    # on their way through the changelog (the echo a replicated table must not apply).
    users = sorted({c.user_id for c in instacart}, key=lambda u: int(u[3:]))[11:31]
    clicks = orders_of(instacart, users, slice(0, 12))
    assert len(clicks) > 2000
    worker = new_worker(settings)
    worker.start()
    accounting = asyncio.run(
        replay_and_collect(settings, [click_event(c) for c in clicks], wait_s=240, settle=0.5)
    )
    assert accounting.missing == [], worker.tail()
    asyncio.run(wait_item_updates_applied(settings, wait_s=120))
    ref = reference(clicks)
    lost = [i for i, stats in ref.stats.items() if item_rows(worker, i)[1] != pytest.approx(stats)]
    assert lost == [], f"{len(lost)} of {len(ref.stats)} items differ from the reference"


# --- each click changes the state once, whatever is processed again ---------------------------------
def state_only(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A user's record without what makes replays harmless (last click applied, its item updates)."""
    return None if record is None else {k: v for k, v in record.items() if k not in ("at", "out")}


def burst(instacart: list[Click]) -> tuple[list[str], list[Click]]:
    """100 shoppers, two orders each, in time order: session boundaries all through the burst."""
    users = sorted({c.user_id for c in instacart}, key=lambda u: int(u[3:]))[31:131]
    return users, orders_of(instacart, users, slice(0, 2))


async def paced_burst(
    settings: Settings,
    clicks: Sequence[Click],
    during: Callable[[], Any],
    after_s: float,
) -> Accounting:
    """Produce the clicks at about 100 per second and call `during()` `after_s` seconds in (a kill, a
    worker joining); then read every output back."""
    from tooling.replay import Collector, new_accounting, produce

    events = [click_event(c) for c in clicks]
    collector = Collector(settings)
    await collector.start()
    try:
        accounting = new_accounting(events)

        async def paced() -> None:
            for i in range(0, len(events), 10):
                await produce(settings, events[i : i + 10])
                await asyncio.sleep(0.1)

        producing = asyncio.ensure_future(paced())
        started = time.monotonic()
        while time.monotonic() - started < after_s:
            await collector.collect(accounting, wait_s=0.2, stop_when_complete=False)
        assert not producing.done(), "the fault must land mid-burst"
        await asyncio.to_thread(during)
        await producing
        return await collector.collect(accounting, wait_s=240, settle=3.0)
    finally:
        await collector.stop()


def assert_applied_once(
    workers: Sequence[WorkerProcess], users: Sequence[str], clicks: Sequence[Click], settings: Settings
) -> None:
    asyncio.run(wait_item_updates_applied(settings, wait_s=120))
    ref = reference(clicks)
    reader = workers[-1]
    doubled = [u for u in users if state_only(user_state(reader, u)) != ref.users[u]]
    assert doubled == [], f"{len(doubled)} of {len(users)} shoppers differ from their clicks applied once"
    items = sorted(ref.stats)
    wait_until(
        lambda: all(item_rows(reader, i)[1] == pytest.approx(ref.stats[i]) for i in items),
        60,
        "every item's stats equal those of the clicks applied once",
    )


def test_a_kill_mid_burst_changes_each_shoppers_state_once(
    settings: Settings,
    new_worker: Callable[..., WorkerProcess],
    instacart: list[Click],
    request: pytest.FixtureRequest,
) -> None:
    users, clicks = burst(instacart)
    worker = new_worker(settings)
    worker.start()
    wait_until(worker.consuming, 60, "the worker owns partitions")

    def kill_and_restart() -> None:
        assert worker.process is not None
        worker.process.kill()  # SIGKILL: the clicks since the last commit are processed again
        time.sleep(1.0)
        worker.start()

    accounting = asyncio.run(paced_burst(settings, clicks, kill_and_restart, after_s=4.0))
    assert accounting.missing == [], worker.tail()
    replayed = len(accounting.repeats)
    print(f"\nkill mid-burst: {len(clicks)} clicks of {len(users)} shoppers, {replayed} processed twice")
    assert replayed > 0, "the kill must leave clicks to process again, or this test shows nothing"
    assert_applied_once([worker], users, clicks, settings)


def test_a_rebalance_mid_burst_changes_each_shoppers_state_once(
    settings: Settings, new_worker: Callable[..., WorkerProcess], instacart: list[Click]
) -> None:
    users, clicks = burst(instacart)
    first = new_worker(settings, name="worker-1")
    second = new_worker(settings, name="worker-2")
    first.start()
    wait_until(first.consuming, 60, "the first worker owns partitions")

    def join_then_leave() -> None:
        second.start()  # partitions move: the new owner processes their uncommitted clicks again
        wait_until(second.consuming, 60, "the second worker owns partitions")
        time.sleep(2.0)
        first.stop()  # a graceful leave: its partitions move too

    accounting = asyncio.run(paced_burst(settings, clicks, join_then_leave, after_s=3.0))
    assert accounting.missing == [], first.tail() + second.tail()
    print(f"\nrebalance mid-burst: {len(clicks)} clicks, {len(accounting.repeats)} processed twice")
    assert_applied_once([second], users, clicks, settings)
