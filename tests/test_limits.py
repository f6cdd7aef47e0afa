"""Limits on what anonymous clients can make a process hold, against real ``nocosup serve``
processes: bodies (413), header blocks (431), WebSocket messages (close 1009), idle and
slow connections (closed), connections per process (503) and input that is JSON to
``json.loads`` but not to nocosup (422 INVALID_JSON). Memory is measured as the peak
(VmHWM) of the server process, before and after each attack."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.servers import AUTH, NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create

MIB = 1 << 20
#: Attacks send this much; the peak may grow by less than GROWTH (generous: no flakes).
ATTACK = 200 * MIB
GROWTH = 50 * MIB
PARSERS = ["h11", "httptools"]


def peak(server: NocosupServer) -> int:
    """VmHWM of the server process, in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def chunks(total: int = ATTACK, size: int = MIB) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


async def achunks(total: int, size: int) -> AsyncIterator[bytes]:
    for block in chunks(total, size):
        yield block


def raw_exchange(server: NocosupServer, data: Iterator[bytes] | bytes) -> bytes:
    """Send ``data`` on a fresh connection (stopping when the server stops reading), then
    read what the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        try:
            for block in [data] if isinstance(data, bytes) else data:
                sock.sendall(block)
        except OSError:
            pass  # the server answered and closed while we were still sending
        answer = b""
        try:
            while block := sock.recv(65536):
                answer += block
        except OSError:
            pass
        return answer


def status_of(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- bodies -------------------------------------------------------------------------------


def chunked_attack(path: str, total: int = ATTACK) -> Iterator[bytes]:
    """A POST of ``total`` bytes in chunked encoding (no Content-Length to refuse)."""
    yield (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    for block in chunks(total):
        yield b"%x\r\n%s\r\n" % (len(block), block)
    yield b"0\r\n\r\n"


async def test_admin_api_and_login_stop_reading_at_their_limit(
    sqlite_server: NocosupServer,
) -> None:
    before = peak(sqlite_server)
    for path in ("/api/apps", "/api/login"):
        answer = raw_exchange(sqlite_server, chunked_attack(path))
        if answer:  # the server stops reading and closes: the answer may be lost to a reset
            assert status_of(answer)[0] == 413
        # announced too big: refused before a byte of the body is read
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {400 * MIB}\r\n\r\n"
        ).encode()
        status, body = status_of(raw_exchange(sqlite_server, head + b"{"))
        assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"  # type: ignore[index]
    grown = peak(sqlite_server) - before
    assert grown < GROWTH, f"peak grew by {grown / MIB:.0f} MiB"
    async with sqlite_server.admin() as c:
        # a little over the limit, streamed or announced: a clean 413 naming the limit
        for path in ("/api/apps", "/api/login"):
            for content in (achunks(MIB + 100_000, 10_000), b"x" * (MIB + 100_000)):
                r = await c.post(path, content=content)
                assert_error(r, 413, "PAYLOAD_TOO_LARGE")
                assert r.json()["error"]["limit"] == MIB
        assert (await c.get("/api/apps")).status_code == 200


async def test_tenant_bodies_stop_at_the_app_limit(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_MAX_BODY_SIZE=str(64 * 1024))
    async with server.admin() as c:
        await create(c, "small", options={"maxBodySize": 1000})
        await create(c, "dflt")
        await create(c, "big", options={"maxBodySize": 4 * MIB})
        for url, limit, size in (
            ("/apps/small/api/records", 1000, 2000),
            ("/apps/dflt/api/records", 64 * 1024, 100 * 1024),  # NOCOSUP_MAX_BODY_SIZE
        ):
            # streamed without a length, then announced
            r = await c.post(url, content=achunks(size, 100))
            assert_error(r, 413, "PAYLOAD_TOO_LARGE")
            assert r.json()["error"]["limit"] == limit
            r = await c.post(url, content=b"x" * size)
            assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        # the app's own smaller limit answers first when the runtime lets more through
        r = await c.post("/apps/big/api/records", content=b"x" * (2 * MIB))
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert r.json()["error"]["limit"] == MIB
        # the app still serves after each cut-short request
        r = await c.post("/apps/small/api/records", json={"title": "after"})
        assert r.status_code == 201, r.text
        for bad in ("1000", 0, -5, True, 1.5, 1 << 40):
            r = await c.patch("/api/apps/small", json={"options": {"maxBodySize": bad}})
            assert_error(r, 422, "VALIDATION_ERROR", "options.maxBodySize")


async def test_a_200_mb_upload_to_a_tenant_keeps_the_peak_flat(
    sqlite_server: NocosupServer,
) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "upload")
        assert (await c.get("/apps/upload/api/info")).status_code == 200
    before = peak(sqlite_server)
    head = (
        b"POST /apps/upload/api/records HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = (b"%x\r\n%s\r\n" % (len(block), block) for block in chunks())
    answer = raw_exchange(sqlite_server, itertools.chain([head], body))
    # the server stops reading and closes: the answer may be lost to the reset
    if answer:
        assert status_of(answer)[0] == 413
    grown = peak(sqlite_server) - before
    assert grown < GROWTH, f"peak grew by {grown / MIB:.0f} MiB"
    async with sqlite_server.client() as c:
        assert (await c.post("/apps/upload/api/records", json={"title": "t"})).status_code == 201


# --- headers and connections --------------------------------------------------------------


@pytest.mark.parametrize("http", PARSERS)
def test_header_blocks_over_the_limit_get_431(servers: ServerFactory, http: str) -> None:
    server = servers.start_with_args(("--http", http))
    before = peak(server)
    line = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    attacks = {
        "one 16 MB header": [line, b"X-Big: ", *chunks(16 * MIB, 64 * 1024), b"\r\n\r\n"],
        "100k headers": [line + b"".join(b"X-%d: a\r\n" % i for i in range(100_000)) + b"\r\n"],
    }
    for what, data in attacks.items():
        status, body = status_of(raw_exchange(server, iter(data)))
        assert status == 431, what
        assert body["error"]["code"] == "HEADERS_TOO_LARGE", what  # type: ignore[index]
    grown = peak(server) - before
    assert grown < GROWTH, f"peak grew by {grown / MIB:.0f} MiB"
    # a large but allowed header block still passes
    r = httpx.get(server.url + "/healthz", headers={"X-Big": "a" * 60_000})
    assert r.status_code == 200


@pytest.mark.parametrize("http", PARSERS)
def test_idle_and_slow_connections_are_closed(servers: ServerFactory, http: str) -> None:
    server = servers.start_with_args(("--http", http), NOCOSUP_HEADER_TIMEOUT="0.5")
    for first in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):  # idle; head never ends
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            if first:
                sock.sendall(first)
            assert sock.recv(100) == b""  # closed by the server, not by our timeout
    # a normal request on a kept-alive connection is not affected
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200


async def test_connections_past_the_cap_get_503(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_MAX_CONNECTIONS="3")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        async with server.client() as c:
            r = await c.get("/healthz")
        assert r.status_code == 503
    finally:
        for sock in held:
            sock.close()

    async def served() -> bool:
        async with server.client() as c:
            return (await c.get("/healthz")).status_code == 200

    await wait_for(served)


# --- WebSocket messages -------------------------------------------------------------------


async def _echo_closes_1009(url: str, size: int) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send("small")
        assert await ws.recv() == "small"
        await ws.send(b"x" * size)
        with pytest.raises(ConnectionClosed) as caught:
            await ws.recv()
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009


async def test_websocket_messages_over_the_limit_close_1009(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_MAX_WS_MESSAGE=str(64 * 1024))
    async with server.admin() as c:
        await create(c, "ws")
    url = f"ws://127.0.0.1:{server.port}/apps/ws/api/echo"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(b"x" * (60 * 1024))
        assert len(await ws.recv()) == 60 * 1024
    await _echo_closes_1009(url, 100 * 1024)
    # the default limit: 1 MiB
    default = servers.start()
    async with default.admin() as c:
        await create(c, "ws")
    await _echo_closes_1009(f"ws://127.0.0.1:{default.port}/apps/ws/api/echo", 2 * MIB)


async def test_limits_hold_on_workers_and_through_the_proxy(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    """A worker with two replicas (``--workers 2``) gets the same server limits, the
    supervisor's proxy caps WebSocket messages both ways, and the tenant body limit is
    enforced where the app runs."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    small = str(64 * 1024)
    sup = cluster.start_supervisor(NOCOSUP_MAX_WS_MESSAGE=small)
    # the worker takes bigger messages than the supervisor relays
    worker = cluster.start_worker("env_lim", replicas=2, NOCOSUP_MAX_HEADER_SIZE="4096")
    async with sup.admin() as c:
        await cluster.wait_environments(c, {"env_lim": 2})
        await create(c, "lim", environments=["env_lim"], options={"maxBodySize": 1000})
        r = await c.post("/apps/lim/api/records", content=achunks(5000, 100))
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert r.json()["error"]["limit"] == 1000
    for _ in range(4):  # either replica
        attack = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 8000
        status, body = status_of(raw_exchange(worker, attack))
        assert status == 431 and body["error"]["code"] == "HEADERS_TOO_LARGE"  # type: ignore[index]
    # client -> proxy: the supervisor's server refuses the message
    await _echo_closes_1009(f"ws://127.0.0.1:{sup.port}/apps/lim/api/echo", 100 * 1024)


# --- JSON that json.loads takes and nocosup must not --------------------------------------

BAD_JSON = {
    "overflow": (b'{"name": "bad", "options": {"n": 1e999}}', "options.n"),
    "nan": (b'{"name": "bad", "options": {"n": NaN}}', "options.n"),
    "infinity": (b'{"name": "bad", "options": {"n": -Infinity}}', "options.n"),
    "long int": (b'{"name": "bad", "options": {"n": ' + b"9" * 5000 + b"}}", "options.n"),
    "int64": (b'{"name": "bad", "options": {"n": [1, 9223372036854775808]}}', "options.n[1]"),
    "deep": (b'{"name": "bad", "options": {"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", None),
    "surrogate": (b'{"name": "bad", "title": "a\\ud800b"}', "title"),
    "surrogate key": (b'{"name": "bad", "options": {"\\udfff": 1}}', None),
    "latin-1": ('{"name": "bad", "title": "caf\xe9"}'.encode("latin-1"), None),
}


async def test_json_that_would_break_the_api_is_refused(sqlite_server: NocosupServer) -> None:
    raw = {"content-type": "application/json"}
    async with sqlite_server.admin() as c:
        await create(c, "good")
        for what, (body, field) in BAD_JSON.items():
            for r in (
                await c.post("/api/apps", content=body, headers=raw),
                await c.patch("/api/apps/good", content=body.replace(b'"name": "bad", ', b"")),
            ):
                assert_error(r, 422, "INVALID_JSON", field)
                assert len(r.json()["error"]["message"]) < 300, what
            r = await c.get("/api/apps")
            assert r.status_code == 200, what
            assert [a["name"] for a in r.json()["apps"]] == ["good"], what
        # names are matched in full: a trailing newline is not a name
        assert_error(await c.post("/api/apps", json={"name": "demo\n"}), 422, "VALIDATION_ERROR")
        # the tenant starter app parses strictly too
        r = await c.post("/apps/good/api/records", content=b'{"title": "t", "data": NaN}')
        assert_error(r, 422, "INVALID_JSON", "data")
        assert (await c.get("/apps/good/api/records")).status_code == 200
