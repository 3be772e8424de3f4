"""The operator commands against the real broker, Triton and a worker, each run as an operator runs it
(`python -m streams ...` with the worker's environment).

Reviews are sent with `send`; two of them are longer than the worker's text limit and are dead-lettered.
`dlq inspect` shows them; the limit is raised (a new worker) and `dlq redrive` sends them back: each comes
out enriched exactly once. A review that can never succeed (its image is not an image) is re-driven
until `--max-attempts`, then left alone. `reenrich` publishes one category per product (its latest
listing), and `backfill` reprocesses a time range without dead-lettering its failures again.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli.kafka import read_range
from streams.deadletter import read_dead_letter
from streams.settings import Settings
from streams.topics import TopicNames, client_options, create_topics
from tooling.embedded.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_LIMIT = 200  # bytes of review text the first worker accepts


def cli(settings: Settings, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env={**os.environ, **settings.to_env()},
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )


def records(settings: Settings, topic: str) -> list[Any]:
    async def read() -> list[Any]:
        return [m async for m in read_range(settings, [topic])]

    return asyncio.run(read())


def wait_for(
    settings: Settings, topic: str, n: int, worker: WorkerProcess, timeout: float = 240
) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(settings, topic)
        if len(found) >= n or time.monotonic() > deadline:
            assert len(found) >= n, f"{topic}: {len(found)} of {n}\n{worker.tail()}"
            return found
        time.sleep(0.5)


def wait_committed(settings: Settings, topic: str, timeout: float = 60) -> None:
    """Until the worker's group has committed every offset of `topic` (so that a new worker does not
    process those records again)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    ends: dict[int, int] = {}
    for message in records(settings, topic):
        ends[message.partition] = max(ends.get(message.partition, 0), message.offset + 1)

    async def behind() -> int:
        # The group's committed offsets, read without joining the group or committing anything.
        consumer = AIOKafkaConsumer(
            **client_options(settings), group_id=settings.app_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            got = {p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in ends}
        finally:
            await consumer.stop()
        return sum(max(0, end - got[p]) for p, end in ends.items())

    deadline = time.monotonic() + timeout
    while asyncio.run(behind()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert asyncio.run(behind()) == 0, f"{topic} not committed"


def event_ids(messages: list[Any]) -> Counter[str]:
    return Counter(str(orjson.loads(m.value)["event_id"]) for m in messages)


def review(i: int, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"ops-r{i}",
        "review_id": f"r{i}",
        "product_id": f"p{i % 2}",
        "user_id": "u1",
        "text": text,
        "rating": 4,
        "ts": "2024-05-01T10:00:00Z",
        **extra,
    }


def lines(events: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events) + b"\n"


def test_send_inspect_fix_redrive_reenrich_backfill(
    service_settings: Callable[..., Settings], new_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    strict = service_settings("ops", max_text_bytes=SHORT_LIMIT)
    fixed = service_settings("ops")  # the same topics and group, the default text limit
    names = TopicNames.from_settings(fixed)
    asyncio.run(create_topics(strict))
    worker = new_worker(strict, name="strict").start()

    # --- send: validated first; an invalid file sends nothing --------------------------------------
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(lines([review(90, "fine")]) + b'{"event_id": "half\n')
    done = cli(strict, "send", "reviews", str(bad))
    assert done.returncode == 1 and "line 2: invalid: MalformedJson" in done.stdout, done.stdout + done.stderr
    assert records(strict, names.reviews) == []

    long_text = "Runs small, but the fabric is lovely. " * 8  # over SHORT_LIMIT bytes
    not_an_image = base64.b64encode(b"this is not a picture").decode()
    good = [review(i, "Lovely dress, fits well.") for i in range(3)]
    too_long = [review(10 + i, long_text) for i in range(2)]
    broken = [review(20, "nice", images=[not_an_image])]
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(lines(good + too_long + broken))
    done = cli(strict, "send", "reviews", str(path))
    assert done.returncode == 0 and "sent 6" in done.stdout, done.stdout + done.stderr

    listings = [
        {"event_id": "ops-l1", "product_id": "sku-1", "title": "Red summer dress", "ts": 1},
        {"event_id": "ops-l2", "product_id": "sku-2", "title": "Leather ankle boots", "ts": 2},
        {"event_id": "ops-l3", "product_id": "sku-1", "title": "Red summer dress, linen", "ts": 3},
    ]
    done = cli(strict, "send", "product-uploads", "-", stdin=lines(listings))
    assert done.returncode == 0 and "sent 3" in done.stdout, done.stdout + done.stderr

    wait_for(strict, names.review_sentiment, 3, worker)
    wait_for(strict, names.product_categories, 3, worker)
    dead = wait_for(strict, names.dlq(names.reviews), 3, worker)
    # Dead letters are the inputs whole: the value is the line that was sent.
    sent_values = {orjson.dumps(e) for e in too_long + broken}
    assert {m.value for m in dead} == sent_values
    assert all(m.key == b"p0" or m.key == b"p1" for m in dead)

    # --- inspect ------------------------------------------------------------------------------------
    done = cli(strict, "dlq", "inspect", "--topic", "reviews", "--json")
    assert done.returncode == 0, done.stderr
    [report] = orjson.loads(done.stdout)["topics"]
    assert report["count"] == 3 and report["by_type"] == {"OversizeText": 2, "InvalidImage": 1}
    assert sum(report["by_hour"].values()) == 3
    assert {s["event_id"] for s in report["samples"]} <= {"ops-r10", "ops-r11", "ops-r20"}
    done = cli(strict, "dlq", "inspect", "--type", "OversizeText")
    assert "2 dead letters" in done.stdout and "OversizeText 2" in done.stdout, done.stdout

    # --- the fix: a worker with the default text limit; then re-drive --------------------------------
    wait_committed(strict, names.reviews)
    worker.stop()
    worker = new_worker(fixed, name="fixed").start()
    done = cli(fixed, "dlq", "redrive", "--type", "OversizeText", "--dry-run")
    assert done.returncode == 0 and "would re-drive 2" in done.stdout, done.stdout + done.stderr
    assert len(records(fixed, names.reviews)) == 6, "a dry run sends nothing"

    since_redrive = datetime.now(UTC)
    done = cli(fixed, "dlq", "redrive", "--type", "OversizeText")
    assert done.returncode == 0 and "re-drove 2" in done.stdout, done.stdout + done.stderr
    inputs = records(fixed, names.reviews)
    redriven = [m for m in inputs if dict(m.headers or ()).get("ecom.redrive.attempts")]
    assert sorted(m.value for m in redriven) == sorted(orjson.dumps(e) for e in too_long), "the exact inputs"
    assert all(dict(m.headers)["ecom.redrive.attempts"] == b"1" for m in redriven)

    outputs = wait_for(fixed, names.review_sentiment, 5, worker)
    wait_committed(fixed, names.reviews)
    outputs = records(fixed, names.review_sentiment)
    counts = event_ids(outputs)
    assert counts["ops-r10"] == 1 and counts["ops-r11"] == 1, counts
    assert counts["ops-r20"] == 0

    # --- a record that fails again is re-driven up to the cap, then left alone ------------------------
    dlq = names.dlq(names.reviews)
    for attempt in (1, 2):
        done = cli(fixed, "dlq", "redrive", "--type", "InvalidImage", "--max-attempts", "2")
        assert "re-drove 1" in done.stdout, done.stdout + done.stderr
        letters = wait_for(fixed, dlq, 3 + attempt, worker)
        infos = [read_dead_letter(m.key, m.value, m.headers).info for m in letters]
        again = sorted(i.attempts for i in infos if i.event_id == "ops-r20")
        assert again == list(range(attempt + 1)), "one new dead letter per re-drive, counting it"
        [first] = [i for i in infos if i.event_id == "ops-r20" and i.attempts == 0]
        origin = f"{first.source.topic}[{first.source.partition}]@{first.source.offset}"
        assert {i.origin for i in infos if i.event_id == "ops-r20" and i.attempts} == {origin}
    done = cli(fixed, "dlq", "redrive", "--type", "InvalidImage", "--max-attempts", "2")
    assert "re-drove 0" in done.stdout and "re-driven 2 times already (--max-attempts): 1" in done.stdout
    assert len(records(fixed, dlq)) == 5, "no dead letter re-driven past the cap"

    # --- reenrich: the latest listing of each product -------------------------------------------------
    done = cli(fixed, "reenrich")
    assert done.returncode == 0 and "3 listings, 2 products" in done.stdout, done.stdout + done.stderr
    categories = event_ids(records(fixed, names.product_categories))
    assert categories == Counter({"ops-l1": 1, "ops-l2": 2, "ops-l3": 2}), categories

    # --- backfill: a time range again, failures reported, not dead-lettered twice --------------------
    done = cli(fixed, "backfill", "--topic", "clickstream", "--since", "1h")
    assert done.returncode == 2 and "refused" in done.stderr
    done = cli(fixed, "backfill", "--topic", "reviews", "--since", since_redrive.isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 records reprocessed, 2 enriched, 2 failed" in done.stdout, done.stdout
    assert "InvalidImage 2" in done.stdout
    counts = event_ids(records(fixed, names.review_sentiment))
    assert counts["ops-r10"] == 2 and counts["ops-r11"] == 2 and counts["ops-r0"] == 1, counts
    assert len(records(fixed, dlq)) == 5
