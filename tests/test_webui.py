"""The App Supervisor page: its HTTP routes, the live event stream, and the page in Chromium.

Browser tests drive Debian's chromium through Playwright (``executable_path``; Playwright
cannot download a browser here). When chromium is missing they fail and say how to install
it: a silent skip would hide that the page went untested.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Response,
    async_playwright,
    expect,
)

from nocosup import __version__
from nocosup.auth import COOKIE_NAME
from nocosup.events import EventBus
from nocosup_webui import stream as stream_module
from nocosup_webui.stream import EventStreams
from tests.cluster import Cluster
from tests.conftest import REDIS_URL
from tests.servers import ADMIN_TOKEN, AUTH, NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create

CHROMIUM = os.environ.get("NOCOSUP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Generous: a condition the page reaches in milliseconds may wait on a loaded CI machine.
WAIT_MS = 30_000


# --- the event stream, read as a client ------------------------------------------------


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event type, data) for each message of a text/event-stream response."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def next_event(
    events: AsyncIterator[tuple[str, dict[str, Any]]], kind: str, **match: Any
) -> dict[str, Any]:
    """The next event of type ``kind`` whose data holds ``match``."""
    async with asyncio.timeout(30):
        async for got_kind, data in events:
            if got_kind == kind and all(data.get(k) == v for k, v in match.items()):
                return data
    raise AssertionError(f"the stream ended before a {kind} event matching {match}")


# --- HTTP ------------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.client() as c:
        r = await c.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "<title>App Supervisor" in r.text
        # asset links carry a content hash, so a new release is never served from cache
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            marker = f'"ui/{asset}?v='
            assert marker in r.text
            version = r.text.split(marker, 1)[1].split('"', 1)[0]
            a = await c.get(f"/ui/{asset}", params={"v": version})
            assert a.status_code == 200, asset
            assert kind in a.headers["content-type"]
        assert (await c.get("/ui/nothing.js")).status_code == 404


async def test_login_sets_a_strict_http_only_cookie(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.client() as c:
        r = await c.post("/api/login", json={"token": "not-the-token"})
        assert_error(r, 401, "UNAUTHORIZED")
        assert "set-cookie" not in r.headers
        assert_error(await c.post("/api/login", json={}), 401, "UNAUTHORIZED")
        assert_error(await c.post("/api/login", content=b"{"), 422, "INVALID_JSON")
        assert_error(
            await c.post("/api/login", json={"token": ADMIN_TOKEN, "x": 1}), 422, "VALIDATION_ERROR"
        )
        assert_error(await c.get("/api/apps"), 401, "UNAUTHORIZED")

        r = await c.post("/api/login", json={"token": ADMIN_TOKEN})
        assert r.status_code == 204, r.text
        cookie = r.headers["set-cookie"]
        # the cookie holds a session id, never the token
        assert cookie.startswith(f"{COOKIE_NAME}=") and ADMIN_TOKEN not in cookie
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/api", "max-age=28800"} <= attributes
        assert "secure" not in attributes  # plain http, no trusted proxy
        # Path=/api, and the host strips it from whatever a tenant receives
        # the cookie alone now opens the admin API; its writes must come from the page
        r = await c.get("/api/apps")
        assert r.status_code == 200, r.text
        assert r.json() == {"apps": [], "total": 0, "next_cursor": None}
        page = {"Origin": sqlite_server.url}
        assert (
            await c.post("/api/apps", json={"name": "bycookie"}, headers=page)
        ).status_code == 201
        r = await c.post("/api/apps", json={"name": "forged"})
        assert_error(r, 403, "CSRF_REJECTED")

        r = await c.post("/api/logout", headers=page)
        assert r.status_code == 204
        assert f"{COOKIE_NAME}=" in r.headers["set-cookie"]
        assert_error(await c.get("/api/apps"), 401, "UNAUTHORIZED")


async def test_a_stale_cookie_is_refused(sqlite_server: NocosupServer) -> None:
    # an unknown session id, and the token itself (the cookie held it before sessions)
    for value in ("an-old-session", ADMIN_TOKEN):
        async with sqlite_server.client(cookies={COOKIE_NAME: value}) as c:
            assert_error(await c.get("/api/apps"), 401, "UNAUTHORIZED")
            assert_error(await c.get("/api/events"), 401, "UNAUTHORIZED")


async def test_events_need_the_admin_token(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.client() as c:
        assert_error(await c.get("/api/events"), 401, "UNAUTHORIZED")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(await c.get("/api/events", headers=wrong), 401, "UNAUTHORIZED")
        r = await c.post("/api/login", json={"token": ADMIN_TOKEN})
        session = r.cookies[COOKIE_NAME]
        c.cookies.clear()
        for auth in ({"headers": AUTH}, {"cookies": {COOKIE_NAME: session}}):
            async with sqlite_server.client(**auth) as authed:
                async with authed.stream("GET", "/api/events") as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("text/event-stream")
                    assert r.headers["cache-control"] == "no-store"
                    first = await anext(r.aiter_text())
                    assert ": connected" in first


async def test_events_follow_an_app_through_create_start_stop_remove(
    sqlite_server: NocosupServer,
) -> None:
    async with sqlite_server.admin() as c, c.stream("GET", "/api/events") as stream:
        assert stream.status_code == 200
        events = sse_events(stream)
        await create(c, "live")
        created = await next_event(events, "app_changed", app="live")
        assert created == {"type": "app_changed", "app": "live", "action": "created"}

        r = await c.post("/api/apps/live/start")
        assert r.status_code == 200, r.text
        running = await next_event(events, "app_status", app="live", status="running")
        assert running == {
            "type": "app_status",
            "app": "live",
            "environment": "local",
            "status": "running",
            "error": None,
        }
        assert (await c.post("/api/apps/live/stop")).status_code == 200
        await next_event(events, "app_changed", app="live", action="updated")
        await next_event(events, "app_status", app="live", status="stopped")
        assert (await c.delete("/api/apps/live")).status_code == 200
        await next_event(events, "app_changed", app="live", action="removed")


async def test_failures_reach_the_stream_with_their_error(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c, c.stream("GET", "/api/events") as stream:
        events = sse_events(stream)
        await create(c, "broken", options={"test": {"crash": "lifespan"}})
        assert (await c.post("/api/apps/broken/start")).status_code == 502
        failed = await next_event(events, "app_status", app="broken", status="error")
        assert "lifespan exploded on purpose" in failed["error"]


async def test_the_stream_ends_cleanly_when_the_host_shuts_down(
    sqlite_server: NocosupServer,
) -> None:
    """uvicorn waits for open responses before the lifespan shutdown: an endless stream
    would hold the process until the graceful timeout and then be cancelled."""
    async with sqlite_server.admin() as c, c.stream("GET", "/api/events") as stream:
        events = sse_events(stream)
        await create(c, "bye")
        await next_event(events, "app_changed", app="bye")
        stopping = asyncio.create_task(asyncio.to_thread(sqlite_server.stop, signal.SIGTERM, 60))
        farewell = await next_event(events, "shutdown")
        assert farewell == {"type": "shutdown"}
        # then the response ends properly (a broken chunked body would raise here)
        rest = [event async for event in events]
        assert rest == []
        # uvicorn re-raises the signal it handled once it is done: -SIGTERM is a clean exit
        assert await stopping in (0, -signal.SIGTERM)
    log = sqlite_server.log.read_text()
    assert "timeout graceful shutdown exceeded" not in log
    assert "Application shutdown complete" in log


async def test_an_idle_stream_keeps_alive_and_ends_when_the_client_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: comment lines keep an idle stream open; a disconnect unsubscribes."""
    monkeypatch.setattr(stream_module, "KEEPALIVE", 0.05)
    bus, streams = EventBus(), EventStreams()
    chunks: list[bytes] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message["body"])
            if chunks.count(b": keep-alive\n\n") == 2:
                gone.set()

    async with asyncio.timeout(30):
        await streams.serve(bus, {"type": "http"}, receive, send)
    assert chunks[0].startswith(b"retry: ")
    assert bus.subscriber_count == 0


async def test_a_slow_stream_is_told_it_lagged() -> None:
    """In-process: a backlog the client could not take becomes one ``lagged`` event."""
    bus, streams = EventBus(maxsize=2), EventStreams()
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves; the host closes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        chunks.append(body)
        if body.startswith(b"retry: "):
            for i in range(5):  # more than the queue holds, before the stream reads any
                bus.publish({"type": "app_changed", "app": f"a{i}", "action": "created"})
        if b"event: app_changed" in body:
            streams.close()

    async with asyncio.timeout(30):
        await streams.serve(bus, {"type": "http"}, receive, send)
    events = [c.split(b"\n", 1)[0] for c in chunks if c.startswith(b"event: ")]
    assert events == [b"event: lagged", b"event: app_changed", b"event: shutdown"]
    assert chunks[-1] == b""  # the response was ended, not abandoned


# --- the page in Chromium --------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser binary, or a failure that says how to get it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it) or NOCOSUP_TEST_CHROMIUM "
            "pointing at a Chromium binary",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile per test (no cookie carried over)."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A tab; any uncaught script error in it fails the test."""
    tab = await context.new_page()
    crashes: list[str] = []
    tab.on("pageerror", lambda exc: crashes.append(str(exc)))
    yield tab
    assert crashes == [], f"uncaught errors in the page: {crashes}"


async def sign_in(page: Page, server: NocosupServer) -> None:
    await page.goto(server.url + "/")
    await page.fill("#login-token", ADMIN_TOKEN)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#apps-panel")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")
    # A marker that a reload would wipe: updates must arrive without one.
    await page.evaluate("window.__noReload = true")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__noReload === true")


def app_row(page: Page, name: str) -> Any:
    return page.locator(f'#apps-body tr[data-app="{name}"]')


def env_status(page: Page, app: str, env: str) -> Any:
    return app_row(page, app).locator(f'.env-status[data-env="{env}"] .badge')


async def test_browser_sign_in_create_start_open_stop_remove(
    sqlite_server: NocosupServer, page: Page
) -> None:
    await page.goto(sqlite_server.url + "/")
    await expect(page.locator("#login-view")).to_be_visible()
    await page.fill("#login-token", "not-the-token")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("UNAUTHORIZED: wrong admin token")
    await expect(page.locator("#main-view")).to_be_hidden()

    await page.fill("#login-token", ADMIN_TOKEN)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#apps-panel")).to_be_visible()
    await expect(page.locator("#login-view")).to_be_hidden()
    await expect(page.locator("#live")).to_have_text("live")
    await expect(page.locator("#apps-empty")).to_be_visible()
    await page.evaluate("window.__noReload = true")

    # create: the environment list comes from the API, the only one is preselected
    await page.click("#new-app")
    await expect(page.locator("#create-dialog")).to_be_visible()
    local = page.locator('#create-envs-list input[value="local"]')
    await expect(local).to_be_checked()
    await page.fill("#create-name", "shop")
    await page.fill("#create-app-title", "The Shop")
    await page.select_option("#create-start-mode", "on_first_request")
    await page.click("#create-submit")
    await expect(page.locator("#create-dialog")).to_be_hidden()

    row = app_row(page, "shop")
    await expect(row.locator("td.title")).to_have_text("The Shop")
    await expect(row.locator("td.envs")).to_have_text("local")
    await expect(row.locator("td.desired")).to_have_text("running")
    await expect(env_status(page, "shop", "local")).to_have_text("idle")

    # start: `running` arrives without a reload
    await row.get_by_role("button", name="Start").click()
    await expect(env_status(page, "shop", "local")).to_have_text("running")

    # open: the tenant's own admin page, in a new tab
    async with page.context.expect_page() as opened:
        await row.get_by_role("link", name="Open").click()
    tenant = await opened.value
    await expect(tenant.locator("#app-name")).to_have_text("shop")
    assert tenant.url == f"{sqlite_server.url}/apps/shop/admin"
    await tenant.close()

    await row.get_by_role("button", name="Stop").click()
    await expect(env_status(page, "shop", "local")).to_have_text("stopped")
    await expect(row.locator("td.desired")).to_have_text("stopped")

    # remove, dropping the database
    async with sqlite_server.admin() as c:
        database = (await c.get("/api/apps/shop")).json()["database"]["name"]
    db_file = sqlite_server.storage / "databases" / f"{database}.sqlite"
    assert db_file.exists()
    await row.get_by_role("button", name="Remove").click()
    await expect(page.locator("#remove-dialog")).to_be_visible()
    await expect(page.locator("#remove-name")).to_have_text("shop")
    await page.check("#remove-drop")
    await page.click("#remove-submit")
    await expect(page.locator("#remove-dialog")).to_be_hidden()
    await expect(row).to_have_count(0)
    await expect(page.locator("#apps-empty")).to_be_visible()
    async with sqlite_server.admin() as c:
        assert_error(await c.get("/api/apps/shop"), 404, "APP_NOT_FOUND")
    assert not db_file.exists()

    # the environments tab
    await page.click("#tab-envs")
    await expect(page.locator("#envs-panel")).to_be_visible()
    await expect(page.locator("#apps-panel")).to_be_hidden()
    env = page.locator('#envs-body tr[data-env="local"]')
    await expect(env.locator("td.status")).to_have_text("online")
    await expect(env.locator("td.version")).to_have_text(__version__)
    await expect(env.locator("td.instances")).to_have_text("1")
    await expect(env.locator("td.heartbeat")).to_contain_text("ago")
    await assert_not_reloaded(page)

    # log out: the cookie is gone, a reload asks for the token again
    await page.click("#logout")
    await expect(page.locator("#login-view")).to_be_visible()
    assert not [c for c in await page.context.cookies() if c["name"] == COOKIE_NAME]
    await page.reload()
    await expect(page.locator("#login-view")).to_be_visible()
    await expect(page.locator("#main-view")).to_be_hidden()


async def test_browser_follows_changes_made_elsewhere(
    sqlite_server: NocosupServer, page: Page
) -> None:
    await sign_in(page, sqlite_server)
    async with sqlite_server.admin() as c:
        await create(c, "remote", title="Made by the CLI")
        await expect(app_row(page, "remote").locator("td.title")).to_have_text("Made by the CLI")
        await expect(env_status(page, "remote", "local")).to_have_text("idle")

        assert (await c.post("/api/apps/remote/start")).status_code == 200
        await expect(env_status(page, "remote", "local")).to_have_text("running")
        r = await c.patch("/api/apps/remote", json={"title": "Renamed"})
        assert r.status_code == 200
        await expect(app_row(page, "remote").locator("td.title")).to_have_text("Renamed")
        assert (await c.post("/api/apps/remote/stop")).status_code == 200
        await expect(env_status(page, "remote", "local")).to_have_text("stopped")
        await expect(app_row(page, "remote").locator("td.desired")).to_have_text("stopped")
        # an on_first_request app boots on its first request: the page sees that too
        await create(c, "lazy")
        await expect(env_status(page, "lazy", "local")).to_have_text("idle")
        assert (await c.get("/apps/lazy/api/info")).status_code == 200
        await expect(env_status(page, "lazy", "local")).to_have_text("running")
        # when each app last served a request (after a refresh: statuses stream, this not)
        await page.click("#apps-panel .refresh")
        await expect(app_row(page, "lazy").locator("td.last-seen")).to_contain_text("ago")
        await expect(app_row(page, "remote").locator("td.last-seen")).to_have_text("never")

        assert (await c.delete("/api/apps/remote")).status_code == 200
        await expect(app_row(page, "remote")).to_have_count(0)
    await assert_not_reloaded(page)


async def test_browser_creates_an_app_from_a_template(
    sqlite_server: NocosupServer, page: Page
) -> None:
    await sign_in(page, sqlite_server)
    await page.click("#new-app")
    choices = page.locator("#create-template option")
    # the default factory first, then what GET /api/templates lists
    await expect(choices.first).to_have_text("Default (tests.factories:build)")
    await expect(page.locator('#create-template option[value="starter"]')).to_contain_text(
        "starter: The starter ASGI app"
    )
    await page.fill("#create-name", "fromtpl")
    await page.select_option("#create-template", "starter")
    await page.click("#create-submit")
    await expect(page.locator("#create-dialog")).to_be_hidden()
    await expect(app_row(page, "fromtpl")).to_have_count(1)
    async with sqlite_server.admin() as c:
        assert (await c.get("/api/apps/fromtpl")).json()["template"] == "starter"
        # and without a choice, the default: no template stored
        await page.click("#new-app")
        await page.fill("#create-name", "plain")
        await page.click("#create-submit")
        await expect(page.locator("#create-dialog")).to_be_hidden()
        await expect(app_row(page, "plain")).to_have_count(1)
        assert (await c.get("/api/apps/plain")).json()["template"] is None


async def test_browser_shows_api_errors(sqlite_server: NocosupServer, page: Page) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "taken")
        await create(c, "boom", options={"test": {"crash": "lifespan"}})
    await sign_in(page, sqlite_server)

    # creating a name that exists: the API's code and message, in the dialog
    await page.click("#new-app")
    await page.fill("#create-name", "taken")
    await page.click("#create-submit")
    await expect(page.locator("#create-error")).to_have_text(
        "APP_EXISTS: application 'taken' already exists"
    )
    await expect(page.locator("#create-dialog")).to_be_visible()
    await page.click("#create-dialog .cancel")
    await expect(page.locator("#create-dialog")).to_be_hidden()

    # a start that fails: the error banner and the app's status both say why
    await app_row(page, "boom").get_by_role("button", name="Start").click()
    banner = page.locator("#errors .error")
    await expect(banner).to_contain_text("COMMAND_FAILED")
    await expect(banner).to_contain_text("lifespan exploded on purpose")
    await expect(env_status(page, "boom", "local")).to_have_text("error")
    await expect(app_row(page, "boom").locator(".status-error")).to_contain_text(
        "lifespan exploded on purpose"
    )
    await banner.get_by_role("button", name="Dismiss").click()
    await expect(banner).to_have_count(0)

    # a session that ends (here: the cookie is gone) sends the user back to sign in
    await page.context.clear_cookies()
    await app_row(page, "taken").get_by_role("button", name="Start").click()
    await expect(page.locator("#login-view")).to_be_visible()
    await expect(page.locator("#login-error")).to_have_text(
        "Your session has ended: sign in again."
    )
    await assert_not_reloaded(page)


@pytest.fixture
async def two_environments(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> Cluster:
    """Multi-environment mode: a supervisor and the workers env_a and env_b, registered."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    cluster.start_worker("env_a")
    cluster.start_worker("env_b")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
    return cluster


async def test_browser_multi_environment_mode(two_environments: Cluster, page: Page) -> None:
    supervisor, workers = two_environments.supervisor, two_environments.workers
    assert supervisor is not None
    await sign_in(page, supervisor)

    await page.click("#tab-envs")
    for name in ("env_a", "env_b"):
        env = page.locator(f'#envs-body tr[data-env="{name}"]')
        await expect(env.locator("td.status")).to_have_text("online")
        await expect(env.locator("td.url")).to_contain_text(workers[name].url)
        await expect(env.locator("td.instances")).to_have_text("1")
    await page.click("#tab-apps")

    # two environments online: none preselected; the app goes on both
    await page.click("#new-app")
    choices = page.locator("#create-envs-list input[name=environments]")
    await expect(choices).to_have_count(2)
    for i in range(2):
        await expect(choices.nth(i)).not_to_be_checked()
    await page.fill("#create-name", "split")
    await page.check('#create-envs-list input[value="env_a"]')
    await page.check('#create-envs-list input[value="env_b"]')
    await page.click("#create-submit")
    await expect(page.locator("#create-dialog")).to_be_hidden()

    row = app_row(page, "split")
    await expect(row.locator("td.envs")).to_have_text("env_a, env_b")
    await expect(row.locator('.env-status[data-env="env_b"] .env-name')).to_have_text("env_b")
    for name in ("env_a", "env_b"):
        await expect(env_status(page, "split", name)).to_have_text("idle")
    await row.get_by_role("button", name="Start").click()
    for name in ("env_a", "env_b"):
        await expect(env_status(page, "split", name)).to_have_text("running")

    # Open goes through the supervisor's proxy to the environment picked
    link = row.get_by_role("link", name="Open")
    await expect(link).to_have_attribute("href", "apps/split/admin?__env=env_a")
    for name in ("env_b", "env_a"):
        await row.locator("select.env-picker").select_option(name)
        await expect(link).to_have_attribute("href", f"apps/split/admin?__env={name}")
        async with page.context.expect_page() as opened:
            await link.click()
        tenant = await opened.value
        await expect(tenant.locator("#app-name")).to_have_text("split")
        await expect(tenant.locator("p").first).to_contain_text(f"in environment {name}")
        assert tenant.url == f"{supervisor.url}/apps/split/admin?__env={name}"
        await tenant.close()

    # Move: the dialog offers the online environments the app is not only on already
    async with supervisor.admin() as c:
        await create(c, "wander", environments=["env_a"])
    wander = app_row(page, "wander")
    await expect(wander.locator("td.envs")).to_have_text("env_a")
    await wander.get_by_role("button", name="Move", exact=True).click()
    await expect(page.locator("#move-dialog")).to_be_visible()
    await expect(page.locator("#move-from")).to_have_text("env_a")
    await expect(page.locator("#move-to option")).to_have_text(["env_b"])
    await page.click("#move-submit")
    await expect(page.locator("#move-dialog")).to_be_hidden()
    await expect(wander.locator("td.envs")).to_have_text("env_b")
    await expect(env_status(page, "wander", "env_b")).to_have_text("running")

    # a worker going away shows up live in the environment list
    assert await asyncio.to_thread(workers["env_b"].stop) is not None
    await page.click("#tab-envs")
    env_b = page.locator('#envs-body tr[data-env="env_b"]')
    await expect(env_b.locator("td.status")).to_have_text("offline")
    await expect(env_b.locator("td.instances")).to_have_text("0")
    await expect(page.locator('#envs-body tr[data-env="env_a"] td.status')).to_have_text("online")
    # and the app's statuses follow: unavailable where the environment went, running elsewhere
    await page.click("#tab-apps")
    await expect(env_status(page, "split", "env_b")).to_have_text("unavailable")
    await expect(row.locator(".status-error")).to_have_text("environment 'env_b' is offline")
    await expect(env_status(page, "split", "env_a")).to_have_text("running")
    await expect(link).to_have_attribute("href", "apps/split/admin?__env=env_a")
    await assert_not_reloaded(page)


async def test_browser_pages_and_filters_the_list(
    sqlite_server: NocosupServer, page: Page
) -> None:
    async with sqlite_server.admin() as c:
        for i in range(103):
            await create(c, f"app{i:03d}")
        await create(c, "blog")
        await create(c, "blog_eu")
        assert (await c.post("/api/apps/blog/start")).status_code == 200
    await sign_in(page, sqlite_server)
    rows = page.locator("#apps-body tr")
    await expect(rows).to_have_count(100)  # one page
    await expect(page.locator("#apps-count")).to_have_text("100 of 105 applications")
    await page.click("#apps-more")
    await expect(rows).to_have_count(105)
    await expect(page.locator("#apps-more")).to_be_hidden()
    await expect(page.locator("#apps-count")).to_have_text("105 applications")

    await page.fill("#filter-prefix", "blog")
    await expect(rows).to_have_count(2)
    await page.select_option("#filter-status", "running")
    await expect(rows).to_have_count(1)
    await expect(app_row(page, "blog")).to_have_count(1)
    await page.select_option("#filter-env", "local")
    await expect(rows).to_have_count(1)

    async with sqlite_server.admin() as c:
        # a change elsewhere that the filters let through shows up; others do not
        assert (await c.post("/api/apps/blog_eu/start")).status_code == 200
        await expect(app_row(page, "blog_eu")).to_have_count(1)
        assert (await c.post("/api/apps/app007/start")).status_code == 200
        assert (await c.post("/api/apps/blog/stop")).status_code == 200
        await expect(app_row(page, "blog")).to_have_count(0)  # no longer running
    await expect(app_row(page, "app007")).to_have_count(0)
    await expect(page.locator("#apps-count")).to_have_text("1 application")

    await page.fill("#filter-prefix", "nothing")
    await expect(page.locator("#apps-none-match")).to_be_visible()
    await expect(page.locator("#apps-empty")).to_be_hidden()
    await assert_not_reloaded(page)


async def test_browser_domains_and_removing_an_environment(
    two_environments: Cluster, page: Page
) -> None:
    supervisor = two_environments.supervisor
    assert supervisor is not None
    await sign_in(page, supervisor)
    asked: list[str] = []

    async def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)

    # custom domains from the create dialog: a bad one is refused with the field focused
    await page.click("#new-app")
    await page.fill("#create-name", "crm")
    await page.check('#create-envs-list input[value="env_a"]')
    await page.fill("#create-domains", "crm.example.com:80")
    await page.click("#create-submit")
    await expect(page.locator("#create-error")).to_contain_text("no port")
    await expect(page.locator("#create-domains")).to_be_focused()
    await page.fill("#create-domains", "CRM.example.com, crm.test")
    await page.click("#create-submit")
    await expect(page.locator("#create-dialog")).to_be_hidden()
    await expect(app_row(page, "crm").locator(".domains")).to_have_text(
        "crm.example.com, crm.test"
    )

    # an environment that hosts an app: removed only after the second yes (force)
    await page.click("#tab-envs")
    env_a = page.locator('#envs-body tr[data-env="env_a"]')

    def forced(response: Response) -> bool:
        return response.request.method == "DELETE" and response.url.endswith(
            "/api/environments/env_a?force=true"
        )

    # the forced DELETE is what to wait for: the row itself may be back before a look at
    # the list, since env_a's worker still runs and registers again within a heartbeat
    async with page.expect_response(forced) as removal:
        await env_a.get_by_role("button", name="Remove").click()
    assert (await removal.value).status == 200
    assert asked[0] == "Remove environment env_a?"
    assert "is online" in asked[1] and asked[1].endswith("Remove it anyway?")
    async with supervisor.admin() as c:

        async def gone() -> bool:
            envs = (await c.get("/api/environments")).json()["environments"]
            return "env_a" not in [e["name"] for e in envs]

        # the worker still runs: its next heartbeat registers it again, and the list shows it
        await expect(env_a).to_have_count(1)
        assert not await gone()
    await expect(page.locator('#envs-body tr[data-env="env_b"] td.status')).to_have_text("online")
    await assert_not_reloaded(page)
