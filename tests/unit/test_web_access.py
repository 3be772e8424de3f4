"""Who may read what on the worker's web port: every route of a built app, asked with and without a token.

The app is the worker's own (`create_app`, fake model and producer); requests go through aiohttp's test
server on the loopback interface, so they pass the app's middleware exactly as a real client's would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from streams_fakes import FakeModel, RecordingPublisher

from streams.app import OPEN_PAGES, EnrichmentApp, create_app, state_pages_guard
from streams.settings import Settings

TOKEN = "t0ken-for-the-state-pages"
STATE_PREFIXES = ("/recommend/", "/table/", "/router/")


def settings(**overrides: Any) -> Settings:
    return Settings(kafka_bootstrap="kafka://127.0.0.1:1", topic_prefix="t-", **overrides)


@contextmanager
def built(config: Settings) -> Iterator[EnrichmentApp]:
    app = create_app(config, model=FakeModel(), publisher=RecordingPublisher())
    app.web.init_server()  # what the worker does when its web server starts: Faust's blueprints join
    try:
        yield app
    finally:
        # /readyz asks the consumer for its assignment: its (never started) thread owns an event loop.
        consumer = getattr(app, "_consumer", None)
        if consumer is not None:
            consumer._thread.thread_loop.close()


def routes(app: EnrichmentApp) -> dict[str, str]:
    """Every GET route the app serves -> a concrete path for it (`{param}` filled in)."""
    out = {}
    for route in app.web.web_app.router.routes():
        if route.method == "GET":
            pattern = route.resource.canonical if route.resource is not None else ""
            out[pattern] = re.sub(r"\{[^}]+\}", "x", pattern)
    return out


@asynccontextmanager
async def client(app: EnrichmentApp) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app.web.web_app)) as c:
        yield c


async def answer(
    c: TestClient[web.Request, web.Application], path: str, token: str | None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    resp = await c.get(path, headers=headers)
    body = await resp.json() if resp.content_type == "application/json" else await resp.read()
    return resp.status, body


def refused(status: int, body: Any) -> bool:
    """The guard's own refusal (a page may answer 404 itself: an unknown user)."""
    return status in (401, 403, 404) and isinstance(body, dict) and set(body) == {"error"}


async def test_by_default_only_health_and_metrics_are_served() -> None:
    with built(settings()) as app:
        served = routes(app)
        assert not [p for p in served if p.startswith(STATE_PREFIXES)], served
        async with client(app) as c:
            for pattern, path in served.items():
                status, body = await answer(c, path, token=None)
                if pattern in OPEN_PAGES:
                    assert not refused(status, body), (pattern, status, body)
                else:
                    assert refused(status, body) and status == 404, (pattern, status, body)
            # A path the app does not serve, and a state page's path, look the same: not found.
            assert refused(*await answer(c, "/recommend/users/u1", token=TOKEN))


async def test_enabled_state_pages_need_the_token_and_every_other_page_stays_open() -> None:
    with built(settings(state_pages_enabled=True, state_pages_token=TOKEN)) as app:
        served = routes(app)
        state = [p for p in served if p.startswith(STATE_PREFIXES)]
        expected = {"/recommend/users/{user_id}", "/recommend/items/{item_id}", "/recommend/tables"}
        assert expected <= set(state)
        assert any(p.startswith("/table/") for p in state) and any(p.startswith("/router/") for p in state)
        async with client(app) as c:
            for pattern, path in served.items():
                open_page = pattern in OPEN_PAGES
                for token in (None, "wrong-token-of-some-length", TOKEN.upper()):
                    status, body = await answer(c, path, token)
                    if open_page:
                        assert not refused(status, body), (pattern, token, status, body)
                    else:
                        assert refused(status, body) and status == 401, (pattern, token, status, body)
                status, body = await answer(c, path, TOKEN)
                assert not refused(status, body), (pattern, status, body)
            status, body = await answer(c, "/recommend/tables", TOKEN)
            assert status == 200 and isinstance(body, dict)


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("::ffff:10.0.0.1", False),
    ],
)
async def test_state_pages_answer_loopback_clients_only(peer: str, allowed: bool) -> None:
    guard = state_pages_guard(settings(state_pages_enabled=True, state_pages_token=TOKEN))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 1234) if name == "peername" else default
    )
    handler = mock.AsyncMock(return_value=web.Response(text="state"))
    for path, headers in (
        ("/recommend/tables", {"Authorization": f"Bearer {TOKEN}"}),
        ("/metrics", {}),  # open to anyone, wherever from
    ):
        request = make_mocked_request("GET", path, headers=headers, transport=transport)
        response = await guard(request, handler)
        opened = path == "/metrics" or allowed
        assert (response.status == 200) is opened, (peer, path, response.status)
        if not opened:
            assert response.status == 403


def test_enabling_the_state_pages_needs_a_long_enough_token() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ECOM_STATE_PAGES_TOKEN"):
        settings(state_pages_enabled=True)
    with pytest.raises(ValidationError, match="ECOM_STATE_PAGES_TOKEN"):
        settings(state_pages_enabled=True, state_pages_token="short")
