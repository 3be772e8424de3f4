"""A table found ahead of its changelog's reported end at a rebalance, and the consumer-lag gauge: both
read a partition's end as it really is, on the embedded broker (which reports the first offset of a
partition's last batch + 1) and on Apache Kafka.

The recovery's decision (streams.faust_ext, "table recovery"): the changelog holds the table's offset
-> recovery goes on; it does not -> an in-memory table reads again from the changelog's end, a table on
disk keeps Faust's ConsistencyError. The consumer that reads the changelog's end is replaced here; the
fault suite (tests/faults) runs the real one through rebalances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from streams_fakes import FakeModel, RecordingPublisher

from streams import faust_ext
from streams.app import EnrichmentApp, create_app
from streams.faust_ext import ReconcilingRecovery, recovery_decision
from streams.health import Health, log_end
from streams.settings import Settings
from tooling.promtext import metric_sum

CHANGELOG = TP("t-ecom-enrichment-recommend-item-stats-changelog", 2)


def faust_would_raise(offset: int, highwater: int) -> bool:
    """Faust's own check in faust.tables.recovery (recovery_consistency_check)."""
    return bool(offset and highwater and offset > highwater)


@pytest.mark.parametrize(
    ("offset", "highwater", "log_last", "on_disk", "expected"),
    [
        # Tansu: the last batch starts at 409 and ends at 410; the table applied 410.
        (410, 409, 410, False, ("under_reported", 410, 410)),
        (410, 409, 410, True, ("under_reported", 410, 410)),
        # The log lost its tail (or was made again): memory reads again from the end; disk keeps the error.
        (410, 300, 300, False, ("reread", 300, 300)),
        (410, 300, 300, True, ("inconsistent", 410, 300)),
        # The end could not be read: memory reads again from the reported end; disk keeps the error.
        (410, 409, None, False, ("reread", 409, 409)),
        (410, 409, None, True, ("inconsistent", 410, 409)),
    ],
)
def test_the_decision(
    offset: int, highwater: int, log_last: int | None, on_disk: bool, expected: tuple[str, int, int]
) -> None:
    outcome, new_offset, new_highwater = recovery_decision(offset, highwater, log_last, on_disk)
    assert (outcome, new_offset, new_highwater) == expected
    assert faust_would_raise(new_offset, new_highwater) == (outcome == "inconsistent")


@pytest.fixture(scope="module")
def app() -> Iterator[EnrichmentApp]:
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="t-")
    app = create_app(settings, model=FakeModel(), publisher=RecordingPublisher())
    yield app
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


def test_the_worker_recovers_its_tables_with_the_reconciling_recovery(app: EnrichmentApp) -> None:
    assert isinstance(app.tables.recovery, ReconcilingRecovery)


def ahead_total(table: str, outcome: str) -> float:
    from prometheus_client import generate_latest

    return metric_sum(
        generate_latest().decode(), "ecom_table_recovery_ahead_total", table=table, outcome=outcome
    )


@pytest.mark.parametrize(
    ("on_disk", "offset", "outcome", "offset_after", "highwater_after"),
    [
        # The broker reports 409 as the last offset; the changelog really ends at 410.
        (False, 410, "under_reported", 410, 410),
        (True, 410, "under_reported", 410, 410),
        # The table holds 500: the changelog lost its tail.
        (False, 500, "reread", 410, 410),
        (True, 500, "inconsistent", 500, 410),
    ],
)
async def test_a_partition_ahead_is_settled_before_faust_checks_it(
    app: EnrichmentApp,
    monkeypatch: pytest.MonkeyPatch,
    on_disk: bool,
    offset: int,
    outcome: str,
    offset_after: int,
    highwater_after: int,
) -> None:
    recovery = app.tables.recovery
    # A RocksDB store needs a database; any store but the in-memory one counts as on disk.
    store = object() if on_disk else object.__new__(faust_ext.faust_memory.Store)
    table = SimpleNamespace(name=f"stats-{outcome}-{on_disk}", data=store)
    recovery.tp_to_table[CHANGELOG] = table
    asked: list[dict[TP, int]] = []

    async def read_ends(options: dict[str, Any], reported: dict[TP, int]) -> dict[TP, int]:
        asked.append(dict(reported))
        return {CHANGELOG: 410}

    monkeypatch.setattr(faust_ext, "changelog_last_offsets", read_ends)
    quiet = TP(CHANGELOG.topic, 0)  # a partition that is not ahead is neither read nor changed
    offsets: Counter[TP] = Counter({CHANGELOG: offset, quiet: 7})
    highwaters: Counter[TP] = Counter({CHANGELOG: 409, quiet: 9})
    before = ahead_total(table.name, outcome)
    await recovery._reconcile({CHANGELOG, quiet}, offsets, highwaters, "active")
    assert asked == [{CHANGELOG: 409}]
    assert (offsets[CHANGELOG], highwaters[CHANGELOG]) == (offset_after, highwater_after)
    assert (offsets[quiet], highwaters[quiet]) == (7, 9)
    assert faust_would_raise(offsets[CHANGELOG], highwaters[CHANGELOG]) == (outcome == "inconsistent")
    assert ahead_total(table.name, outcome) == before + 1


# --- the consumer-lag gauge ---------------------------------------------------------------------------------
class LagConsumer:
    """What `Health._update_lag` reads from Faust's consumer."""

    def __init__(self, listed: dict[TP, int], fetched: dict[TP, int], committed: dict[TP, int]) -> None:
        self.listed, self.fetched = listed, fetched
        self._committed_offset = committed

    def assignment(self) -> set[TP]:
        return set(self.listed)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.listed[tp] for tp in tps}

    def highwater(self, tp: TP) -> int | None:
        if tp not in self.listed:
            raise KeyError(tp)  # aiokafka: IllegalStateError for a partition it does not own
        return self.fetched.get(tp)


def lag_of(topic: str, partition: int) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("ecom_consumer_lag", {"topic": topic, "partition": str(partition)})


async def test_lag_counts_to_the_end_the_fetches_saw_when_the_broker_reports_less() -> None:
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="lag-")
    reviews, clicks = TP("lag-reviews", 0), TP("lag-clickstream", 1)
    # Tansu: the last batch of reviews[0] holds 3..6 and ListOffsets says 4; the fetches saw 7.
    consumer = LagConsumer({reviews: 4, clicks: 10}, {reviews: 7}, {reviews: 4, clicks: 10})
    health = Health(settings, SimpleNamespace(consumer=consumer), model=None)  # type: ignore[arg-type]
    await health._update_lag()
    assert lag_of("lag-reviews", 0) == 3  # 7 - 4, where the broker's answer alone says 0
    assert lag_of("lag-clickstream", 1) == 0
    consumer._committed_offset[reviews] = 7
    await health._update_lag()
    assert lag_of("lag-reviews", 0) == 0

    # clickstream[1] moves to another worker: this one stops reporting it.
    consumer.listed.pop(clicks)
    await health._update_lag()
    assert lag_of("lag-clickstream", 1) is None
    assert lag_of("lag-reviews", 0) == 0


def test_log_end_is_the_furthest_known() -> None:
    assert log_end(4, 7) == 7
    assert log_end(9, 7) == 9  # Apache Kafka: ListOffsets is exact, a fetch may be older
    assert log_end(None, 5) == 5 and log_end(None, None) is None


# --- the input partitions are resumed only after the seek and the clearing of the agents' queues ---------
class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def note(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)

        return call

    def anote(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)

        return call


async def test_inputs_resume_only_after_the_seek_and_the_queues_clearing() -> None:
    """Records fetched before the agents' queues are cleared would be dropped and never fetched again
    (Faust's own order lost a click in the fault suite's worker-killed scenario)."""
    calls = Recorder()
    reviews, changelog = TP("reviews", 0), TP("t-ecom-enrichment-recommend-users-changelog", 0)
    consumer = SimpleNamespace(
        assignment=lambda: {reviews, changelog},
        perform_seek=calls.anote("seek"),
        resume_partitions=lambda tps: calls.calls.append(f"resume {sorted(tp.topic for tp in tps)}"),
        resume_flow=calls.note("resume_flow"),
    )
    app = SimpleNamespace(
        consumer=consumer,
        consumer_generation_id=3,
        conf=SimpleNamespace(broker_request_timeout=5),
        on_rebalance_complete=SimpleNamespace(send=calls.anote("rebalance_complete")),
        flow_control=SimpleNamespace(resume=calls.note("flow_resume (clears the queues)")),
        _fetcher=SimpleNamespace(maybe_start=calls.anote("fetcher")),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=calls.note("rebalance_end"),
    )

    async def wait(coro: Any, **_: Any) -> None:  # Recovery._wait(coro, timeout=...)
        await coro

    fake = SimpleNamespace(
        app=app,
        log=SimpleNamespace(info=lambda *a: None, warning=lambda *a: None),
        tables=SimpleNamespace(
            values=lambda: [],
            on_actives_ready=calls.note("actives"),
            on_standbys_ready=calls.note("standbys"),
        ),
        actives_for_table={},
        standbys_for_table={},
        completed=SimpleNamespace(set=calls.note("completed")),
        _set_recovery_ended=lambda: None,
        _wait=wait,
        _is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"),
    )
    await ReconcilingRecovery.on_recovery_completed(fake, 3)  # type: ignore[arg-type]
    order = calls.calls
    assert (
        order.index("seek")
        < order.index("flow_resume (clears the queues)")
        < order.index("resume ['reviews']")
    )
    assert order.index("resume ['reviews']") < order.index("resume_flow")
