"""Batches the consumer cannot decode: the partition stops there and says so, the worker stays up.

aiokafka decodes a fetched batch only when the application reads its records, inside `getmany`. A batch
it cannot decode (a codec whose library is missing, a codec number Kafka does not define, a corrupt
payload or CRC) raises out of `getmany` into Faust's fetcher; Faust logs "We experienced a crash!" and
the worker exits without committing, so a restarted worker fetches the same batch and exits again.

The guard (`UndecodableBatchGuard`, mixed into Faust's consumer thread) wraps the records of every
fetched partition before they are read. When one cannot be decoded:

- the records of that partition before the bad batch are delivered as usual, and the partition's
  position stays at the first offset not delivered, so nothing after it is skipped or committed;
- the partition is stopped there (no more fetching); every other partition goes on;
- the worker reports it: an ERROR log line with `topic[partition]@offset`, the error and, when aiokafka
  exposes it, the batch's offset range and codec; `ecom_undecodable_batches_total` and
  `ecom_partition_stopped_offset` with topic and partition labels; `/readyz` answers 503 and names it.

A rebalance that takes the partition away releases it (its next owner fetches and reports it again).
An operator gets past it by restarting the worker once the cause is fixed (a missing codec library),
or, for a batch nothing can decode, by listing its coordinates in `ECOM_SKIP_UNDECODABLE` and
restarting: the worker then moves past that batch and writes one dead letter that records the skipped
offsets (docs/service.md, "Undecodable batches").

This extends private parts of aiokafka 0.14 (`Fetcher._records`, `FetchResult._partition_records`,
`PartitionRecords.next_fetch_offset`); the import below refuses another version.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiokafka
from faust.types import TP

from streams import metrics
from streams.deadletter import assemble
from streams.events import DeadLetter, ErrorInfo, SourceInfo
from streams.settings import Settings
from streams.topics import TopicNames, client_options

log = logging.getLogger(__name__)

if not aiokafka.__version__.startswith("0.14."):
    raise ImportError(
        f"aiokafka {aiokafka.__version__} is installed; streams.undecodable wraps the fetcher internals "
        "of 0.14.x only: re-check them before changing the pin"
    )

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
ERROR_TYPE = "UndecodableBatch"  # the dead letter's error.type for a skipped batch
_COORDS = re.compile(r"^\s*(?P<topic>[^\s\[\]]+)\[(?P<partition>\d+)\]@(?P<offset>\d+)\s*$")


@dataclass(frozen=True)
class Undecodable:
    """Where a partition stopped: the first offset not delivered, what failed, and the batch's range."""

    topic: str
    partition: int
    offset: int
    error: str
    batch_start: int | None = None  # the batch's first offset, when aiokafka exposed the batch
    batch_end: int | None = None  # one past its last offset: where reading resumes after a skip
    codec: str | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    @property
    def coords(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def describe(self) -> str:
        where = self.coords
        if self.batch_start is not None and self.batch_end is not None:
            where += f" (batch of offsets {self.batch_start}..{self.batch_end - 1}, codec {self.codec})"
        return f"{where}: {self.error}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "coords": self.coords,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "batch_start": self.batch_start,
            "batch_end": self.batch_end,
            "codec": self.codec,
        }


def parse_skip_list(text: str) -> set[tuple[str, int, int]]:
    """`ECOM_SKIP_UNDECODABLE`: comma-separated `topic[partition]@offset`, as the worker reports them."""
    wanted: set[tuple[str, int, int]] = set()
    for item in text.split(","):
        if not item.strip():
            continue
        m = _COORDS.match(item)
        if m is None:
            raise ValueError(f"{item.strip()!r} is not topic[partition]@offset")
        wanted.add((m["topic"], int(m["partition"]), int(m["offset"])))
    return wanted


class StoppedPartitions:
    """Partitions stopped at an undecodable batch, and the batches an operator asked to skip.

    Written by the consumer thread, read by the web pages: one lock around the dict.
    """

    def __init__(
        self,
        skip: Iterable[tuple[str, int, int]] = (),
        dlq_topics: Iterable[str] = (),
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self._stopped: dict[TP, Undecodable] = {}
        self._held: dict[TP, Undecodable] = {}  # skipped, until the batch's dead letter is written
        self._lock = threading.Lock()
        self.skip = set(skip)
        self.dlq_topics = set(dlq_topics)  # inputs that have a `<input>.dlq`
        self.producer_options = producer_options  # for the dead letters of skipped batches
        self.skipped: list[Undecodable] = []  # skipped batches whose dead letter is not written yet

    @classmethod
    def from_settings(cls, settings: Settings) -> StoppedPartitions:
        options = {**client_options(settings), "compression_type": settings.producer_compression}
        return cls(
            parse_skip_list(settings.skip_undecodable),
            TopicNames.from_settings(settings).inputs,
            options,
        )

    def __contains__(self, tp: object) -> bool:
        return tp in self._stopped or tp in self._held

    def __len__(self) -> int:
        return len(self._stopped) + len(self._held)

    def snapshot(self) -> list[Undecodable]:
        with self._lock:
            return sorted(self._stopped.values(), key=lambda u: (u.topic, u.partition))

    def to_skip(self, found: Undecodable) -> bool:
        """Whether an operator listed this batch in `ECOM_SKIP_UNDECODABLE` (its first undelivered
        offset, or any offset of its range)."""
        for topic, partition, offset in self.skip:
            if (topic, partition) != (found.topic, found.partition):
                continue
            if offset == found.offset:
                return True
            start, end = found.batch_start, found.batch_end
            if start is not None and end is not None and start <= offset < end:
                return True
        return False

    def handle(self, found: Undecodable) -> bool:
        """What the guard does with an undecodable batch: skip it (True) when an operator listed it and
        its end is known, else stop its partition there (False)."""
        if found.batch_end is not None and self.to_skip(found):
            self.skipping(found)
            return True
        self.stop(found)
        return False

    def stop(self, found: Undecodable) -> None:
        with self._lock:
            self._stopped[found.tp] = found
        labels = (found.topic, str(found.partition))
        metrics.UNDECODABLE_BATCHES.labels(*labels).inc()
        metrics.PARTITION_STOPPED_OFFSET.labels(*labels).set(found.offset)
        hint = (
            f"skip it with ECOM_SKIP_UNDECODABLE={found.coords} and a restart"
            if found.batch_end is not None
            else "its end is unknown, so it cannot be skipped by setting"
        )
        log.error(
            "cannot decode the batch at %s; partition stopped there, the others go on. Fix the cause and "
            "restart the worker, or %s (docs/service.md, Undecodable batches)",
            found.describe(),
            hint,
            extra={"coords": found.coords},
        )

    def skipping(self, found: Undecodable) -> None:
        metrics.UNDECODABLE_BATCHES.labels(found.topic, str(found.partition)).inc()
        log.warning(
            "skipping the undecodable batch at %s as ECOM_SKIP_UNDECODABLE asks; reading resumes at %s",
            found.describe(),
            found.batch_end,
            extra={"coords": found.coords},
        )
        self.hold(found)

    def hold(self, found: Undecodable) -> None:
        """Keep a skipped batch's partition out of fetching until its dead letter is written."""
        with self._lock:
            self._held[found.tp] = found
            self.skipped.append(found)

    def release(self, tps: Iterable[TP]) -> None:
        """Fetch these partitions again: taken away in a rebalance (their next owner fetches and reports
        them again), or a skipped batch's dead letter is written."""
        with self._lock:
            for tp in tps:
                key = TP(tp.topic, tp.partition)
                self._held.pop(key, None)
                if self._stopped.pop(key, None) is not None:
                    with contextlib.suppress(KeyError):
                        metrics.PARTITION_STOPPED_OFFSET.remove(key.topic, str(key.partition))

    def take_skipped(self) -> list[Undecodable]:
        with self._lock:
            taken, self.skipped = self.skipped, []
        return taken


def stopped_partitions(app: Any) -> StoppedPartitions:
    """The app's registry (`app.undecodable`), made empty on first use when the app has none."""
    registry = getattr(app, "undecodable", None)
    if not isinstance(registry, StoppedPartitions):
        registry = StoppedPartitions()
        app.undecodable = registry
    return registry


def dead_letter(found: Undecodable, now: datetime | None = None) -> DeadLetter:
    """The one dead letter of a skipped batch: its coordinates and range; the records themselves could
    not be read, so it carries no value and no original headers (`omitted`)."""
    end = found.batch_end if found.batch_end is not None else found.offset + 1
    message = f"offsets {found.offset}..{end - 1} skipped (ECOM_SKIP_UNDECODABLE): {found.describe()}"
    return DeadLetter(
        event_id=None,
        error=ErrorInfo(type=ERROR_TYPE, message=message[:2000], retriable=False),
        source=SourceInfo(
            topic=found.topic,
            partition=found.partition,
            offset=found.offset,
            timestamp=None,
        ),
        value_size=None,
        omitted=["value", "headers"],
        dead_lettered_ts=now or datetime.now(UTC),
    )


# --- the wrapper of aiokafka's fetched records ---------------------------------------------------------
def batch_of(exc: BaseException) -> Any:
    """The record batch aiokafka was decoding when `exc` was raised, or None.

    `PartitionRecords._unpack_records` holds it in its local `next_batch`; the traceback keeps that
    frame. Best effort: the report and a skip only need its offsets and codec.
    """
    tb: types.TracebackType | None = exc.__traceback__
    batch = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_unpack_records":
            batch = tb.tb_frame.f_locals.get("next_batch", batch)
        tb = tb.tb_next
    return batch


def error_text(exc: BaseException) -> str:
    text, name = str(exc), type(exc).__name__
    return (text if text.startswith(name) else f"{name}: {text}")[:500]  # Kafka errors name themselves


def describe_failure(tp: Any, offset: int, exc: BaseException) -> Undecodable:
    batch = batch_of(exc)
    start = end = codec = None
    if batch is not None:
        try:
            start, end = int(batch.base_offset), int(batch.next_offset)
            codec_id = int(batch.attributes) & 0x07
            codec = CODECS.get(codec_id, f"unknown ({codec_id:#04x})")
        except Exception:  # noqa: BLE001  (a header that cannot be read: report without it)
            start = end = codec = None
    return Undecodable(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        error=error_text(exc),
        batch_start=start,
        batch_end=end,
        codec=codec,
    )


class GuardedPartitionRecords:
    """Stands in for aiokafka's `PartitionRecords` in a `FetchResult`: the same records, but a batch that
    cannot be decoded ends the partition's records here instead of raising out of `getmany`.

    `FetchResult.getall` then returns what was read before the batch and sets the partition's position
    to `next_fetch_offset`: the bad batch's first offset, or the offset after it when it is skipped.
    """

    def __init__(self, tp: Any, inner: Any, on_error: Callable[[Undecodable], bool]) -> None:
        self._tp = tp
        self._inner = inner
        self._on_error = on_error  # returns True when the batch is to be skipped
        self._override: int | None = None

    @property
    def next_fetch_offset(self) -> int:
        return self._override if self._override is not None else int(self._inner.next_fetch_offset)

    @next_fetch_offset.setter
    def next_fetch_offset(self, value: int) -> None:
        self._inner.next_fetch_offset = value

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._override is not None:
            raise StopIteration
        try:
            return next(self._inner)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever decoding raised: codec, CRC, corrupt bytes)
            found = describe_failure(self._tp, int(self._inner.next_fetch_offset), exc)
            skip = self._on_error(found)
            self._override = found.batch_end if skip and found.batch_end is not None else found.offset
            raise StopIteration from None


class GuardedRecords(collections.OrderedDict[Any, Any]):
    """The fetcher's `_records` (partition -> FetchResult or FetchError): every FetchResult put in is
    guarded before anything can read it, including those that arrive while `fetched_records` waits."""

    def __init__(self, on_error: Callable[[Undecodable], bool]) -> None:
        super().__init__()
        self.on_error = on_error

    def __setitem__(self, tp: Any, value: Any) -> None:
        inner = getattr(value, "_partition_records", None)
        if inner is not None and not isinstance(inner, GuardedPartitionRecords):
            value._partition_records = GuardedPartitionRecords(tp, inner, self.on_error)
        super().__setitem__(tp, value)


def guard_fetcher(fetcher: Any, on_error: Callable[[Undecodable], bool]) -> None:
    """Make `fetcher` (an aiokafka consumer's `_fetcher`) report undecodable batches to `on_error`
    instead of raising them. Idempotent."""
    records = fetcher._records
    if isinstance(records, GuardedRecords):
        return
    guarded = GuardedRecords(on_error)
    for tp, value in list(records.items()):
        guarded[tp] = value
    fetcher._records = guarded


class UndecodableBatchGuard:
    """Mixed into Faust's aiokafka consumer thread (before it): `_fetch_records` guards the fetcher,
    leaves stopped partitions out, and writes the dead letters of skipped batches."""

    app: Any

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109  (Faust's signature)
        max_records: int | None = None,
    ) -> Any:
        stopped = stopped_partitions(self.app)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None:
            guard_fetcher(fetcher, stopped.handle)
        await write_dead_letters(stopped)  # those whose first attempt failed
        if active_partitions and len(stopped):
            active = {tp for tp in active_partitions if tp not in stopped}
            if not active:
                # Nothing left to fetch; without this wait Faust would ask again at once, in a loop.
                await asyncio.sleep(timeout or 0)
                return {}
            active_partitions = active
        records = await super()._fetch_records(  # type: ignore[misc]
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        await write_dead_letters(stopped)
        return records


async def write_dead_letters(stopped: StoppedPartitions) -> None:
    """Write the dead letters of skipped batches.

    Each is acknowledged before anything after its batch reaches Faust (so before anything past it can
    be committed): until then its partition is held, and a failed write is tried again on the next
    fetch. A producer of its own: this runs in the consumer's thread, not the app's loop.
    """
    from aiokafka import AIOKafkaProducer

    for found in stopped.take_skipped():
        if found.topic not in stopped.dlq_topics or stopped.producer_options is None:
            stopped.release([found.tp])  # not an input (no dead-letter topic): the log line says it
            continue
        producer = AIOKafkaProducer(**stopped.producer_options, acks="all")
        try:
            await producer.start()
            letter = assemble(dead_letter(found))
            await producer.send_and_wait(
                TopicNames.dlq(found.topic), letter.value, key=letter.key, headers=list(letter.headers)
            )
        except Exception as exc:  # noqa: BLE001  (the broker is away: hold the partition, try again)
            log.warning(
                "dead letter of the skipped batch at %s not written (%r); will retry", found.coords, exc
            )
            stopped.hold(found)
            continue
        finally:
            with contextlib.suppress(Exception):  # nothing here may reach Faust's fetcher
                await producer.stop()
        metrics.DEAD_LETTERS.labels(found.topic, ERROR_TYPE).inc()
        stopped.release([found.tp])
        log.info(
            "dead letter written for the skipped batch at %s", found.coords, extra={"coords": found.coords}
        )
