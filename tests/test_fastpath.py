"""The supervisor's fast path (nocosup.fastpath).

Every test of tests/test_proxy.py runs again here with its proxy servers on the fast
path's protocol (``FAST_PATH``), so streaming, bodies, errors, disconnects and header rules
are checked against it too; the tests below add what only the fast path has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tests.test_proxy as proxy_tests
from nocosup.config import Settings
from nocosup.fastpath import LANES, FastHttpToolsProtocol
from nocosup.inflight import InFlight
from nocosup.server import FAST_PROTOCOL, uvicorn_options
from tests.test_proxy import *  # noqa: F403 - the proxy's tests, collected again here
from tests.test_proxy import (
    PREFIX,
    ProxyServer,
    answer,
    assert_json_error,
    eventually,
    proxy_server,
    raw_upstream,
    read_head,
    upstream_state,
)


@pytest.fixture(scope="module", autouse=True)
def fast_path() -> Iterator[None]:
    """Before any other fixture of this module: proxy servers take the fast path, with the
    express lane alone (tests/test_leanlane.py runs this module again with the lean lane)."""
    proxy_tests.FAST_PATH = True
    FastHttpToolsProtocol.lean_lane = False
    try:
        yield
    finally:
        proxy_tests.FAST_PATH = False
        FastHttpToolsProtocol.lean_lane = True


async def test_requests_take_the_fast_path(proxied: ProxyServer) -> None:
    routed, before = proxied.fast_routed, express()
    async with proxied.http() as c:
        for _ in range(3):  # the first may open the pooled connection the others reuse
            r = await c.get(proxy_tests.PREFIX + "/echo?x=1")
            assert r.status_code == 200
            assert r.json()["query"] == "x=1"
        # a body goes the task's way, below ASGI all the same
        assert (await c.post(proxy_tests.PREFIX + "/echo", content=b"abc")).status_code == 200
    assert proxied.fast_routed == routed + 4
    assert express() >= before + 2


@pytest.mark.parametrize(
    ("fields", "http", "fast"),
    [
        ({"process_adapter": "remote"}, "httptools", True),
        ({"process_adapter": "remote"}, "auto", True),
        ({"process_adapter": "remote", "proxy_fast_path": False}, "httptools", False),
        ({"process_adapter": "remote"}, "h11", False),
        ({"process_adapter": "local"}, "httptools", False),  # shared memory: no proxy
        ({"mode": "worker", "process_adapter": "local"}, "httptools", False),
    ],
)
def test_only_a_multi_environment_supervisor_gets_the_fast_protocol(
    fields: dict[str, Any], http: str, fast: bool
) -> None:
    protocol = uvicorn_options(Settings(**fields), http)["http"]
    assert (protocol == FAST_PROTOCOL) is fast


# --- the express lane: what a warm pool makes it take ---------------------------------


def express() -> int:
    """Requests answered without a task: on the express lane, or the lean lane when on."""
    return LANES.express + LANES.lean


async def warm(proxied: ProxyServer, path: str = "/echo") -> None:
    """One request first, so the pool holds an idle connection (the lane needs one)."""
    async with proxied.http() as c:
        assert (await c.get(PREFIX + path)).status_code == 200


def ok_then(second: bytes) -> Any:
    """A raw upstream that answers the first request of a connection 200 ``ok`` (kept
    alive), then writes ``second`` raw to the next one and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok"))
        await writer.drain()
        await read_head(reader)
        writer.write(second)
        await writer.drain()

    return handler


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await read_head(reader)
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length is not None, head
    return head, await reader.readexactly(int(length.group(1)))


async def test_a_request_answered_without_a_task_counts_in_flight(
    proxied: ProxyServer,
) -> None:
    await warm(proxied)
    assert proxied.metrics is not None
    stats = proxied.metrics.stats("demo")
    before = express()
    async with proxied.http() as c:
        slow = asyncio.create_task(c.get(PREFIX + "/slow?delay=0.5"))

        async def counted() -> bool:
            return stats.in_flight == 1

        await eventually(counted, "the request in flight is counted")
        assert (await slow).status_code == 200
    assert stats.in_flight == 0
    assert express() == before + 1  # without a task: the express or the lean lane


async def test_pipelined_requests_are_answered_in_order(proxied: ProxyServer) -> None:
    await warm(proxied)
    before = express()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        writer.write(
            b"".join(
                f"GET {PREFIX}/echo?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(3)
            )
        )
        for n in range(3):
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert json.loads(body)["query"] == f"n={n}"
    finally:
        writer.close()
    assert express() >= before + 1  # the first at least; the others queue as uvicorn's do


async def test_head_on_the_express_lane(proxied: ProxyServer) -> None:
    await warm(proxied)
    before = express()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        writer.write(f"HEAD {PREFIX}/blob HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        # the length of the body a GET would get, and no body: the next answer follows
        assert re.search(rb"(?i)\r\ncontent-length: *[1-9]", head)
        writer.write(f"GET {PREFIX}/echo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    assert express() >= before + 2


async def test_header_over_the_limit_is_431_on_the_fast_protocol(proxied: ProxyServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        writer.write(f"GET {PREFIX}/echo HTTP/1.1\r\nX: ".encode() + b"a" * 70_000)
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 431 ")
        assert json.loads(body)["error"]["code"] == "HEADERS_TOO_LARGE"
        assert await reader.read() == b""  # closed
    finally:
        writer.close()


async def test_upstream_closing_mid_body_truncates_the_answer() -> None:
    cut = answer(b"HTTP/1.1 200 OK", b"Content-Length: 100000", body=b"z" * 50_000)
    async with raw_upstream(ok_then(cut)) as url, proxy_server(url) as proxied:
        async with proxied.http() as c:
            assert (await c.get(PREFIX + "/1")).content == b"ok"
            before = express()
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(PREFIX + "/2")
        assert express() == before + 1

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the broken connection was dropped")


async def test_a_small_answer_written_in_two_parts_goes_out_in_one() -> None:
    """The upstream writes the head, then the body 0.3 s later (uvicorn writes them apart
    too): the client's first read holds both, on every path (a process killed between
    two writes would leave a head without a body, which no load balancer retries)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length is not None:
                await reader.readexactly(int(length.group(1)))
            writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: 5"))
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(b"hello")
            await writer.drain()

    async with raw_upstream(handler) as url, proxy_server(url) as proxied:
        await warm(proxied, "/warm")  # an idle pooled connection: the lanes may serve
        requests = [
            b"GET " + PREFIX.encode() + b"/x HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST " + PREFIX.encode() + b"/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ]
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
            try:
                writer.write(request)
                first = await asyncio.wait_for(reader.read(65536), 30)
                assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
                assert first.endswith(b"\r\n\r\nhello"), first
            finally:
                writer.close()


async def test_garbage_answer_on_the_express_lane_is_502() -> None:
    async with raw_upstream(ok_then(b"SPDY/9 what is this\r\n\r\n")) as url:
        async with proxy_server(url) as proxied, proxied.http() as c:
            assert (await c.get(PREFIX + "/1")).content == b"ok"
            assert_json_error(await c.get(PREFIX + "/2"), 502, "UPSTREAM_PROTOCOL_ERROR")
            assert proxied.pool()["active"] == 0


async def test_read_timeout_on_the_express_lane_is_504(upstream: str) -> None:
    async with proxy_server(upstream, read_timeout=0.3) as proxied:
        await warm(proxied)
        async with proxied.http() as c:
            r = await c.get(PREFIX + "/slow?delay=2")
            assert_json_error(r, 504, "UPSTREAM_TIMEOUT")
            assert r.json()["error"]["phase"] == "read"
            assert (await c.get(PREFIX + "/echo")).status_code == 200
        assert proxied.pool()["active"] == 0


async def test_client_leaving_before_the_answer_frees_the_connection(upstream: str) -> None:
    async with proxy_server(upstream, max_connections=1) as proxied:
        await warm(proxied)
        _, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        writer.write(f"GET {PREFIX}/slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()

        async def busy() -> bool:
            return proxied.pool()["active"] == 1

        await eventually(busy, "the request reached the upstream")
        writer.transport.abort()

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the upstream connection was released")
        async with proxied.http() as c:  # the single slot serves again
            assert (await c.get(PREFIX + "/echo")).status_code == 200


async def test_client_leaving_mid_stream_on_the_express_lane_stops_the_upstream(
    upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    before = (await upstream_state(upstream))["streams_finished"]
    async with proxy_server(upstream, max_connections=1) as proxied:
        await warm(proxied)
        answered = express()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        writer.write(f"GET {PREFIX}/drip HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await read_head(reader)
        await reader.read(1024)
        writer.transport.abort()

        async def stopped() -> bool:
            state = await upstream_state(upstream)
            return state["streams_finished"] > before and proxied.pool()["active"] == 0

        await eventually(stopped, "the upstream stream was stopped and its connection freed")
        assert express() == answered + 1
        async with proxied.http() as c:
            assert (await c.get(PREFIX + "/echo")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_an_exchange_without_a_task_is_aborted_by_its_callback() -> None:
    inflight = InFlight()
    aborted: list[str] = []
    entry = inflight.track("env_a", lambda: aborted.append("a"))
    other = inflight.track("env_b", lambda: aborted.append("b"))
    assert inflight.count("env_a") == 1
    assert inflight.abort("env_a") == 1
    assert aborted == ["a"]
    inflight.untrack(entry)
    inflight.untrack(other)
    assert inflight.count("env_a") == inflight.count("env_b") == 0
    assert inflight.abort("env_b") == 0 and aborted == ["a"]


async def test_idle_keep_alive_connections_close_busy_ones_stay(upstream: str) -> None:
    """The fast protocol's lazy keep-alive timer: a connection idle for the keep-alive
    timeout is closed; one that keeps sending requests is not."""
    async with proxy_server(upstream, {"timeout_keep_alive": 0.3}) as proxied:
        await warm(proxied)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            for _ in range(6):  # 0.6 s of requests 0.1 s apart: never idle 0.3 s
                writer.write(f"GET {PREFIX}/echo HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                head, _body = await read_answer(reader)
                assert head.startswith(b"HTTP/1.1 200 ")
                await asyncio.sleep(0.1)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
        finally:
            writer.close()
