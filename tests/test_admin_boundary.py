"""The admin boundary (docs/security.md): tenants never reach the admin, the page's session
cookie cannot be ridden by other sites, logins are limited, redirects stay on this origin.

Tenants here are the echo app of tests/factories.py (``options.test.echo``): it answers
every request with the headers it received, so a test sees exactly what a tenant sees.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from nocosup.auth import COOKIE_NAME
from nocosup.host import without_admin_cookie
from tests.cluster import Cluster
from tests.conftest import REDIS_URL
from tests.inproc import BASE_URL, inproc_settings, running_host
from tests.servers import ADMIN_TOKEN, AUTH, ROOT, NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create

ECHO = {"test": {"echo": True}}


def session_of(response: httpx.Response) -> str:
    """The session id a login answer sets in the cookie."""
    assert response.status_code == 204, response.text
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    return cookie.split(";", 1)[0].split("=", 1)[1]


async def login(c: httpx.AsyncClient) -> str:
    return session_of(await c.post("/api/login", json={"token": ADMIN_TOKEN}))


def page_headers(server_url: str) -> dict[str, str]:
    """What Chromium sends with the page's fetch() writes."""
    return {"Origin": server_url, "Sec-Fetch-Site": "same-origin"}


async def assert_tenant_never_sees_admin(c: httpx.AsyncClient, app: str, session: str) -> None:
    """Every way a request can reach tenant ``app`` while the browser holds the admin
    cookie: the tenant gets the other cookies byte for byte, never the admin's."""
    cookie = f"theme=dark; {COOKIE_NAME}={session};  other=a=b ;last=1"
    kept = "theme=dark;  other=a=b ;last=1"
    seen: list[dict[str, Any]] = []
    for method, path, extra in (
        ("GET", f"/apps/{app}/", {}),
        ("POST", f"/apps/{app}/api/x", {}),
        ("GET", "/api/info", {"X-App": app}),  # no host route: the tenant's
        ("GET", "/anything/else", {"X-App": app}),
        ("DELETE", "/api/records/1", {"X-App": app}),
        # a script that sends the admin token to an app by mistake does not hand it over
        ("GET", f"/apps/{app}/x", AUTH),
        ("GET", "/api/info", {"X-App": app, **AUTH}),
    ):
        r = await c.request(method, path, headers={"Cookie": cookie, **extra})
        assert r.status_code == 200 and r.headers.get("x-echo") == "1", (path, r.text)
        seen.append(r.json())
    # the admin cookie alone: the Cookie header goes away entirely
    r = await c.get(f"/apps/{app}/", headers={"Cookie": f"{COOKIE_NAME}={session}"})
    only = r.json()
    assert not [v for k, v in only["headers"] if k == "cookie"]
    # the tenant's own Authorization passes untouched
    r = await c.get(f"/apps/{app}/", headers={"Authorization": "Bearer tenant-user-token"})
    assert ["authorization", "Bearer tenant-user-token"] in r.json()["headers"]
    for got in seen:
        cookies = [v for k, v in got["headers"] if k == "cookie"]
        assert cookies == [kept], got
        for name, value in got["headers"]:
            assert COOKIE_NAME not in value and session not in value, (name, value)
            assert ADMIN_TOKEN not in value, (name, value)
    # X-App never takes a host route: the host answers these, the tenant is not asked
    r = await c.get("/api/apps", headers={"Cookie": cookie, "X-App": app})
    assert r.status_code == 200 and "apps" in r.json() and "x-echo" not in r.headers
    for path in ("/healthz", "/readyz", "/", "/ui/app.js"):
        r = await c.get(path, headers={"X-App": app})
        assert r.status_code == 200 and "x-echo" not in r.headers, path
    r = await c.post("/api/login", headers={"X-App": app}, json={"token": "wrong"})
    assert_error(r, 401, "UNAUTHORIZED")


async def test_the_admin_cookie_never_reaches_a_tenant(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "echo", options=ECHO)
    async with sqlite_server.client() as c:
        session = await login(c)
        assert ADMIN_TOKEN not in session and len(session) >= 32
        c.cookies.clear()
        await assert_tenant_never_sees_admin(c, "echo", session)


async def test_the_issue_repro_reaches_the_host_not_the_tenant(
    sqlite_server: NocosupServer,
) -> None:
    """``curl -H 'X-App: echo' -H "Cookie: nocosup_admin=$TOKEN" $SUP/api/apps``: the host
    answers (and a raw token in the cookie is no session)."""
    async with sqlite_server.admin() as c:
        await create(c, "echo", options=ECHO)
    async with sqlite_server.client() as c:
        r = await c.get(
            "/api/apps", headers={"X-App": "echo", "Cookie": f"{COOKIE_NAME}={ADMIN_TOKEN}"}
        )
        assert_error(r, 401, "UNAUTHORIZED")
        assert "x-echo" not in r.headers


async def test_the_admin_cookie_never_reaches_a_tenant_through_the_proxy(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    cluster.start_worker("env_a")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "echo", options=ECHO, environments=["env_a"])
        assert (await c.post("/api/apps/echo/start")).status_code == 200
    async with supervisor.client() as c:
        session = await login(c)
        c.cookies.clear()
        await assert_tenant_never_sees_admin(c, "echo", session)
        # proxied for real: the worker's answer carries the proxy's forwarded headers
        seen = (await c.get("/apps/echo/")).json()
        assert ["x-forwarded-prefix", "/apps/echo"] in seen["headers"]


def test_without_admin_cookie_keeps_other_cookies_byte_exact() -> None:
    name = COOKIE_NAME.encode()
    headers = [
        (b"host", b"h"),
        (b"cookie", b"a=1; " + name + b"=s; b=2"),
        (b"cookie", name + b"=s"),
        (b"cookie", b"x=" + name),  # a value that mentions the name is not the cookie
        (b"cookie", b"c=3;" + name + b"=s"),
        (b"cookie", name + b"=s; d=4"),
    ]
    assert without_admin_cookie(headers) == [
        (b"host", b"h"),
        (b"cookie", b"a=1; b=2"),
        (b"cookie", b"x=" + name),
        (b"cookie", b"c=3"),
        (b"cookie", b"d=4"),
    ]
    untouched = [(b"cookie", b"a=1;b=2")]
    assert without_admin_cookie(untouched) is untouched


# --- sessions ----------------------------------------------------------------------------


async def test_logout_revokes_the_session_and_only_a_hash_is_stored(
    sqlite_server: NocosupServer,
) -> None:
    async with sqlite_server.client() as c:
        session = await login(c)
        c.cookies.clear()
    rows = sqlite3.connect(sqlite_server.storage / "nocosup.sqlite").execute(
        "SELECT id_hash, created_at, expires_at FROM nocosup_sessions"
    )
    stored = [tuple(row) for row in rows]
    assert len(stored) == 1 and session not in repr(stored) and ADMIN_TOKEN not in repr(stored)
    copy = {"Cookie": f"{COOKIE_NAME}={session}"}
    async with sqlite_server.client() as c:
        assert (await c.get("/api/apps", headers=copy)).status_code == 200
        # a logout that another site triggers is refused like any other write
        assert_error(await c.post("/api/logout", headers=copy), 403, "CSRF_REJECTED")
        r = await c.post("/api/logout", headers={**copy, **page_headers(sqlite_server.url)})
        assert r.status_code == 204
        # the copied cookie is dead, not just deleted from one browser
        assert_error(await c.get("/api/apps", headers=copy), 401, "UNAUTHORIZED")
        assert_error(await c.get("/api/events", headers=copy), 401, "UNAUTHORIZED")


async def test_sessions_live_in_the_registry_database(
    servers: ServerFactory, pg_env: dict[str, str]
) -> None:
    """Two supervisors on one registry database: a session made on one opens the other."""
    one = servers.start(**pg_env)
    two = servers.start(**pg_env)
    async with one.client() as c:
        session = await login(c)
    copy = {"Cookie": f"{COOKIE_NAME}={session}"}
    async with two.client() as c:
        assert (await c.get("/api/apps", headers=copy)).status_code == 200
        r = await c.post("/api/logout", headers={**copy, **page_headers(two.url)})
        assert r.status_code == 204
    async with one.client() as c:
        assert_error(await c.get("/api/apps", headers=copy), 401, "UNAUTHORIZED")


async def test_expired_sessions_and_a_changed_token_end_sessions(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_SESSION_TTL="60")
    async with running_host(settings) as h, h.client() as c:
        session = await login(c)
        assert (
            "max-age=60"
            in (await c.post("/api/login", json={"token": ADMIN_TOKEN}))
            .headers["set-cookie"]
            .lower()
        )
        c.cookies.clear()
        copy = {"Cookie": f"{COOKIE_NAME}={session}"}
        assert (await c.get("/api/apps", headers=copy)).status_code == 200
        db = h.host.role.registry_db  # type: ignore[attr-defined]
        await db.execute("UPDATE nocosup_sessions SET expires_at = '2000-01-01T00:00:00.000Z'")
        assert_error(await c.get("/api/apps", headers=copy), 401, "UNAUTHORIZED")
        fresh = await login(c)
        c.cookies.clear()
    other = inproc_settings(tmp_path, NOCOSUP_ADMIN_TOKEN="another-token-" + "x" * 32)
    async with running_host(other) as h, h.client() as c:
        r = await c.get("/api/apps", headers={"Cookie": f"{COOKIE_NAME}={fresh}"})
        assert_error(r, 401, "UNAUTHORIZED")


# --- the admin host ----------------------------------------------------------------------


async def test_admin_host_serves_the_admin_only_on_its_host(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_ADMIN_HOST="admin.example")
    admin = {"Host": "admin.example", **AUTH}
    async with server.client() as c:
        assert (await c.get("/api/apps", headers=admin)).status_code == 200
        assert (await c.get("/", headers={"Host": "admin.example:8443"})).status_code == 200
        r = await c.post("/api/apps", headers=admin, json={"name": "shop"})
        assert r.status_code == 201, r.text
        for host in ("127.0.0.1", "tenants.example", "admin.example.evil"):
            for path in ("/api/apps", "/", "/ui/app.js", "/api/login", "/api/nothing"):
                r = await c.get(path, headers={**AUTH, "Host": host})
                assert_error(r, 404, "NOT_FOUND")
            # probes and tenants answer on any host
            assert (await c.get("/healthz", headers={"Host": host})).status_code == 200
            r = await c.get("/apps/shop/api/info", headers={"Host": host})
            assert r.status_code == 200 and r.json()["app"] == "shop"


# --- CSRF ----------------------------------------------------------------------------------


async def test_cookie_writes_need_json_and_the_same_origin(sqlite_server: NocosupServer) -> None:
    url = sqlite_server.url
    async with sqlite_server.client() as c:
        session = await login(c)
        c.cookies.clear()
        cookie = {"Cookie": f"{COOKIE_NAME}={session}"}
        body = b'{"name": "forged"}'
        refused = [
            # the reported attack: a text/plain form post from another site
            {"Content-Type": "text/plain", "Origin": "https://evil.example"},
            {"Content-Type": "text/plain", "Origin": url, "Sec-Fetch-Site": "same-origin"},
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": url},
            {"Content-Type": "application/json", "Origin": "https://evil.example"},
            {"Content-Type": "application/json", "Origin": "null"},
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
            {"Content-Type": "application/json"},  # neither header
            {"Content-Type": "application/json", "Origin": url.replace("http:", "https:")},
        ]
        for extra in refused:
            r = await c.post("/api/apps", content=body, headers={**cookie, **extra})
            assert_error(r, 403, "CSRF_REJECTED")
        assert_error(await c.get("/api/apps/forged", headers=AUTH), 404, "APP_NOT_FOUND")
        r = await c.delete("/api/apps/forged", headers={**cookie, "Origin": "https://evil.example"})
        assert_error(r, 403, "CSRF_REJECTED")

        # what the page sends passes: either header is enough
        for n, extra in enumerate(
            (
                {"Origin": url},
                {"Sec-Fetch-Site": "same-origin"},
                {"Origin": url, "Sec-Fetch-Site": "same-origin"},
            )
        ):
            r = await c.post(
                "/api/apps",
                json={"name": f"page{n}"},
                headers={**cookie, "Content-Type": "application/json; charset=utf-8", **extra},
            )
            assert r.status_code == 201, r.text
        # a write without a body needs no Content-Type, still the origin
        assert_error(await c.post("/api/apps/page0/start", headers=cookie), 403, "CSRF_REJECTED")
        r = await c.post("/api/apps/page0/start", headers={**cookie, "Origin": url})
        assert r.status_code == 200, r.text
        # reads by cookie need no origin; the Bearer header needs none at all (curl -d)
        assert (await c.get("/api/apps", headers=cookie)).status_code == 200
        r = await c.post(
            "/api/apps",
            content=body,
            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 201, r.text


# --- logins --------------------------------------------------------------------------------


async def test_failed_logins_are_logged_and_limited(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_LOGIN_FAILURES="3")
    async with server.client() as c:
        for i in range(3):
            r = await c.post("/api/login", json={"token": f"guess-number-{i}"})
            assert_error(r, 401, "UNAUTHORIZED")
        for token in ("guess-number-3", ADMIN_TOKEN):  # even the right token waits
            r = await c.post("/api/login", json={"token": token})
            assert_error(r, 429, "TOO_MANY_LOGINS")
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert "set-cookie" not in r.headers
        # the Bearer token is not a login: scripts carry on
        assert (await c.get("/api/apps", headers=AUTH)).status_code == 200
    log = server.log.read_text()
    assert log.count("failed login from 127.0.0.1") == 3
    assert "guess-number" not in log and ADMIN_TOKEN not in log


async def test_logins_are_limited_per_client_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """In process (the transport's peer is 127.0.0.1): X-Forwarded-For names the client
    only when the peer is in NOCOSUP_TRUSTED_PROXIES."""
    settings = inproc_settings(
        tmp_path, NOCOSUP_LOGIN_FAILURES="2", NOCOSUP_TRUSTED_PROXIES="127.0.0.0/8"
    )
    async with running_host(settings) as h, h.client() as c:
        for client in ("198.51.100.1", "198.51.100.1"):
            r = await c.post("/api/login", json={"token": "x"}, headers={"X-Forwarded-For": client})
            assert_error(r, 401, "UNAUTHORIZED")
        limited = {"X-Forwarded-For": "198.51.100.1"}
        r = await c.post("/api/login", json={"token": "x"}, headers=limited)
        assert_error(r, 429, "TOO_MANY_LOGINS")
        other = {"X-Forwarded-For": "198.51.100.1, 198.51.100.2"}
        r = await c.post("/api/login", json={"token": ADMIN_TOKEN}, headers=other)
        assert r.status_code == 204


@pytest.mark.parametrize(
    ("trusted", "headers", "secure"),
    [
        ("", {}, False),
        ("", {"X-Forwarded-Proto": "https"}, False),  # from an untrusted peer: ignored
        ("127.0.0.1", {"X-Forwarded-Proto": "https"}, True),
        ("10.0.0.0/8, 127.0.0.0/8", {"X-Forwarded-Proto": "http, https"}, True),
        ("127.0.0.1", {"X-Forwarded-Proto": "http"}, False),
    ],
)
async def test_the_cookie_is_secure_behind_a_trusted_https_proxy(
    tmp_path: Path, trusted: str, headers: dict[str, str], secure: bool
) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_TRUSTED_PROXIES=trusted)
    async with running_host(settings) as h, h.client() as c:
        r = await c.post("/api/login", json={"token": ADMIN_TOKEN}, headers=headers)
        attributes = {a.strip().lower() for a in r.headers["set-cookie"].split(";")[1:]}
        assert ("secure" in attributes) is secure, attributes
        cookie = {"Cookie": f"{COOKIE_NAME}={session_of(r)}"}
        c.cookies.clear()
        # and the same-origin check follows the public scheme
        origin = ("https://" if secure else "http://") + BASE_URL.split("://", 1)[1]
        r = await c.post(
            "/api/apps", json={"name": "sec"}, headers={**headers, **cookie, "Origin": origin}
        )
        assert r.status_code == 201, r.text


async def test_secure_cookie_over_direct_https(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        transport = httpx.ASGITransport(app=h.host)
        async with httpx.AsyncClient(transport=transport, base_url="https://n.test") as c:
            r = await c.post("/api/login", json={"token": ADMIN_TOKEN})
            assert "secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize("token", ["short", "x" * 31])
def test_a_short_admin_token_is_a_configuration_error(servers: ServerFactory, token: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nocosup", "serve", "--port", "1"],
        env=servers.env(NOCOSUP_ADMIN_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "NOCOSUP_ADMIN_TOKEN must be at least 32 characters" in proc.stderr
    assert token not in proc.stderr.replace("NOCOSUP_ADMIN_TOKEN", "")
    assert "Traceback" not in proc.stderr


# --- redirects -------------------------------------------------------------------------------


async def test_slash_redirects_are_relative(sqlite_server: NocosupServer) -> None:
    evil = {"Host": "evil.example", **AUTH}
    async with sqlite_server.client() as c:
        for path, location in (
            ("/apps/x", "/apps/x/"),
            ("/apps/x?y=1&z=%2F", "/apps/x/?y=1&z=%2F"),
            ("/api/apps/", "/api/apps"),
            ("/api/apps/?limit=1", "/api/apps?limit=1"),
            ("/healthz/", "/healthz"),
        ):
            r = await c.get(path, headers=evil)
            assert r.status_code == 307, (path, r.text)
            assert r.headers["location"] == location
        assert_error(await c.get("/nothing/", headers=evil), 404, "NOT_FOUND")


async def test_slash_redirects_keep_the_root_path(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        transport = httpx.ASGITransport(app=h.host, root_path="/sup")
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
            r = await c.get("/sup/apps/x?q=1", headers={"Host": "evil.example"})
            assert r.status_code == 307 and r.headers["location"] == "/sup/apps/x/?q=1"
            r = await c.get("/sup/healthz/", headers={"Host": "evil.example"})
            assert r.status_code == 307 and r.headers["location"] == "/sup/healthz"
