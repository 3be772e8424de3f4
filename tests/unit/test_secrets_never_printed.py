"""A canary password and token, through every way the worker can fail at start: neither is ever printed.

Invalid settings (pydantic's own text would repeat every input), a broker that is not there, a broker
that refuses the credentials (a small fake speaking enough of the Kafka protocol to refuse SASL), with
DEBUG logging in text and in JSON. Each case names what is wrong, so an empty output cannot pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import logging.config
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.protocol.admin import (
    ApiVersionResponse_v0,
    SaslAuthenticateResponse_v0,
    SaslHandShakeResponse_v1,
)

from streams import worker
from streams.__main__ import _settings
from streams.logs import logging_config
from streams.settings import Settings

CANARY = "Canary-Pa55word-7f3e9c"  # the SASL password
CANARY_TOKEN = "Canary-T0ken-b81d2a"  # the state pages' token, also a secret
SECRETS = (CANARY, CANARY_TOKEN)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("ECOM_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret was printed:\n{text}"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # The model-level check: pydantic's message would carry every input, the password included.
        ({"ECOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "ECOM_KAFKA_SASL_USERNAME"),
        ({"ECOM_PARTITIONS": CANARY}, "ECOM_PARTITIONS"),  # a value in the wrong field is not echoed either
        ({"ECOM_KAFKA_SECURITY_PROTOCOL": CANARY}, "ECOM_KAFKA_SECURITY_PROTOCOL"),
        (
            {"ECOM_STATE_PAGES_ENABLED": "true", "ECOM_STATE_PAGES_TOKEN": "Canary-short"},
            "ECOM_STATE_PAGES_TOKEN",
        ),
        (
            {"ECOM_STATE_PAGES_ENABLED": "maybe", "ECOM_STATE_PAGES_TOKEN": CANARY_TOKEN},
            "ECOM_STATE_PAGES_ENABLED",
        ),
    ],
)
def test_invalid_settings_name_the_setting_and_never_a_value(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], named: str
) -> None:
    clean_env.setenv("ECOM_KAFKA_SASL_PASSWORD", CANARY)
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        _settings()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "invalid settings" in err
    assert_no_secret(err)
    assert "Canary-short" not in err and "input_value" not in err


def sasl_settings(port: int) -> Settings:
    return Settings(
        kafka_bootstrap=f"kafka://127.0.0.1:{port}",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="svc",
        kafka_sasl_password=CANARY,
        state_pages_enabled=True,
        state_pages_token=CANARY_TOKEN,
        log_level="DEBUG",
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _refuse_sasl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer ApiVersions and the SASL handshake, then refuse every authentication like a real broker."""
    try:
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            frame = await reader.readexactly(size)
            api_key, _, correlation_id = struct.unpack(">hhi", frame[:8])
            if api_key == 18:
                body = ApiVersionResponse_v0(0, [(18, 0, 0), (17, 1, 1), (36, 0, 0)]).encode()
            elif api_key == 17:
                body = SaslHandShakeResponse_v1(0, ["PLAIN"]).encode()
            elif api_key == 36:
                body = SaslAuthenticateResponse_v0(
                    58, "Authentication failed: invalid credentials", b""
                ).encode()
            else:
                return
            payload = struct.pack(">i", correlation_id) + body
            writer.write(struct.pack(">i", len(payload)) + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()


@contextlib.contextmanager
def refusing_broker() -> Iterator[tuple[int, list[int]]]:
    """A fake broker in a thread of its own (the worker's start-up runs its own event loop)."""
    import threading

    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await _refuse_sasl(reader, writer)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["server"] = server
        started.set()

    def run() -> None:
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield int(state["port"]), connections
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        state["server"].close()
        loop.close()


@contextlib.contextmanager
def logging_as_the_worker(json: bool) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.config.dictConfig(logging_config("DEBUG", json))
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("json", [False, True])
def test_an_unreachable_broker_at_debug_level_prints_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], json: bool
) -> None:
    monkeypatch.setattr(worker, "ensure_topics", functools.partial(worker.ensure_topics, wait=1.5))
    with logging_as_the_worker(json):
        assert worker.run_worker(sasl_settings(closed_port())) == 3
    err = capsys.readouterr().err
    assert "not reachable" in err
    assert_no_secret(err)


@pytest.mark.parametrize("json", [False, True])
def test_refused_credentials_at_debug_level_print_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], json: bool
) -> None:
    monkeypatch.setattr(worker, "ensure_topics", functools.partial(worker.ensure_topics, wait=1.5))
    with refusing_broker() as (port, connections), logging_as_the_worker(json):
        assert worker.run_worker(sasl_settings(port)) == 3
    err = capsys.readouterr().err
    assert connections, "the client never reached the fake broker"
    assert "Authentication failed" in err or "SaslAuthenticationFailed" in err, err[-3000:]
    assert_no_secret(err)


async def test_the_app_built_with_secrets_at_debug_level_prints_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the worker logs and shows while it builds its app: settings, credentials, the web guard."""
    from streams_fakes import FakeModel, RecordingPublisher

    from streams.app import create_app

    config = sasl_settings(closed_port())
    with logging_as_the_worker(False):
        app = create_app(config, model=FakeModel(), publisher=RecordingPublisher())
        logging.getLogger("test").debug(
            "settings %r, credentials %r, conf %r", config, app.conf.broker_credentials, app.conf
        )
    err = capsys.readouterr().err
    assert "settings" in err
    assert_no_secret(err + repr(config) + str(config) + repr(app.conf.broker_credentials))
