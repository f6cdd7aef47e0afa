"""Responses leave with their head and first body bytes in one write (nocosup.cycle).

A real uvicorn runs our httptools protocol in a thread (its own event loop), so that an
app can block that loop between the head and the body: with uvicorn's own cycle the head
would reach the client alone and the body 0.3 s later; with ours the client's first read
holds both. A stream (a body that waits) still gets its head at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from nocosup.server import LimitedHttpToolsProtocol
from tests.servers import free_port

#: Set by a test when its client has seen the head of the streamed answer.
_release = threading.Event()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/blocked":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})  # fmt: skip
        # the loop is blocked: uvicorn's own cycle would have written the head already
        time.sleep(0.3)  # noqa: ASYNC251
        await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.to_thread(_release.wait, 30)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"second"})
    elif path == "/raises":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})  # fmt: skip
        raise RuntimeError("the app failed after its head")
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x bad", b"1")]})  # fmt: skip
    else:
        body = b'{"ok": true}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """The app on our protocol, in a thread; its port."""
    port = free_port()
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=LimitedHttpToolsProtocol,
        lifespan="off",
        log_config=None,
        log_level="critical",
    )
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    for _ in range(500):
        if served.started:
            break
        time.sleep(0.01)
    try:
        yield port
    finally:
        served.should_exit = True
        thread.join(10)


def _first_read(port: int, request: bytes) -> bytes:
    """What one ``recv`` gets once the first bytes of the answer arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_head_and_body_arrive_together(server: int) -> None:
    got = _first_read(server, b"GET /blocked HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert got.endswith(b"\r\n\r\nhello"), got


def test_a_stream_gets_its_head_before_its_body(server: int) -> None:
    _release.clear()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(65536)  # the body waits for _release: this is the head alone
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert head.endswith(b"transfer-encoding: chunked\r\n\r\n"), head
        _release.set()
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, rest
            rest += chunk
    assert rest == b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"


def test_http_1_0_is_answered_and_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /json HTTP/1.0\r\n\r\n")
        got = b""
        while chunk := sock.recv(65536):  # until the server closes
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close" in head
    assert body == b'c\r\n{"ok": true}\r\n0\r\n\r\n'  # framed as uvicorn frames it


async def test_keep_alive_head_and_pipelining(server: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}", timeout=10) as c:
        for _ in range(3):  # one kept-alive connection
            r = await c.get("/json")
            assert r.json() == {"ok": True}
        r = await c.head("/json")
        assert r.status_code == 200 and r.content == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        writer.write(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        data = b""
        while data.count(b'{"ok": true}') < 2:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, data
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2
    finally:
        writer.close()


def test_an_app_failing_after_its_head_closes_the_connection_unanswered(server: int) -> None:
    """uvicorn would have written the head and then closed; the head was still held, so
    the client (or a load balancer's retry) sees an empty answer, not a cut one."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /raises HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536) == b""
    # the server serves on
    assert _first_read(server, b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 200 OK"
    )


def test_a_bad_header_name_is_refused_as_uvicorn_does(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"GET /bad-header HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536) == b""  # closed: the head was never written
