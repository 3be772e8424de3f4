"""The operator commands without a broker: argument parsing, times, validation of lines to send, the
selection and the re-drive plan, the choice of listings to re-enrich, settings shown masked."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.__main__ import build_parser, main, program_name, version
from streams.cli import OperatorError
from streams.cli.config import MASK, effective, show_command
from streams.cli.dlq import RedrivePlan, Selection, Stored, dlq_topics
from streams.cli.reprocess import REFUSED, Latest, ReprocessPublisher, backfill_command
from streams.cli.send import INPUT_KEYS, check_lines, route_named, send_command
from streams.cli.timerange import TimeRange, parse_time
from streams.deadletter import dead_letter, read_dead_letter, redrive_headers
from streams.errors import OversizeMessage, OversizeText
from streams.lifecycle import Retry
from streams.records import SourceRecord
from streams.settings import Settings
from streams.topics import TopicNames
from streams.topology import ROUTES

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REVIEW = {"event_id": "e-1", "review_id": "r-1", "product_id": 1078, "user_id": "u-1", "text": "ok", "ts": 0}


# --- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv0", "expected"),
    [
        ("/usr/lib/python3/site-packages/streams/__main__.py", "python -m streams"),
        ("/opt/venv/bin/ecom-stream", "ecom-stream"),
        ("pytest", "python -m streams"),
    ],
)
def test_the_program_is_named_as_it_was_called(argv0: str, expected: str) -> None:
    assert program_name(argv0) == expected


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == version() and version()[0].isdigit()


def test_every_command_parses() -> None:
    parser = build_parser()
    args = parser.parse_args(["send", "reviews", "-", "--dry-run"])
    assert (args.topic, args.file, args.dry_run) == ("reviews", "-", True)
    args = parser.parse_args(["dlq", "inspect", "--type", "OversizeText", "--since", "2024-05-01", "--json"])
    assert args.type == ["OversizeText"] and args.since == datetime(2024, 5, 1, tzinfo=UTC)
    args = parser.parse_args(["dlq", "redrive", "--topic", "reviews", "--dry-run"])
    assert args.max_attempts == 3 and args.topic == ["reviews"]
    args = parser.parse_args(["backfill", "--topic", "reviews", "--since", "1714557600"])
    assert args.since == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parser.parse_args(["reenrich", "--dry-run"]).dry_run
    assert parser.parse_args(["config", "show", "--json"]).json


def test_a_bad_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "inspect", "--since", "yesterday-ish"])
    assert exited.value.code == 2
    assert "is not a time" in capsys.readouterr().err


def test_the_operator_commands_import_no_model_library() -> None:
    """The worker image has no torch: the commands must not need it (nor transformers, nor pandas)."""
    code = (
        "import sys, streams.__main__, streams.cli.send, streams.cli.dlq, streams.cli.reprocess, "
        "streams.cli.config, streams.runtime\n"
        "heavy = {'torch', 'transformers', 'pandas', 'tooling'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- times ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01 10:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("1714557600", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("1714557600.5", datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
    ],
)
def test_times_on_the_command_line(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


def test_a_range_is_half_open_and_never_empty() -> None:
    window = TimeRange(NOW, NOW + timedelta(hours=1))
    assert NOW in window and NOW + timedelta(hours=1) not in window
    assert window.contains_ms(None), "a record without a time is never filtered out"
    with pytest.raises(ValueError, match="not after"):
        TimeRange(NOW, NOW)


# --- send -----------------------------------------------------------------------------------------------
def test_every_input_has_a_documented_key_field_in_its_schema() -> None:
    for route in ROUTES:
        assert INPUT_KEYS[route.input] in route.event.model_fields, route.input


def test_lines_are_checked_as_the_worker_parses_them() -> None:
    route = route_named("reviews", TopicNames())
    lines = [
        orjson.dumps(REVIEW) + b"\r\n",
        b"\n",
        b'{"event_id": "x", ',
        orjson.dumps({**REVIEW, "rating": 9}),
        orjson.dumps({**REVIEW, "text": "x" * 600}),
    ]
    checked = check_lines(route, lines, max_message_bytes=500)
    assert [c.number for c in checked] == [1, 3, 4, 5], "blank lines are skipped, numbers stay the file's"
    assert checked[0].valid and checked[0].key == b"1078" and checked[0].value == orjson.dumps(REVIEW)
    assert checked[1].error is not None and checked[1].error.startswith("MalformedJson")
    assert checked[2].error is not None and checked[2].error.startswith("SchemaViolation: rating")
    assert checked[3].error is not None and checked[3].error.startswith("OversizeMessage")


def test_clicks_are_keyed_by_user_and_prefixed_topics_are_found() -> None:
    names = TopicNames("t-")
    route = route_named("t-clickstream", names)
    click = {"event_id": "c", "user_id": 7, "session_id": "s", "product_id": "p", "action": "view", "ts": 0}
    [line] = check_lines(route, [orjson.dumps(click)], 10_000)
    assert line.key == b"7"
    with pytest.raises(OperatorError, match="not an input topic"):
        route_named("review-sentiment", names)


def test_an_invalid_line_stops_the_whole_file_unless_skipped() -> None:
    lines = [orjson.dumps(REVIEW), b"[1]"]
    out = io.StringIO()
    assert (
        send_command(
            Settings(), "reviews", io.BytesIO(b"\n".join(lines)), dry_run=False, skip_invalid=False, out=out
        )
        == 1
    )
    report = out.getvalue()
    assert "line 2: invalid: MalformedJson" in report and "nothing sent" in report
    out = io.StringIO()
    assert (
        send_command(Settings(), "reviews", io.BytesIO(lines[0]), dry_run=True, skip_invalid=False, out=out)
        == 0
    )
    assert "1 valid, 0 invalid" in out.getvalue() and "dry run: nothing sent" in out.getvalue()


# --- dlq -------------------------------------------------------------------------------------------------
def test_dead_letter_topics_by_any_name() -> None:
    settings = Settings(topic_prefix="t-")
    assert dlq_topics(settings, ["reviews", "t-reviews.dlq", "reviews.dlq"]) == ["t-reviews.dlq"]
    assert dlq_topics(settings, []) == [f"t-{r.dlq}" for r in ROUTES]
    with pytest.raises(OperatorError, match="not a dead-letter topic"):
        dlq_topics(settings, ["review-sentiment"])


def stored(
    offset: int,
    *,
    error: type[Exception] = OversizeText,
    at: datetime = NOW,
    source_offset: int | None = None,
    headers: tuple[tuple[str, bytes | None], ...] = (),
    topic: str = "reviews",
    size: int = 10,
) -> Stored:
    record = SourceRecord(
        topic, 0, offset if source_offset is None else source_offset, b"k", b"{}" + b" " * size, 1.0, headers
    )
    letter = dead_letter(record, error("x"), max_bytes=1000, now=at)  # type: ignore[arg-type]
    return Stored(f"{topic}.dlq", 0, offset, read_dead_letter(letter.key, letter.value, letter.headers))


def test_a_selection_by_type_and_time() -> None:
    selection = Selection(frozenset({"OversizeText"}), TimeRange(NOW, NOW + timedelta(hours=1)))
    assert stored(0).letter in selection
    assert stored(1, error=OversizeMessage).letter not in selection
    assert stored(2, at=NOW - timedelta(seconds=1)).letter not in selection
    assert stored(3).letter in Selection()


def test_the_redrive_plan_stops_at_the_cap_and_takes_only_the_latest_failure_of_an_input() -> None:
    plan = RedrivePlan(max_attempts=2, inputs=frozenset({"reviews"}))
    first = stored(0, source_offset=10)
    # Re-driven once (offset 50 on the input), failed again: a later dead letter of the same input.
    again = stored(1, source_offset=50, headers=redrive_headers(first.letter))
    other = stored(2, source_offset=11)
    capped = stored(3, source_offset=60, headers=redrive_headers(stored(9, source_offset=12).letter))
    capped = stored(4, source_offset=70, headers=redrive_headers(capped.letter))  # attempts 2
    too_big = stored(5, source_offset=13, size=2000)
    foreign = stored(6, topic="elsewhere")
    for s in (first, again, other, capped, too_big, foreign):
        plan.consider(s)
    ready = plan.finish()
    assert [s.offset for s in ready] == [1, 2]
    assert [s.offset for s in plan.at_cap] == [4]
    assert [s.offset for s in plan.without_value] == [5]
    assert [s.offset for s in plan.foreign] == [6]
    assert plan.superseded == 1
    assert ready[0].letter.info.attempts == 1 and ready[0].letter.origin == "reviews[0]@10"


# --- backfill and reenrich --------------------------------------------------------------------------------
def test_inputs_whose_outputs_depend_on_state_are_refused() -> None:
    for route in ROUTES:
        stateless = route.input in ("reviews", "product-uploads")
        assert (route.input not in REFUSED) == stateless, route.input
    with pytest.raises(OperatorError, match="clickstream is refused"):
        backfill_command(
            Settings(), "clickstream", TimeRange(NOW), dead_letters=False, dry_run=True, out=io.StringIO()
        )


def listing(partition: int, offset: int, key: bytes | None, ts: float, product: str = "p") -> SourceRecord:
    value = orjson.dumps({"event_id": f"e{offset}", "product_id": product, "title": "t", "ts": 0})
    return SourceRecord("product-uploads", partition, offset, key, value, ts)


def test_reenrich_keeps_the_latest_listing_of_each_product() -> None:
    latest = Latest()
    records = [
        listing(0, 1, b"a", 100.0),
        listing(0, 5, b"a", 50.0),  # later on its partition, whatever its time
        listing(1, 2, b"b", 10.0),
        listing(2, 3, None, 10.0, product="c"),
        listing(3, 4, None, 20.0, product="c"),  # no key: the later record time wins across partitions
        SourceRecord("product-uploads", 0, 9, None, b"garbage", 1.0),  # names no product: kept, fails
    ]
    for r in records:
        latest.add(r)
    keeps = latest.keeps()
    assert [(r.partition, r.offset) for r in records if keeps(r)] == [(0, 5), (1, 2), (3, 4), (0, 9)]


async def test_a_reprocess_reports_failures_without_dead_lettering_them_again() -> None:
    class Producer:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, topic: str, value: bytes, **_: object) -> object:
            self.sent.append(topic)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    producer = Producer()
    publisher = ReprocessPublisher(producer, Retry(), 1.0, dead_letters=False)
    letter = dead_letter(
        SourceRecord("reviews", 0, 3, b"k", b"{}", 1.0), OversizeText("x"), max_bytes=999, now=NOW
    )
    await publisher.publish("reviews.dlq", letter.key, letter.value, headers=letter.headers)
    await publisher.publish("review-sentiment", b"r", b"{}")
    assert producer.sent == ["review-sentiment"]
    assert publisher.failures == {"OversizeText": 1} and publisher.failed[0].startswith("reviews[0]@3")


# --- config ---------------------------------------------------------------------------------------------
def test_config_show_masks_secrets_and_says_where_values_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ECOM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("ECOM_KAFKA_SASL_PASSWORD", "s3cret-value-xyz")
    settings = Settings()
    rows = {var: (value, source) for var, value, source in effective(settings)}
    assert rows["ECOM_KAFKA_SASL_PASSWORD"] == (MASK, "environment")
    assert rows["ECOM_KAFKA_SASL_USERNAME"] == ("svc", "environment")
    assert rows["ECOM_PARTITIONS"] == (4, "default")
    for as_json in (False, True):
        out = io.StringIO()
        show_command(settings, as_json=as_json, out=out)
        assert "s3cret" not in out.getvalue() and MASK in out.getvalue()
    assert (
        "ECOM_KAFKA_SASL_PASSWORD=********" in out.getvalue()
        or '"ECOM_KAFKA_SASL_PASSWORD"' in out.getvalue()
    )
