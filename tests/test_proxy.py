"""The reverse proxy over real servers.

The upstream is a real uvicorn process running ``tests.proxy_upstream``; the proxy runs in
an in-process uvicorn server on a free port (so a test can look at its pool). Corner
cases that a well-behaved server never produces come from small raw asyncio servers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nocosup.fastpath import FastHttpToolsProtocol, TenantRoute
from nocosup.inflight import InFlight
from nocosup.metrics import Metrics
from nocosup.proxy import Proxy, close_code
from nocosup.proxy_client import LeanClient, Upstream
from tests.proxy_upstream import pattern
from tests.servers import ROOT, free_port

MB = 1024 * 1024
PREFIX = "/apps/demo"
#: Set by tests/test_fastpath.py while it runs these tests again: every proxy server of
#: this module then serves on nocosup's fast-path protocol (nocosup.fastpath).
FAST_PATH = False


# ------------------------------------------------------------------------------ fixtures


def start_uvicorn(
    app: str, log: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """A real uvicorn process on a free port, output to ``log`` (see :func:`wait_ready`)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", "warning", *args]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start:\n{log.read_text()}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real uvicorn process serving the test upstream app."""
    log = tmp_path_factory.mktemp("upstream") / "upstream.log"
    proc, url = start_uvicorn("tests.proxy_upstream:app", log)
    try:
        wait_ready(proc, url + PREFIX + "/state", log)
        yield url
    finally:
        stop(proc)


class ProxyServer:
    """An in-process uvicorn serving a tiny ASGI app that forwards everything to
    ``upstream`` the way the supervisor's gateway does (``root_path`` = the app prefix)."""

    def __init__(
        self, upstream: str, server_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.upstream = upstream
        self.proxy = Proxy(**kwargs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        #: Requests the fast path took (FAST_PATH only).
        self.fast_routed = 0
        app: Any = self.app
        #: The fast path's counters (FAST_PATH only).
        self.metrics: Metrics | None = None
        if FAST_PATH:
            app = _FastFront(self)
            self.metrics = app.metrics
            # as `nocosup serve` runs it: uvicorn's proxy-header middleware would hide
            # the app's fast_route
            server_options = {
                "http": FastHttpToolsProtocol,
                "proxy_headers": False,
                **(server_options or {}),
            }
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            interface="asgi3",
            log_config=None,  # leave the test process's logging alone (caplog sees it)
            log_level="warning",
            **(server_options or {}),
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope = dict(scope)
        scope["root_path"] = PREFIX
        await self.proxy.forward(self.upstream, scope, receive, send)

    @property
    def client(self) -> LeanClient:
        assert isinstance(self.proxy.client, LeanClient)
        return self.proxy.client

    def pool(self) -> dict[str, int]:
        """active/idle/waiting connections to the upstream (zeros before the first use)."""
        stats = self.client.stats()
        return stats.get(Upstream.parse(self.upstream).url, {"active": 0, "idle": 0, "waiting": 0})

    async def start(self) -> ProxyServer:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("proxy server stopped")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        await self.proxy.aclose()

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, trust_env=False, **kwargs)


class _FastFront:
    """A proxy server's app with the ``fast_route`` nocosup.fastpath asks: every HTTP
    request it is offered is routed the way the supervisor routes it (a TenantRoute to a
    gateway with one environment), so the express lane takes what it can."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.gateway = _Gateway(server)
        self.metrics = Metrics("front")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.server.app(scope, receive, send)

    def fast_route(self, scope: dict[str, Any]) -> Any:
        self.server.fast_routed += 1
        tenant = {**scope, "root_path": PREFIX}
        return TenantRoute(self.gateway, self.metrics, "demo", tenant)

    # the lean lane's replay of a connection's last request (nocosup.leanlane.Replay)

    @property
    def fast_path_requests(self) -> int:
        return self.server.fast_routed

    @fast_path_requests.setter
    def fast_path_requests(self, value: int) -> None:
        self.server.fast_routed = value

    def replayable(self, headers: list[tuple[bytes, bytes]]) -> bool:
        return True

    def replays_routes(self, gateway: object) -> bool:
        return gateway is self.gateway


class _Gateway:
    """What a ProxyGateway gives the fast path, for one upstream (environment "env")."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.proxy = server.proxy
        self.inflight = InFlight()

    def express_plan(self, name: str, scope: dict[str, Any]) -> tuple[str, str]:
        return "env", self.server.upstream

    def plan_stamp(self, name: str, env: str) -> tuple[Any, ...]:
        return (self.server.upstream,)

    def stamp_holds(self, name: str, env: str, stamp: tuple[Any, ...]) -> bool:
        return stamp == (self.server.upstream,)

    async def handle(self, name: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def exchange(tracked: Any) -> None:
            await self.proxy.forward(self.server.upstream, scope, receive, tracked)

        await self.inflight.serve("env", scope, receive, send, exchange)


@contextlib.asynccontextmanager
async def proxy_server(
    upstream: str, server_options: dict[str, Any] | None = None, **kwargs: Any
) -> AsyncIterator[ProxyServer]:
    server = await ProxyServer(upstream, server_options, **kwargs).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def proxied(upstream: str) -> AsyncIterator[ProxyServer]:
    """The shared proxy in front of the upstream, default settings."""
    async with proxy_server(upstream) as server:
        yield server


@pytest.fixture
async def client(proxied: ProxyServer) -> AsyncIterator[httpx.AsyncClient]:
    async with proxied.http() as c:
        yield c


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[str]:
    """A misbehaving upstream: ``handler`` gets each raw connection."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds (a liveness bound, not a performance assertion)."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def upstream_state(upstream: str) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False) as c:
        return (await c.get(upstream + PREFIX + "/state")).json()


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


def headers_of(echo: dict[str, Any]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


# ---------------------------------------------------------------------------- HTTP basics


async def test_get_keeps_path_and_query_and_sends_no_body(client: httpx.AsyncClient) -> None:
    r = await client.get(PREFIX + "/echo/a%2Fb c?x=1&y=%20z")
    assert r.status_code == 200
    echo = r.json()
    assert echo["method"] == "GET"
    assert echo["raw_path"] == "/apps/demo/echo/a%2Fb%20c"
    assert echo["query"] == "x=1&y=%20z"
    headers = headers_of(echo)
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert echo["size"] == 0


async def test_post_body_with_length(client: httpx.AsyncClient) -> None:
    body = b'{"hello": "world"}'
    r = await client.post(PREFIX + "/echo", content=body)
    echo = r.json()
    assert (echo["method"], echo["size"]) == ("POST", len(body))
    assert echo["sha256"] == hashlib.sha256(body).hexdigest()
    assert headers_of(echo)["content-length"] == [str(len(body))]


async def test_post_chunked_body_stays_chunked(client: httpx.AsyncClient) -> None:
    parts = [b"a" * 70_000, b"b" * 10, b"c" * 200_000]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    r = await client.put(PREFIX + "/echo", content=body())
    echo = r.json()
    assert echo["size"] == sum(map(len, parts))
    assert echo["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    headers = headers_of(echo)
    assert "content-length" not in headers  # never both
    assert headers["transfer-encoding"] == ["chunked"]


async def test_empty_post_sends_content_length_zero(client: httpx.AsyncClient) -> None:
    echo = (await client.post(PREFIX + "/echo", content=b"")).json()
    assert echo["size"] == 0
    assert headers_of(echo)["content-length"] == ["0"]


async def test_head_then_get_on_the_same_connection(proxied: ProxyServer) -> None:
    async with proxied.http() as c:
        r = await c.head(PREFIX + "/blob?size=5000")
        assert r.status_code == 200
        assert r.headers["content-length"] == "5000"
        assert r.content == b""
        r = await c.get(PREFIX + "/blob?size=5000")
        assert r.content == pattern(5000)
    assert proxied.pool()["active"] == 0


# ------------------------------------------------------------------------ large bodies


async def test_upload_10mb(client: httpx.AsyncClient) -> None:
    body = pattern(10 * MB)
    echo = (await client.post(PREFIX + "/echo", content=body)).json()
    assert echo["size"] == len(body)
    assert echo["sha256"] == hashlib.sha256(body).hexdigest()


async def test_upload_is_streamed_not_buffered(client: httpx.AsyncClient, upstream: str) -> None:
    """The upstream sees the first megabyte while the client still holds back the rest:
    a proxy that buffered the body would never get there."""
    first = pattern(MB)

    async def body() -> AsyncIterator[bytes]:
        yield first

        async def arrived() -> bool:
            return (await upstream_state(upstream))["received"] >= len(first)

        await eventually(arrived, "the first megabyte reached the upstream")
        for _ in range(9):
            yield first

    r = await client.post(PREFIX + "/sink", content=body())
    assert r.json() == {"size": 10 * MB}


async def test_download_10mb_chunked_and_with_length(client: httpx.AsyncClient) -> None:
    expected = hashlib.sha256(pattern(10 * MB)).hexdigest()
    for path, length in ((f"/stream?size={10 * MB}", None), (f"/blob?size={10 * MB}", 10 * MB)):
        async with client.stream("GET", PREFIX + path) as r:
            assert r.status_code == 200
            assert r.headers.get("content-length") == (str(length) if length else None)
            digest = hashlib.sha256()
            async for chunk in r.aiter_raw():
                digest.update(chunk)
        assert digest.hexdigest() == expected


async def test_response_is_streamed(client: httpx.AsyncClient) -> None:
    """``/drip`` never ends: getting several of its pieces proves nothing waits for the end."""
    wanted = 3 * 1024  # three of the upstream's 1 KiB writes
    got = b""
    async with client.stream("GET", PREFIX + "/drip") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            got += chunk
            if len(got) >= wanted:
                break
    # an empty or cut answer ends the loop early: the length tells
    assert len(got) >= wanted, got
    assert got == b"x" * len(got)


# ------------------------------------------------------------------------------ headers


async def test_forwarded_headers_and_host(upstream: str) -> None:
    spoof = {
        "Host": "public.example:8443",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Prefix": "/spoofed",
        "X-Forwarded-Host": "spoofed.example",
        "X-Forwarded-Proto": "https",
    }
    # The front server does not trust the peer: its address is appended to the chain.
    options = {"proxy_headers": False}
    async with proxy_server(upstream, options) as proxied, proxied.http() as c:
        headers = headers_of((await c.get(PREFIX + "/echo", headers=spoof)).json())
    assert headers["host"] == [upstream.removeprefix("http://")]  # never the client's Host
    assert headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert headers["x-forwarded-host"] == ["public.example:8443"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-prefix"] == [PREFIX]
    # It trusts the peer (uvicorn's default for 127.0.0.1) and took the client from the
    # header: the chain is not given the same address twice. (That middleware wraps the
    # app, so with FAST_PATH it hides fast_route: this is the ASGI fallback.)
    async with proxy_server(upstream, {"proxy_headers": True}) as proxied, proxied.http() as c:
        headers = headers_of((await c.get(PREFIX + "/echo", headers=spoof)).json())
    assert headers["x-forwarded-for"] == ["203.0.113.9"]
    assert headers["x-forwarded-proto"] == ["https"]  # uvicorn applied the trusted header


async def test_hop_by_hop_request_headers_are_stripped(client: httpx.AsyncClient) -> None:
    r = await client.get(
        PREFIX + "/echo",
        headers={
            "Connection": "keep-alive, X-Named-Hop",
            "X-Named-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-T",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Expect": "100-continue",
            "X-End-To-End": "kept",
        },
    )
    headers = headers_of(r.json())
    for name in (
        "connection",
        "x-named-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
        "transfer-encoding",
        "expect",
    ):
        assert name not in headers, name
    assert headers["x-end-to-end"] == ["kept"]


async def test_hop_by_hop_response_headers_are_stripped(client: httpx.AsyncClient) -> None:
    r = await client.get(PREFIX + "/hop")
    assert r.content == b"hop"
    names = {k.lower() for k, _ in r.headers.multi_items()}
    for name in ("x-hop-named", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in names, name
    assert r.headers.get("connection", "keep-alive") == "keep-alive"
    assert r.headers["x-kept"] == "yes"
    # the front server's own Date and Server only, not the upstream's as well
    assert len(r.headers.get_list("date")) == 1
    assert len(r.headers.get_list("server")) == 1


async def test_set_cookie_passes_and_is_never_replayed(proxied: ProxyServer) -> None:
    async with proxied.http() as alice:
        r = await alice.get(PREFIX + "/cookie")
        assert "session=secret-of-client-a" in r.headers["set-cookie"]
    async with proxied.http() as bob:
        for _ in range(3):
            echo = (await bob.get(PREFIX + "/echo")).json()
            assert "cookie" not in headers_of(echo)


# ----------------------------------------------------------------------------- failures


async def test_upstream_down_answers_502_json() -> None:
    async with proxy_server(f"http://127.0.0.1:{free_port()}") as proxied:
        async with proxied.http() as c:
            r = await c.get(PREFIX + "/echo")
            assert_json_error(r, 502, "UPSTREAM_CONNECT_ERROR")
            r = await c.post(PREFIX + "/echo", content=b"x" * 1000)
            assert_json_error(r, 502, "UPSTREAM_CONNECT_ERROR")


async def test_upstream_slow_answers_504_json(upstream: str) -> None:
    async with proxy_server(upstream, read_timeout=0.2) as proxied, proxied.http() as c:
        r = await c.get(PREFIX + "/slow?delay=3")
        assert_json_error(r, 504, "UPSTREAM_TIMEOUT")
        assert r.json()["error"]["phase"] == "read"
        assert proxied.pool()["active"] == 0
        assert (await c.get(PREFIX + "/echo")).status_code == 200


async def test_busy_pool_answers_504(upstream: str) -> None:
    async with proxy_server(upstream, max_connections=1, pool_timeout=0.1) as proxied:
        async with proxied.http() as c, c.stream("GET", PREFIX + "/drip") as held:
            assert held.status_code == 200
            r = await c.get(PREFIX + "/echo")
            assert_json_error(r, 504, "UPSTREAM_TIMEOUT")
            assert r.json()["error"]["phase"] == "pool"


async def test_client_disconnect_mid_stream_frees_the_connection(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = await upstream_state(upstream)
    async with proxy_server(upstream, max_connections=1) as proxied:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        writer.write(f"GET {PREFIX}/drip HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await read_head(reader)
        await reader.read(1024)
        writer.transport.abort()  # the client vanishes mid-body

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the upstream connection was released")

        async def stopped() -> bool:
            state = await upstream_state(upstream)
            return state["streams_finished"] > before["streams_finished"]

        await eventually(stopped, "the upstream stream was stopped")
        async with proxied.http() as c:  # the single pooled slot serves again
            assert (await c.get(PREFIX + "/echo")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_client_disconnect_mid_upload(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with proxy_server(upstream, max_connections=1) as proxied:
        _, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        writer.write(
            f"POST {PREFIX}/sink HTTP/1.1\r\nHost: x\r\nContent-Length: {10 * MB}\r\n\r\n".encode()
        )
        writer.write(b"y" * MB)
        await writer.drain()

        async def uploading() -> bool:
            return (await upstream_state(upstream))["received"] > 0

        await eventually(uploading, "the upload reached the upstream")
        writer.transport.abort()

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the upstream connection was dropped")
        async with proxied.http() as c:
            assert (await c.get(PREFIX + "/echo")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_aclose_closes_pooled_connections(upstream: str) -> None:
    async with proxy_server(upstream) as proxied, proxied.http() as c:
        await c.get(PREFIX + "/echo")
        assert proxied.pool()["idle"] == 1
        await proxied.proxy.aclose()
        assert proxied.pool() == {"active": 0, "idle": 0, "waiting": 0}


# -------------------------------------------------------------- misbehaving upstreams


def answer(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def test_content_length_with_transfer_encoding_is_rejected() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            answer(
                b"HTTP/1.1 200 OK",
                b"Content-Length: 3",
                b"Transfer-Encoding: chunked",
                body=b"3\r\nabc\r\n0\r\n\r\n",
            )
        )
        await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            assert_json_error(await c.get(PREFIX + "/x"), 502, "UPSTREAM_PROTOCOL_ERROR")


async def test_garbage_answer_is_502() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SPDY/9 what is this\r\n\r\n")
        await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            assert_json_error(await c.get(PREFIX + "/x"), 502, "UPSTREAM_PROTOCOL_ERROR")
        assert proxied.pool()["active"] == 0


async def test_closed_without_answer_is_502() -> None:
    """A new connection closed after the request and before a byte of the answer (a
    server shutting down closing what it accepted): a GET goes once more, on another new
    connection, since nothing says it ran; a POST never goes twice. Both end in 502 here,
    where no fallback is offered (the gateway answers 503 or tries another environment)."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            assert_json_error(await c.get(PREFIX + "/x"), 502, "UPSTREAM_PROTOCOL_ERROR")
            assert [h.split(b" ", 1)[0] for h in seen] == [b"GET", b"GET"]
            seen.clear()
            r = await c.post(PREFIX + "/x", content=b"once")
            assert_json_error(r, 502, "UPSTREAM_PROTOCOL_ERROR")
            assert [h.split(b" ", 1)[0] for h in seen] == [b"POST"]


async def test_body_cut_short_truncates_the_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: 100000", body=b"z" * 50_000))
        await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(PREFIX + "/x")

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the broken connection was dropped")


async def test_body_until_close_and_interim_answers() -> None:
    body = pattern(300_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer(b"HTTP/1.1 103 Early Hints", b"Link: </a.css>; rel=preload"))
        writer.write(answer(b"HTTP/1.1 200 OK", b"Connection: close", b"X-Real: 1", body=body))
        await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            r = await c.get(PREFIX + "/x")
        assert r.status_code == 200
        assert r.headers["x-real"] == "1"
        assert "link" not in r.headers
        assert r.content == body
        assert proxied.pool() == {"active": 0, "idle": 0, "waiting": 0}


async def test_kept_alive_connection_closed_by_upstream_is_retried_when_safe() -> None:
    """The upstream answers one request per connection but says keep-alive, then closes
    on the next request: GET is replayed on a fresh connection, POST is not."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await read_head(reader)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok"))
        await writer.drain()
        await read_head(reader)  # the next request on this connection: drop it unanswered

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            assert (await c.get(PREFIX + "/1")).content == b"ok"
            assert (await c.get(PREFIX + "/2")).content == b"ok"
            assert connections == 2
            assert_json_error(
                await c.post(PREFIX + "/3", content=b"once"), 502, "UPSTREAM_PROTOCOL_ERROR"
            )
            assert connections == 2


# ---------------------------------------------------------------------------- WebSocket


async def test_websocket_echo_text_and_binary(proxied: ProxyServer) -> None:
    async with ws_connect(
        proxied.ws_url + PREFIX + "/ws",
        subprotocols=["superchat", "chat"],
        proxy=None,
        max_size=None,
    ) as ws:
        assert ws.subprotocol == "chat"  # the one the upstream picked
        assert ws.response.headers["x-ws-upstream"] == "yes"
        assert ws.response.headers["set-cookie"] == "ws=1"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        big = os.urandom(2 * MB)
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send("headers")
        seen = dict(map(tuple, json.loads(await ws.recv())))
        assert seen["x-forwarded-prefix"] == PREFIX
        assert seen["x-forwarded-for"] == "127.0.0.1"


async def test_websocket_message_over_the_limit_from_upstream_closes_1009(upstream: str) -> None:
    """The proxy's ws_max_size (NOCOSUP_MAX_WS_MESSAGE in the supervisor) caps what a
    worker sends: the relay closes both sides with 1009 instead of buffering it."""
    async with proxy_server(upstream, ws_max_size=64 * 1024) as proxied:
        async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None, max_size=None) as ws:
            await ws.send(b"x" * (60 * 1024))
            assert len(await ws.recv()) == 60 * 1024
            await ws.send(b"x" * (100 * 1024))  # the echo coming back is too big
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_websocket_upstream_close_code_reaches_the_client(proxied: ProxyServer) -> None:
    async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None) as ws:
        await ws.send("close:4001:bye now")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye now")


async def test_websocket_client_close_code_reaches_the_upstream(
    proxied: ProxyServer, upstream: str
) -> None:
    async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.close(4002, "done here")

    async def closed() -> bool:
        return (await upstream_state(upstream))["ws_close"] == [4002, "done here"]

    await eventually(closed, "the upstream saw the client's close code")


async def test_websocket_abnormal_upstream_close_becomes_1011() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        match = re.search(rb"(?i)sec-websocket-key: *(\S+)", head)
        assert match is not None
        accept = base64.b64encode(
            hashlib.sha1(match.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            answer(
                b"HTTP/1.1 101 Switching Protocols",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Accept: " + accept,
            )
        )
        await writer.drain()
        writer.transport.abort()  # no close frame: 1006 on the proxy's side

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1011


async def test_websocket_denied_by_upstream_is_relayed(proxied: ProxyServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(proxied.ws_url + PREFIX + "/ws-deny", proxy=None):
            pass
    assert info.value.response.status_code == 403


async def test_websocket_denial_keeps_status_headers_and_body_minus_hop_by_hop() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            answer(
                b"HTTP/1.1 401 Unauthorized",
                b"WWW-Authenticate: Bearer",
                b"Content-Type: application/json",
                b"Content-Length: 14",
                b"Connection: close",
                b"Keep-Alive: timeout=5",
                b"Sec-WebSocket-Accept: bogus",
                b"Server: upstream",
                body=b'{"denied": 1}\n',
            )
        )
        await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None):
                pass
    response = info.value.response
    assert response.status_code == 401
    assert response.body == b'{"denied": 1}\n'
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get_all("content-length") == ["14"]
    assert "keep-alive" not in response.headers
    assert "sec-websocket-accept" not in response.headers
    assert response.headers.get("server") != "upstream"


async def test_websocket_upstream_down_answers_502() -> None:
    async with proxy_server(f"http://127.0.0.1:{free_port()}") as proxied:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(proxied.ws_url + PREFIX + "/ws", proxy=None):
                pass
    response = info.value.response
    assert response.status_code == 502
    assert b"UPSTREAM_CONNECT_ERROR" in response.body


def test_close_codes_that_cannot_be_sent_become_1011() -> None:
    assert [close_code(c) for c in (1000, 1001, 4001, 3000, 1011)] == [1000, 1001, 4001, 3000, 1011]
    assert [close_code(c) for c in (1005, 1006, 1015, None, 1004, 2000, 5000)] == [1011] * 7


def test_upstream_url_must_be_plain_http() -> None:
    assert Upstream.parse("http://10.0.0.5:9001/").url == "http://10.0.0.5:9001"
    assert Upstream.parse("https://w.internal").port == 443
    for bad in ("ftp://x", "http://", "http://u:p@x", "http://x/?q=1", "/relative"):
        with pytest.raises(ValueError):
            Upstream.parse(bad)


# ---------------------------------------------------------- on uvloop, in its own process


@pytest.fixture(scope="module")
def uvloop_proxy(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The proxy in a uvicorn process on uvloop + httptools, as ``nocosup serve`` runs."""
    log = tmp_path_factory.mktemp("front") / "front.log"
    proc, url = start_uvicorn(
        "tests.proxy_front:create_app",
        log,
        {"PROXY_UPSTREAM": upstream, "PROXY_MAX_CONNECTIONS": "2"},
        (
            "--factory",
            "--loop",
            "uvloop",
            "--http",
            "nocosup.fastpath:FastHttpToolsProtocol" if FAST_PATH else "httptools",
        ),
    )
    try:
        wait_ready(proc, url + "/_pool", log)
        yield url, log
    finally:
        stop(proc)


async def test_on_uvloop_bodies_websockets_and_disconnects(
    uvloop_proxy: tuple[str, Path], upstream: str
) -> None:
    url, log = uvloop_proxy
    body = pattern(10 * MB)
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as c:
        echo = (await c.post(PREFIX + "/echo", content=body)).json()
        assert (echo["size"], echo["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
        r = await c.get(PREFIX + f"/stream?size={10 * MB}")
        assert r.content == body
        # three clients vanish mid-stream; with two connections the pool must get both back
        before = (await upstream_state(upstream))["streams_finished"]
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            writer.write(f"GET {PREFIX}/drip HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await read_head(reader)
            await reader.read(1024)
            writer.transport.abort()

        async def released() -> bool:
            pools = (await c.get("/_pool")).json()
            return all(p["active"] == 0 for p in pools.values())

        await eventually(released, "every upstream connection was released")

        async def stopped() -> bool:
            return (await upstream_state(upstream))["streams_finished"] >= before + 3

        await eventually(stopped, "the upstream streams were stopped")
        assert (await c.get(PREFIX + "/echo")).status_code == 200
    ws_url = url.replace("http://", "ws://") + PREFIX + "/ws"
    async with ws_connect(ws_url, proxy=None, max_size=None) as ws:
        await ws.send("text")
        assert await ws.recv() == "text"
        await ws.send(body[:MB])
        assert await ws.recv() == body[:MB]
    text = log.read_text()
    assert "Traceback" not in text, text
