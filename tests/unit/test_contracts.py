"""The generated contracts (tooling/contracts.py): current with the code, and true of real records.

The JSON Schemas must accept what the demo's sample sends and what the worker writes, and must agree
with the pydantic models on which inputs are valid; otherwise a consumer that trusts them is misled.
"""

from __future__ import annotations

import asyncio
import json
import typing
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import orjson
import pytest
from jsonschema import Draft7Validator
from pydantic import BaseModel, ValidationError
from streams_fakes import FakeModel, RecordingPublisher

from streams import faust_ext
from streams.app import EnrichmentApp, create_app
from streams.events import DeadLetter
from streams.settings import Settings
from streams.topology import ROUTES, route_for
from tooling import contracts
from tooling.sample import SampleEvent, build_sample

PREFIX = "t-"


@cache
def validator(name: str) -> Draft7Validator:
    schema = json.loads((contracts.SCHEMAS / f"{name}.json").read_text())
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def errors(name: str, record: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
        for e in validator(name).iter_errors(record)
    ]


@cache
def sample() -> tuple[SampleEvent, ...]:
    return tuple(
        build_sample(reviews=6, products=6, clicks=8, broken=True, max_message_bytes=1_000_000, run="c")
    )


# --- The files are current --------------------------------------------------------------------


def test_generated_contracts_are_current() -> None:
    found = list(contracts.stale(contracts.expected_files()))
    assert not found, "".join(diff for _, diff in found) + "\nrun `python -m tooling.contracts`"


def test_check_fails_on_a_stale_or_orphaned_file(tmp_path: Any) -> None:
    """The check compares for real: a schema that differs from the model is reported, and so is the
    schema of a record that no longer exists."""
    record = contracts.records()[0]
    copy = tmp_path / record.path.name
    copy.write_text(record.path.read_text().replace('"title"', '"titel"', 1))
    files = {copy: contracts._json(contracts.record_schema(record.model, record.mode))}
    assert [path for path, _ in contracts.stale(files, tmp_path)] == [copy]
    (tmp_path / "Gone.json").write_text("{}")
    assert [path.name for path, _ in contracts.stale(files, tmp_path)] == [copy.name, "Gone.json"]


def test_every_topic_of_the_routes_has_a_channel_and_every_record_a_schema() -> None:
    document = contracts.asyncapi()
    addresses = {channel["address"] for channel in document["channels"].values()}
    for route in ROUTES:
        assert {route.input, route.output, route.dlq} <= addresses
    for record in contracts.records():
        Draft7Validator.check_schema(json.loads(record.path.read_text()))
        assert record.name in document["components"]["messages"]


def test_each_routes_output_schema_is_what_its_step_returns() -> None:
    """Route.output_event is declared beside the step; a step that returns a model directly must
    return that one (a click's step wraps its Recommendation with the state writes it waits for)."""
    for route in ROUTES:
        returned = typing.get_type_hints(route.step)["return"]
        if isinstance(returned, type) and issubclass(returned, BaseModel):
            assert returned is route.output_event, route.input


def test_docs_tables_come_from_the_code() -> None:
    text = contracts.ARCHITECTURE.read_text()
    settings_block = text[text.index("<!-- generated: settings") :]
    for name in Settings.model_fields:
        assert f"`ECOM_{name.upper()}`" in settings_block
    assert "`ecom_events_consumed_total` | counter | `topic`" in text


def test_a_block_missing_from_the_docs_is_an_error() -> None:
    with pytest.raises(contracts.ContractError, match="generated: topics"):
        contracts.render_blocks("# no blocks here\n")


# --- Inputs: the demo's sample ----------------------------------------------------------------


def as_object(event: SampleEvent) -> dict[str, Any] | None:
    try:
        value = orjson.loads(event.render())
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def test_every_good_sample_event_matches_its_input_schema() -> None:
    good = [e for e in sample() if e.expect == "output"]
    assert {e.topic for e in good} == {"reviews", "product-uploads", "clickstream"}
    for event in good:
        name = route_for(event.topic).event.__name__
        assert errors(name, as_object(event)) == [], event.event_id


def test_input_schemas_agree_with_the_models_on_every_sample_event() -> None:
    """Good and broken events alike: the schema accepts exactly what the model accepts. (The service
    checks more than the model does, such as images and sizes; those events pass both.)"""
    rejected = 0
    for event in sample():
        obj = as_object(event)
        if obj is None:
            continue  # not a JSON object: no schema to ask
        model = route_for(event.topic).event
        try:
            model.model_validate(obj)
            model_ok = True
        except ValidationError:
            model_ok = False
        assert (errors(model.__name__, obj) == []) == model_ok, (event.event_id, errors(model.__name__, obj))
        rejected += not model_ok
    assert rejected >= 3, "the sample's schema violations (missing text, version, rating, action)"


def test_integer_ids_and_unix_seconds_are_in_the_input_schemas() -> None:
    click = {"event_id": 7, "user_id": 12, "session_id": "s", "product_id": 3, "action": "view", "ts": 1.5}
    assert errors("ClickEvent", click) == []
    assert errors("ClickEvent", {**click, "ts": -1}) != []
    assert errors("ClickEvent", {**click, "ts": "yesterday"}) != []


# --- Outputs and dead letters: the worker, with a fake model and producer ----------------------------


async def no_wait() -> None:
    return None


@pytest.fixture
async def app_and_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[EnrichmentApp, RecordingPublisher]]:
    monkeypatch.setattr(faust_ext, "delivered", no_wait)
    settings = Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix=PREFIX, batch_linger_ms=5)
    publisher = RecordingPublisher()
    app = create_app(settings, model=FakeModel(), publisher=publisher)
    app.finalize()
    app.flow_control.resume()
    yield app, publisher
    await app.runtime.inference.close()
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()


async def test_every_record_the_worker_writes_matches_its_schema(
    app_and_publisher: tuple[EnrichmentApp, RecordingPublisher],
) -> None:
    app, publisher = app_and_publisher
    events = sample()
    for topic in ("reviews", "product-uploads", "clickstream"):
        async with app.agents[f"enrich-{PREFIX}{topic}"].test_context() as ctx:
            for event in (e for e in events if e.topic == topic):
                await ctx.put(event.render(), key=event.key)
            expected = sum(1 for e in events if e.topic == topic)
            await wait_for_outcomes(publisher, topic, expected)
    schema_of = {PREFIX + r.output: r.output_event.__name__ for r in ROUTES}
    schema_of |= {PREFIX + r.dlq: DeadLetter.__name__ for r in ROUTES}
    checked: dict[str, int] = {}
    for topic, _, value in publisher.sent:
        if topic in schema_of:
            assert errors(schema_of[topic], value) == [], (topic, value)
            checked[schema_of[topic]] = checked.get(schema_of[topic], 0) + 1
    assert checked.keys() >= {"ReviewSentiment", "ProductCategory", "Recommendation", "DeadLetter"}
    assert checked["DeadLetter"] == sum(1 for e in events if e.expect == "dlq")
    # A dead letter as it goes on its topic: the input's value, whole, and the headers AsyncAPI names.
    headers_schema = contracts.asyncapi()["components"]["messages"]["DeadLetter"]["headers"]
    originals = {e.render() if not e.fresh_ts else None for e in events if e.expect == "dlq"}
    for topic, _, value, headers in publisher.records:
        if topic.endswith(".dlq"):
            as_text = {name: data.decode("utf-8") for name, data in headers if data is not None}
            assert list(Draft7Validator(headers_schema).iter_errors(as_text)) == [], as_text
            assert value in originals, "the dead letter's value is its input's, byte for byte"


async def wait_for_outcomes(publisher: RecordingPublisher, topic: str, n: int, wait_s: float = 30.0) -> None:
    route = route_for(topic)
    wanted = {PREFIX + route.output, PREFIX + route.dlq}

    def done() -> bool:
        return sum(1 for t, _, _ in publisher.sent if t in wanted) >= n

    deadline = asyncio.get_running_loop().time() + wait_s
    while not done() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert done(), f"{topic}: fewer than {n} outputs and dead letters"
