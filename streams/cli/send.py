"""`send TOPIC FILE|-`: JSON lines into an input topic, each validated first as the worker will parse it.

Every line is parsed with the route's input schema (`streams.events.parse_event`, the worker's own
function, with `ECOM_MAX_MESSAGE_BYTES`); the report names each invalid line and why. Unless told
otherwise nothing is sent when a line is invalid: the file goes in whole or not at all. A line is sent
as it is (its bytes, without the line end), keyed like every producer of that topic must key it
(docs/events.md): reviews and listings by `product_id`, clicks by `user_id`, queries by `query_id`.
What passes here can still be dead-lettered by the worker for what only enrichment checks (an image
that does not decode, text over `ECOM_MAX_TEXT_BYTES`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from streams.cli import OperatorError
from streams.cli.kafka import start_producer
from streams.errors import EnrichmentError
from streams.events import parse_event
from streams.settings import Settings
from streams.topics import TopicNames
from streams.topology import ROUTES, Route

# The field of an input event whose value is the input record's key (docs/events.md, "Inputs").
INPUT_KEYS = {
    "reviews": "product_id",
    "product-uploads": "product_id",
    "clickstream": "user_id",
    "product-queries": "query_id",
}


@dataclass(frozen=True)
class Line:
    number: int  # 1-based, in the file
    value: bytes
    key: bytes | None = None
    error: str | None = None  # "<error type>: <message>" when the line is invalid

    @property
    def valid(self) -> bool:
        return self.error is None


def route_named(topic: str, names: TopicNames) -> Route:
    """The route of an input topic, by its name (`reviews`) or its physical name (with the prefix)."""
    for route in ROUTES:
        if topic in (route.input, names(route.input)):
            return route
    known = ", ".join(r.input for r in ROUTES)
    raise OperatorError(f"{topic!r} is not an input topic; the inputs are: {known}")


def input_key(route: Route) -> str:
    return INPUT_KEYS[route.input]


def check_lines(route: Route, lines: Iterable[bytes], max_message_bytes: int) -> list[Line]:
    """Each non-blank line, parsed as the worker parses its topic's records, with its key or its error."""
    checked = []
    field = input_key(route)
    for number, raw in enumerate(lines, start=1):
        value = raw.strip()
        if not value:
            continue
        try:
            event = parse_event(route.event, value, max_message_bytes)
        except EnrichmentError as exc:
            checked.append(Line(number, value, error=f"{exc.reason}: {exc}"))
            continue
        checked.append(Line(number, value, key=str(getattr(event, field)).encode()))
    return checked


async def produce_lines(settings: Settings, topic: str, lines: list[Line]) -> list[tuple[Line, str]]:
    """Send `lines` in order (acks=all); the lines the broker refused, with why."""
    from aiokafka.errors import KafkaError

    producer = await start_producer(settings)
    refused: list[tuple[Line, str]] = []
    try:
        pending: list[tuple[Line, Any]] = []
        for line in lines:
            try:
                pending.append((line, await producer.send(topic, line.value, key=line.key)))
            except KafkaError as exc:
                refused.append((line, f"{type(exc).__name__}: {exc}"))
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (line, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                refused.append((line, f"{type(result).__name__}: {result}"))
    finally:
        await producer.stop()
    return refused


def send_command(
    settings: Settings, topic: str, source: IO[bytes], *, dry_run: bool, skip_invalid: bool, out: IO[str]
) -> int:
    names = TopicNames.from_settings(settings)
    route = route_named(topic, names)
    physical = names(route.input)
    lines = check_lines(route, source, settings.max_message_bytes)
    valid = [line for line in lines if line.valid]
    invalid = [line for line in lines if not line.valid]
    for line in invalid:
        out.write(f"line {line.number}: invalid: {line.error}\n")
    out.write(
        f"{physical}: {len(lines)} events, {len(valid)} valid, {len(invalid)} invalid "
        f"(schema {route.event.__name__}, key {input_key(route)})\n"
    )
    if dry_run:
        out.write("dry run: nothing sent\n")
        return 1 if invalid else 0
    if invalid and not skip_invalid:
        out.write("nothing sent: fix the invalid lines, or send the valid ones with --skip-invalid\n")
        return 1
    refused = asyncio.run(produce_lines(settings, physical, valid)) if valid else []
    for line, reason in refused:
        out.write(f"line {line.number}: refused by the broker: {reason}\n")
    out.write(f"sent {len(valid) - len(refused)} to {physical}")
    out.write(f", {len(invalid)} invalid lines skipped\n" if invalid else "\n")
    return 1 if refused else 0
