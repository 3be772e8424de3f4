"""`dlq inspect` and `dlq redrive`: what is in the dead-letter topics, and sending it back.

Both read the dead-letter topics by assignment (no consumer group, nothing committed) and select by
error type (`--type`) and by when the event was dead-lettered (`--since`, `--until`).

A re-drive produces each selected dead letter's original record back to its source topic: the value
and key exactly as they were, the original headers, and `ecom.redrive.attempts` one up (with
`ecom.redrive.origin`, the coordinates of the first failure). The worker copies both into the dead
letter of a record that fails again, so a re-drive sees how often an input has been tried:

- a dead letter whose input has been re-driven `--max-attempts` times already is not re-driven again;
- of several dead letters of one input (same origin), only the latest failure is a candidate;
- a dead letter without its value (`omitted`: an input over the size limit, an undecodable batch)
  cannot reproduce its input and is reported instead.

A re-drive does not remember earlier runs: running it twice over the same range sends the same inputs
twice, and their outputs repeat with the same `event_id` (consumers deduplicate by it, as after any
replay). The summary prints the range it covered, for the next run's `--since`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from streams.cli import OperatorError
from streams.cli.kafka import existing_topics, read_range, start_producer
from streams.cli.timerange import TimeRange
from streams.deadletter import (
    DeadLetterRecord,
    NotADeadLetter,
    coords,
    read_dead_letter,
    redrive_headers,
    rfc3339,
)
from streams.settings import Settings
from streams.topics import TopicNames
from streams.topology import ROUTES

PREVIEW_BYTES = 160


@dataclass(frozen=True)
class Stored:
    """A dead letter where it lies: its topic, partition and offset on the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    letter: DeadLetterRecord

    @property
    def coords(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Selection:
    types: frozenset[str] = frozenset()
    window: TimeRange = field(default_factory=TimeRange)

    def __contains__(self, letter: DeadLetterRecord) -> bool:
        info = letter.info
        return (not self.types or info.error.type in self.types) and info.dead_lettered_ts in self.window


def dlq_topics(settings: Settings, requested: Sequence[str]) -> list[str]:
    """Dead-letter topics by input name (`reviews`), DLQ name (`reviews.dlq`) or physical name; every
    route's when none is given."""
    names = TopicNames.from_settings(settings)
    by_name: dict[str, str] = {}
    for route in ROUTES:
        for alias in (route.input, route.dlq, names(route.input), names(route.dlq)):
            by_name[alias] = names(route.dlq)
    if not requested:
        return list(dict.fromkeys(by_name.values()))
    unknown = [t for t in requested if t not in by_name]
    if unknown:
        raise OperatorError(
            f"not a dead-letter topic: {', '.join(unknown)}; the inputs are: "
            + ", ".join(r.input for r in ROUTES)
        )
    return list(dict.fromkeys(by_name[t] for t in requested))


async def _present(settings: Settings, topics: list[str], explicit: bool) -> list[str]:
    existing = await existing_topics(settings)
    missing = [t for t in topics if t not in existing]
    if missing and explicit:
        raise OperatorError(f"no such topic: {', '.join(missing)}")
    return [t for t in topics if t in existing]


async def read_dead_letters(
    settings: Settings, topics: list[str], window: TimeRange, on_unreadable: list[str]
) -> Any:
    """Every dead letter of `topics` written in `window` (`Stored`, in order per partition); the
    records that are not dead letters are named in `on_unreadable`."""
    # A dead letter's time is when it was written, which is its record time (the producer's clock).
    async for message in read_range(settings, topics, window):
        try:
            letter = read_dead_letter(message.key, message.value, message.headers or (), message.timestamp)
        except NotADeadLetter as exc:
            on_unreadable.append(f"{message.topic}[{message.partition}]@{message.offset}: {exc}")
            continue
        yield Stored(message.topic, message.partition, message.offset, letter)


# --- inspect ---------------------------------------------------------------------------------------
def hour_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")


def preview(data: bytes | None, limit: int = PREVIEW_BYTES) -> str:
    """The start of a value or key, for a terminal: text with control characters escaped."""
    if data is None:
        return "(null)"
    text = data[:limit].decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


@dataclass
class TopicReport:
    topic: str
    count: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_hour: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    samples: list[Stored] = field(default_factory=list)

    def add(self, stored: Stored, samples: int) -> None:
        info = stored.letter.info
        self.count += 1
        self.by_type[info.error.type] += 1
        self.by_hour[hour_of(info.dead_lettered_ts)] += 1
        when = info.dead_lettered_ts
        self.first = when if self.first is None else min(self.first, when)
        self.last = when if self.last is None else max(self.last, when)
        if len(self.samples) < samples:
            self.samples.append(stored)

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "count": self.count,
            "first": rfc3339(self.first) if self.first else None,
            "last": rfc3339(self.last) if self.last else None,
            "by_type": dict(self.by_type.most_common()),
            "by_hour": dict(sorted(self.by_hour.items())),
            "samples": [sample_json(s) for s in self.samples],
        }


def sample_json(stored: Stored) -> dict[str, Any]:
    letter = stored.letter
    return {
        "at": stored.coords,
        **letter.info.model_dump(mode="json"),
        "key": preview(letter.key),
        "value": preview(letter.value) if letter.has_value else None,
        "headers": [name for name, _ in letter.original_headers],
    }


async def inspect(
    settings: Settings, topics: list[str], selection: Selection, samples: int, unreadable: list[str]
) -> list[TopicReport]:
    reports = {t: TopicReport(t) for t in topics}
    if topics:
        async for stored in read_dead_letters(settings, topics, selection.window, unreadable):
            if stored.letter in selection:
                reports[stored.topic].add(stored, samples)
    return list(reports.values())


def write_report(reports: list[TopicReport], unreadable: list[str], out: IO[str]) -> None:
    for report in reports:
        if not report.count:
            out.write(f"{report.topic}: no dead letters selected\n")
            continue
        span = f" ({rfc3339(report.first)} .. {rfc3339(report.last)})" if report.first and report.last else ""
        out.write(f"{report.topic}: {report.count} dead letters{span}\n")
        out.write("  by error type: " + ", ".join(f"{t} {n}" for t, n in report.by_type.most_common()) + "\n")
        out.write(
            "  by hour (UTC): " + ", ".join(f"{h} {n}" for h, n in sorted(report.by_hour.items())) + "\n"
        )
        out.write("  samples:\n")
        for stored in report.samples:
            info = stored.letter.info
            source = f"{info.source.topic}[{info.source.partition}]@{info.source.offset}"
            out.write(
                f"    {stored.coords} {rfc3339(info.dead_lettered_ts)} {info.error.type} from {source}, "
                f"event_id {info.event_id}, attempts {info.attempts}\n"
            )
            out.write(f"      error: {preview(info.error.message.encode(), 300)}\n")
            if stored.letter.has_value:
                out.write(f"      value: {preview(stored.letter.value)}\n")
            else:
                out.write(
                    f"      value: not kept ({', '.join(info.omitted)} left out; size {info.value_size})\n"
                )
    for line in unreadable:
        out.write(f"not a dead letter: {line}\n")


def inspect_command(
    settings: Settings,
    requested: Sequence[str],
    selection: Selection,
    *,
    samples: int,
    as_json: bool,
    out: IO[str],
) -> int:
    topics = dlq_topics(settings, requested)
    unreadable: list[str] = []

    async def run() -> list[TopicReport]:
        present = await _present(settings, topics, explicit=bool(requested))
        return await inspect(settings, present, selection, samples, unreadable)

    reports = asyncio.run(run())
    if as_json:
        document = {"topics": [r.as_json() for r in reports], "unreadable": unreadable}
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        write_report(reports, unreadable, out)
    return 0


# --- redrive ---------------------------------------------------------------------------------------
@dataclass
class RedrivePlan:
    """What a re-drive does with each selected dead letter, decided before anything is sent."""

    max_attempts: int
    inputs: frozenset[str]  # the physical input topics of this deployment
    chosen: dict[str, Stored] = field(default_factory=dict)  # origin -> the latest failure of that input
    at_cap: list[Stored] = field(default_factory=list)
    without_value: list[Stored] = field(default_factory=list)
    foreign: list[Stored] = field(default_factory=list)  # source topic not an input here
    superseded: int = 0

    def consider(self, stored: Stored) -> None:
        letter = stored.letter
        if letter.info.source.topic not in self.inputs:
            self.foreign.append(stored)
            return
        if not letter.has_value:
            self.without_value.append(stored)
            return
        origin = letter.origin
        earlier = self.chosen.get(origin)
        if earlier is not None:
            self.superseded += 1
            if _later(earlier, stored):
                return
        self.chosen[origin] = stored

    def finish(self) -> list[Stored]:
        """The dead letters to re-drive, in the order they were written per partition."""
        ready = []
        for stored in self.chosen.values():
            if stored.letter.info.attempts >= self.max_attempts:
                self.at_cap.append(stored)
            else:
                ready.append(stored)
        return ready


def _later(a: Stored, b: Stored) -> bool:
    """Whether `a` is a later failure of the same input than `b`."""
    key_a = (a.letter.info.attempts, a.letter.info.dead_lettered_ts, a.offset)
    key_b = (b.letter.info.attempts, b.letter.info.dead_lettered_ts, b.offset)
    return key_a > key_b


async def redrive(
    settings: Settings, topics: list[str], selection: Selection, plan: RedrivePlan, *, dry_run: bool
) -> tuple[list[Stored], list[tuple[Stored, str]]]:
    """Decide, then send; the dead letters re-driven (or that would be) and those the broker refused."""
    from aiokafka.errors import KafkaError

    unreadable: list[str] = []
    async for stored in read_dead_letters(settings, topics, selection.window, unreadable):
        if stored.letter in selection:
            plan.consider(stored)
    ready = plan.finish()
    if dry_run or not ready:
        return ready, []
    producer = await start_producer(settings)
    refused: list[tuple[Stored, str]] = []
    try:
        pending = []
        for stored in ready:
            letter = stored.letter
            try:
                sent = await producer.send(
                    letter.info.source.topic,
                    letter.value,
                    key=letter.key,
                    headers=list(redrive_headers(letter)),
                )
            except KafkaError as exc:
                refused.append((stored, f"{type(exc).__name__}: {exc}"))
                continue
            pending.append((stored, sent))
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (stored, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                refused.append((stored, f"{type(result).__name__}: {result}"))
    finally:
        await producer.stop()
    return ready, refused


def redrive_command(
    settings: Settings,
    requested: Sequence[str],
    selection: Selection,
    *,
    max_attempts: int,
    dry_run: bool,
    out: IO[str],
) -> int:
    topics = dlq_topics(settings, requested)
    names = TopicNames.from_settings(settings)
    plan = RedrivePlan(max_attempts, frozenset(names.inputs))

    async def run() -> tuple[list[Stored], list[tuple[Stored, str]]]:
        present = await _present(settings, topics, explicit=bool(requested))
        return await redrive(settings, present, selection, plan, dry_run=dry_run) if present else ([], [])

    ready, refused = asyncio.run(run())
    sent = len(ready) - len(refused)
    verb = "would re-drive" if dry_run else "re-drove"
    by_target = Counter(s.letter.info.source.topic for s in ready)
    by_type = Counter(s.letter.info.error.type for s in ready)
    out.write(f"{verb} {sent if not dry_run else len(ready)} dead letters")
    if ready:
        out.write(
            " to "
            + ", ".join(f"{t} {n}" for t, n in sorted(by_target.items()))
            + " ("
            + ", ".join(f"{t} {n}" for t, n in by_type.most_common())
            + ")"
        )
    out.write("\n")
    if ready:
        times = [s.letter.info.dead_lettered_ts for s in ready]
        out.write(f"  dead-lettered from {rfc3339(min(times))} to {rfc3339(max(times))}\n")
    if plan.at_cap:
        out.write(
            f"  not re-driven, re-driven {max_attempts} times already (--max-attempts): {len(plan.at_cap)}\n"
        )
        for stored in plan.at_cap[:10]:
            out.write(
                f"    {stored.coords} event_id {stored.letter.info.event_id}: "
                f"{stored.letter.info.error.type}\n"
            )
    if plan.without_value:
        out.write(f"  not re-driven, the dead letter does not hold the input: {len(plan.without_value)}\n")
        for stored in plan.without_value[:10]:
            info = stored.letter.info
            out.write(f"    {stored.coords} ({info.error.type}; the original at {coords(info.source)})\n")
    if plan.foreign:
        out.write(f"  not re-driven, source topic is not an input of this deployment: {len(plan.foreign)}\n")
    if plan.superseded:
        out.write(f"  older failures of an input that failed again later, left out: {plan.superseded}\n")
    for stored, reason in refused:
        out.write(f"  refused by the broker: {stored.coords}: {reason}\n")
    return 1 if refused else 0
