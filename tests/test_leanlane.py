"""The supervisor's lean lane (nocosup.leanlane).

Every test of tests/test_fastpath.py (and so of tests/test_proxy.py) runs again here with
the lean lane on, as it is in production; the tests below add what only this lane has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httptools
import pytest

import nocosup.fastpath
import tests.test_proxy as proxy_tests
from nocosup import leanlane
from nocosup.fastpath import LANES, FastHttpToolsProtocol
from nocosup.leanlane import parse_answer, parse_request
from nocosup.proxy import response_headers
from tests.test_fastpath import *  # noqa: F403 - the fast path's tests, collected again here
from tests.test_proxy import (
    ProxyServer,
    answer,
    eventually,
    proxy_server,
    raw_upstream,
    read_head,
)


@pytest.fixture(scope="module", autouse=True)  # type: ignore[no-redef]  # test_fastpath's
def fast_path() -> Iterator[None]:
    """Before any other fixture of this module: the fast path with the lean lane."""
    proxy_tests.FAST_PATH = True
    FastHttpToolsProtocol.lean_lane = True
    try:
        yield
    finally:
        proxy_tests.FAST_PATH = False


# ------------------------------------------------------------------ helpers of this module

LEAN_P = proxy_tests.PREFIX


@contextlib.contextmanager
def lean_lane(on: bool) -> Iterator[None]:
    """The lean lane switched on or off for the block (the class attribute, restored)."""
    was = FastHttpToolsProtocol.lean_lane
    FastHttpToolsProtocol.lean_lane = on
    try:
        yield
    finally:
        FastHttpToolsProtocol.lean_lane = was


def lean_count() -> int:
    return LANES.lean


class _HttptoolsHead:
    """What uvicorn's httptools protocol collects from a request head (on_url, on_header)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))


def httptools_scope(data: bytes) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]]]:
    """(method, raw path, query string, headers) as uvicorn's httptools protocol puts them
    in the scope for the request head ``data``."""
    seen = _HttptoolsHead()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(data)
    assert parser.get_http_version() == "1.1"
    assert parser.should_keep_alive()
    parsed = httptools.parse_url(seen.url)
    return parser.get_method().decode("ascii"), parsed.path, parsed.query or b"", seen.headers


class _HttptoolsAnswer:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.parser: Any = None
        self.keep_alive: bool | None = None

    def on_message_complete(self) -> None:  # where nocosup.proxy_client asks it
        self.keep_alive = self.parser.should_keep_alive()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body


def httptools_answer(data: bytes) -> tuple[int, bytes, bytes, bool]:
    """(status, header lines passed on, body, keep-alive) as the express lane gets them:
    httptools' response parser and nocosup.proxy.response_headers."""
    seen = _HttptoolsAnswer()
    parser = seen.parser = httptools.HttpResponseParser(seen)
    parser.feed_data(data)
    assert seen.keep_alive is not None, "one whole answer"
    fields = b"".join(n + b": " + v + b"\r\n" for n, v in response_headers(seen.headers))
    return parser.get_status_code(), fields, seen.body, seen.keep_alive


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    """One whole answer (head and body, Content-Length or chunked) as the bytes received."""
    head = await read_head(reader)
    if head_only:
        return head
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length is not None:
        return head + await reader.readexactly(int(length.group(1)))
    assert re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head), head
    out = head
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        out += size_line + chunk
        if size == 0:
            return out


def unchunked(response: bytes) -> bytes:
    """The body of a chunked ``response`` (as :func:`read_response` read it)."""
    rest = response.split(b"\r\n\r\n", 1)[1]
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body += rest[:size]
        rest = rest[size + 2 :]


def without_date(response: bytes) -> bytes:
    return re.sub(rb"(?im)^date: [^\r]*\r\n", b"date: <date>\r\n", response)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


FIXED_BODY = b'{"fixed": true}'


def fixed_answer(head: bytes) -> bytes:
    """A 200 with Content-Length, in one write (no body to a HEAD)."""
    body = b"" if head.startswith(b"HEAD ") else FIXED_BODY
    return answer(
        b"HTTP/1.1 200 OK",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(FIXED_BODY),
        body=body,
    )


Respond = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[bool]]


class Recorder:
    """A raw upstream's record: every request head it read, and its connections."""

    def __init__(self) -> None:
        self.url = ""
        self.heads: list[bytes] = []
        self.connections = 0


async def _fixed(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
    writer.write(fixed_answer(head))
    await writer.drain()
    return True


@contextlib.asynccontextmanager
async def recording_upstream(respond: Respond = _fixed) -> AsyncIterator[Recorder]:
    """A raw upstream that records each request head and answers it with ``respond``
    (head, writer, index of the request among all it got); False closes the connection."""
    record = Recorder()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record.connections += 1
        while True:
            head = await read_head(reader)
            record.heads.append(head)
            if not await respond(head, writer, len(record.heads) - 1):
                return

    async with raw_upstream(handler) as url:
        record.url = url
        yield record


async def send_raw(port: int, data: bytes, head_only: bool = False) -> bytes:
    """``data`` in one write on a new connection: the answer's bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(read_response(reader, head_only), 30)
    finally:
        writer.close()


async def warm_raw(proxied: ProxyServer, path: str = "/echo") -> None:
    """One request off the lean lane, so the pool holds an idle connection."""
    with lean_lane(False):
        got = await send_raw(
            proxied.port, f"GET {LEAN_P}{path} HTTP/1.1\r\nHost: w\r\n\r\n".encode()
        )
    assert status_of(got) == 200, got


@pytest.fixture
def declined_answers(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The upstream reads the lean lane was given and did not pass on (escalated)."""
    declined: list[bytes] = []
    real = leanlane.parse_answer

    def recording(data: bytes, head_only: bool) -> Any:
        got = real(data, head_only)
        if got is None or got is False:
            declined.append(data)
        return got

    monkeypatch.setattr(leanlane, "parse_answer", recording)
    return declined


# ------------------------------------------------------------------ parse_request

ACCEPTED_HEADS = {
    "minimal": b"GET / HTTP/1.1\r\n\r\n",
    "host-only": b"GET /apps/demo/echo HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "head": b"HEAD /apps/demo/blob HTTP/1.1\r\nHost: x\r\n\r\n",
    "several-mixed-case": (
        b"GET /a/b HTTP/1.1\r\nHoSt: x\r\nACCEPT: */*\r\nUser-Agent: t/1.0\r\n"
        b"X-Mixed-CASE: Value\r\n\r\n"
    ),
    "inner-spaces": b"GET / HTTP/1.1\r\nX-A: a  b\tc\r\nX-B:  lead\r\n\r\n",
    "no-space-after-colon": b"GET / HTTP/1.1\r\nX-A:a\r\n\r\n",
    "trailing-spaces": b"GET / HTTP/1.1\r\nX-A: a b  \r\n\r\n",
    "trailing-tab": b"GET / HTTP/1.1\r\nX-A: a\t\r\nX-B: b \t \r\n\r\n",
    "obs-text": b"GET / HTTP/1.1\r\nX-O: caf\xc3\xa9 \x80\xff\r\n\r\n",
    "empty-values": b"GET / HTTP/1.1\r\nX-E:\r\nX-F: \r\nHost: x\r\n\r\n",
    "connection-keep-alive": b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    "connection-Keep-Alive": b"GET / HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n",
    "query-with-percent": b"GET /search?q=a%20b&r=%2F%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty-query": b"GET /a? HTTP/1.1\r\n\r\n",
    "query-with-question-marks": b"GET /a?b?c=d HTTP/1.1\r\n\r\n",
    "repeated-names": (
        b"GET / HTTP/1.1\r\nX-R: 1\r\nx-r: 2\r\nX-R: 3\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
    ),
    "token-chars": b"GET /p;x=1/@:a,b HTTP/1.1\r\nX!#$%&'*+-.^_`|~9: v\r\n\r\n",
    "double-slash": b"GET //x/y?q HTTP/1.1\r\nHost: x\r\n\r\n",
    "lenient-target-chars": b'GET /a"b{c}|d^e`f HTTP/1.1\r\n\r\n',
}


@pytest.mark.parametrize("data", list(ACCEPTED_HEADS.values()), ids=list(ACCEPTED_HEADS))
def test_parse_request_gives_what_uvicorn_puts_in_the_scope(data: bytes) -> None:
    assert parse_request(data) == httptools_scope(data)


def test_parse_request_of_a_typical_head() -> None:
    data = b"GET /apps/demo/x?a=%41 HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br\r\n\r\n"
    assert parse_request(data) == (
        "GET",
        b"/apps/demo/x",
        b"a=%41",
        [(b"host", b"h"), (b"accept-encoding", b"gzip, br")],
    )


DECLINED_HEADS = {
    "post": b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
    "put": b"PUT / HTTP/1.1\r\n\r\n",
    "lower-case-method": b"get / HTTP/1.1\r\n\r\n",
    "http-1.0": b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "http-2.0": b"GET / HTTP/2.0\r\n\r\n",
    "percent-in-path": b"GET /a%20b HTTP/1.1\r\n\r\n",
    "percent-in-path-with-query": b"GET /a%2Fb?x=1 HTTP/1.1\r\n\r\n",
    "hash-in-path": b"GET /a#frag HTTP/1.1\r\n\r\n",
    "hash-in-query": b"GET /a?b#frag HTTP/1.1\r\n\r\n",
    "absolute-form": b"GET http://x/ HTTP/1.1\r\n\r\n",
    "asterisk": b"GET * HTTP/1.1\r\n\r\n",
    "content-length": b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "content-length-mixed-case": b"GET / HTTP/1.1\r\nconTENT-length: 0\r\n\r\n",
    "transfer-encoding": b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    "expect": b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "upgrade-alone": b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    "connection-close": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "connection-keep-alive-and-more": b"GET / HTTP/1.1\r\nConnection: keep-alive, x\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    "control-char-in-value": b"GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "del-in-value": b"GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    "bare-lf-in-value": b"GET / HTTP/1.1\r\nX-A: a\nb\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n",
    "two-heads": b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "partial-head": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "partial-request-line": b"GET / HTTP/1.1\r\n",
    "head-and-body": b"GET / HTTP/1.1\r\nHost: x\r\n\r\nabc",
    "bare-lf-line-ends": b"GET / HTTP/1.1\nHost: x\n\n",
    "non-ascii-in-path": b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
    "non-ascii-in-query": b"GET /a?q=\xff HTTP/1.1\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\n\r\n",
    "two-spaces-after-method": b"GET  / HTTP/1.1\r\n\r\n",
    "leading-empty-line": b"\r\nGET / HTTP/1.1\r\n\r\n",
    "empty": b"",
}


@pytest.mark.parametrize("data", list(DECLINED_HEADS.values()), ids=list(DECLINED_HEADS))
def test_parse_request_declines(data: bytes) -> None:
    assert parse_request(data) is None


# ------------------------------------------------------------------ parse_answer


def test_parse_answer_passes_on_the_end_to_end_headers() -> None:
    data = answer(
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"Connection: keep-alive, X-Hop",
        b"Keep-Alive: timeout=5",
        b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
        b"Server: upstream",
        b"X-Hop: dropped",
        b"X-Keep: 2",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"Content-Length: 3",
        body=b"abc",
    )
    expected = (
        200,
        b"content-type: text/plain\r\nx-keep: 2\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"
        b"content-length: 3\r\n",
        b"abc",
        True,
    )
    assert parse_answer(data, False) == expected
    assert parse_answer(data, False) == expected  # remembered: the same
    assert httptools_answer(data) == expected  # what the express lane passes on


ANSWERS = {
    "plain": answer(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok"),
    "empty-body": answer(b"HTTP/1.1 200 OK", b"Content-Length: 0"),
    "404": answer(b"HTTP/1.1 404 Not Found", b"Content-Length: 1", body=b"x"),
    "500": answer(b"HTTP/1.1 500 Oops", b"X-A: 1", b"Content-Length: 1", body=b"x"),
    "mixed-case": answer(b"HTTP/1.1 201 Created", b"X-Ab: Cd", b"content-LENGTH: 1", body=b"x"),
    "obs-text": answer(b"HTTP/1.1 200 OK", b"X-O: \x80\xff", b"Content-Length: 1", body=b"x"),
    "connection-names": answer(
        b"HTTP/1.1 200 OK",
        b"Connection: X-A",
        b"Connection: x-b",
        b"X-A: 1",
        b"X-B: 2",
        b"X-C: 3",
        b"Content-Length: 1",
        body=b"x",
    ),
    "transfer-encoding-not-named-but-te": answer(
        b"HTTP/1.1 200 OK", b"TE: trailers", b"Trailer: x", b"Content-Length: 1", body=b"x"
    ),
    "connection-close": answer(
        b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 2", body=b"ok"
    ),
    "connection-Close-listed": answer(
        b"HTTP/1.1 200 OK", b"Connection: X-A, Close", b"X-A: 1", b"Content-Length: 2", body=b"ok"
    ),
    "inner-spaces": answer(b"HTTP/1.1 200 OK", b"X-A: a  b\tc", b"Content-Length: 1", body=b"x"),
    "trailing-spaces": answer(b"HTTP/1.1 200 OK", b"X-A: a b \t", b"Content-Length: 1", body=b"x"),
}


@pytest.mark.parametrize("data", list(ANSWERS.values()), ids=list(ANSWERS))
def test_parse_answer_gives_what_the_express_lane_passes_on(data: bytes) -> None:
    assert parse_answer(data, False) == httptools_answer(data)


def test_parse_answer_keep_alive_follows_connection_close() -> None:
    closed = parse_answer(ANSWERS["connection-close"], False)
    assert isinstance(closed, tuple) and closed[3] is False
    assert closed[1] == b"content-length: 2\r\n"  # connection itself never passed on
    listed = parse_answer(ANSWERS["connection-Close-listed"], False)
    assert isinstance(listed, tuple) and listed[3] is False and b"x-a" not in listed[1]
    kept = parse_answer(ANSWERS["plain"], False)
    assert isinstance(kept, tuple) and kept[3] is True


def declined(parsed: object) -> bool:
    """``parse_answer`` does not pass the answer on, nor waits for more of it."""
    return parsed is None or parsed is False


def test_parse_answer_to_a_head_request() -> None:
    data = answer(b"HTTP/1.1 200 OK", b"Content-Length: 5")
    assert parse_answer(data, True) == (200, b"content-length: 5\r\n", b"", True)
    assert not isinstance(parse_answer(data, False), tuple)  # a GET's needs its 5 bytes
    assert declined(parse_answer(data + b"hello", True))  # body bytes to a HEAD
    assert declined(parse_answer(data + b"h", True))


DECLINED_ANSWERS = {
    "chunked": answer(
        b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nok\r\n0\r\n\r\n"
    ),
    "chunked-and-length": answer(
        b"HTTP/1.1 200 OK",
        b"Content-Length: 2",
        b"Transfer-Encoding: chunked",
        body=b"2\r\nok\r\n0\r\n\r\n",
    ),
    "no-length": answer(b"HTTP/1.1 200 OK", b"X-A: 1", body=b"ok"),
    "no-headers": answer(b"HTTP/1.1 200 OK", body=b""),
    "two-lengths": answer(
        b"HTTP/1.1 200 OK", b"Content-Length: 2", b"Content-Length: 2", body=b"ok"
    ),
    "length-list": answer(b"HTTP/1.1 200 OK", b"Content-Length: 2, 2", body=b"ok"),
    "length-signed": answer(b"HTTP/1.1 200 OK", b"Content-Length: +2", body=b"ok"),
    "length-empty": answer(b"HTTP/1.1 200 OK", b"Content-Length:", body=b""),
    "204": answer(b"HTTP/1.1 204 No Content", b"Content-Length: 0"),
    "304": answer(b"HTTP/1.1 304 Not Modified", b"Content-Length: 0"),
    "100": answer(b"HTTP/1.1 100 Continue", body=b"")
    + answer(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok"),
    "101": answer(b"HTTP/1.1 101 Switching Protocols", b"Content-Length: 0"),
    "http-1.0": answer(b"HTTP/1.0 200 OK", b"Content-Length: 2", body=b"ok"),
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    "body-long": answer(b"HTTP/1.1 200 OK", b"Content-Length: 1", body=b"ok"),
    "two-answers": answer(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok") * 2,
    "obs-fold": answer(b"HTTP/1.1 200 OK", b"X-A: a", b" b", b"Content-Length: 2", body=b"ok"),
    "control-char": answer(b"HTTP/1.1 200 OK", b"X-A: a\x01", b"Content-Length: 2", body=b"ok"),
    "no-colon": answer(b"HTTP/1.1 200 OK", b"X-A", b"Content-Length: 2", body=b"ok"),
    "garbage": b"SPDY/9 what is this\r\n\r\n",
}


@pytest.mark.parametrize("data", list(DECLINED_ANSWERS.values()), ids=list(DECLINED_ANSWERS))
def test_parse_answer_declines(data: bytes) -> None:
    assert declined(parse_answer(data, False))
    assert declined(parse_answer(data, False))  # and the memo does not change that


def test_parse_answer_reads_on_for_the_rest_of_a_small_answer() -> None:
    """The beginning of an answer that fits the lane's buffer: read on (True); the
    beginning of a larger one: not for this lane."""
    limit = leanlane.BUFFER_LIMIT
    whole = answer(b"HTTP/1.1 200 OK", b"Content-Length: 10", body=b"0123456789")
    for cut in (1, 10, whole.index(b"\r\n\r\n") + 2, whole.index(b"0123"), len(whole) - 1):
        assert parse_answer(whole[:cut], False) is True, cut
    assert parse_answer(whole, False) == (200, b"content-length: 10\r\n", b"0123456789", True)
    head = answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % limit)
    assert declined(parse_answer(head + b"x" * 100, False))  # head and body over the limit
    fits = answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % (limit - 200))
    assert parse_answer(fits, False) is True
    assert declined(parse_answer(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * limit, False))
    assert declined(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX", False))


def test_parse_answer_memo_stays_bounded_and_right() -> None:
    leanlane._ANSWERS.clear()
    kept = leanlane._ANSWERS_KEPT
    for n in range(3 * kept + 7):
        data = answer(b"HTTP/1.1 200 OK", b"X-N: %d" % n, b"Content-Length: 1", body=b"x")
        assert parse_answer(data, False) == (
            200,
            b"x-n: %d\r\ncontent-length: 1\r\n" % n,
            b"x",
            True,
        )
        assert 0 < len(leanlane._ANSWERS) <= kept
    # a head too long to remember is parsed each time, and not kept
    big = answer(
        b"HTTP/1.1 200 OK",
        b"X-Big: " + b"b" * (leanlane._ANSWER_KEY_LIMIT + 1),
        b"Content-Length: 0",
    )
    size = len(leanlane._ANSWERS)
    got = parse_answer(big, False)
    assert isinstance(got, tuple) and got[0] == 200
    assert len(leanlane._ANSWERS) == size
    # a remembered head still checks the body of each answer against its length
    short = answer(b"HTTP/1.1 200 OK", b"X-N: 0", b"Content-Length: 1")
    assert not isinstance(parse_answer(short, False), tuple)
    assert declined(parse_answer(short + b"xy", False))


# ------------------------------------------------------------------ both lanes, same bytes

P = LEAN_P.encode()
DIFFERENTIAL_HEADS = {
    "plain": b"GET " + P + b"/echo HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "head": b"HEAD " + P + b"/blob HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "no-host": b"GET " + P + b"/x HTTP/1.1\r\n\r\n",
    "mixed-case-and-several": (
        b"GET " + P + b"/a/b HTTP/1.1\r\nHoSt: Example.COM\r\nACCEPT: */*\r\n"
        b"User-Agent: t/1.0\r\nX-Mixed-CASE: Value\r\n\r\n"
    ),
    "query-with-percent": b"GET " + P + b"/q?a=%20b&c=%2F&d=%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    "repeated-names": (
        b"GET " + P + b"/r HTTP/1.1\r\nHost: x\r\nX-R: 1\r\nx-r: 2\r\nCookie: a=1\r\n"
        b"Cookie: b=2\r\n\r\n"
    ),
    "keep-alive-and-hop-by-hop": (
        b"GET " + P + b"/h HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\r\n"
    ),
    "forwarded-for": b"GET " + P + b"/f HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n",
    "inner-spaces-obs-text-empty": (
        b"GET " + P + b"/o HTTP/1.1\r\nHost: x\r\nX-A: a  b\tc\r\nX-O: \x80\xff\r\nX-E:\r\n\r\n"
    ),
    "trailing-spaces-and-tabs": b"GET " + P + b"/t HTTP/1.1\r\nHost: x\r\nX-T: v \t\r\n\r\n",
}


async def one_request_each_lane(record: Recorder, proxied: ProxyServer, data: bytes) -> None:
    """``data`` sent with the lean lane off, then on: the upstream heads and the answers
    (but the Date) are the same, and the lean lane answered the second."""
    head_only = data.startswith(b"HEAD ")
    await warm_raw(proxied)
    got: dict[bool, tuple[bytes, bytes]] = {}
    for on in (False, True):
        before = lean_count()
        with lean_lane(on):
            response = await send_raw(proxied.port, data, head_only)
        got[on] = (record.heads[-1], without_date(response))
        assert lean_count() == before + on, f"lean lane {'on' if on else 'off'}"
    assert got[True][0] == got[False][0]  # what the upstream got
    assert got[True][1] == got[False][1]  # what the client got


@pytest.mark.parametrize("data", list(DIFFERENTIAL_HEADS.values()), ids=list(DIFFERENTIAL_HEADS))
async def test_both_lanes_send_and_answer_the_same_bytes(data: bytes) -> None:
    async with recording_upstream() as record, proxy_server(record.url) as proxied:
        await one_request_each_lane(record, proxied, data)
        # the same request line went upstream, and the upstream's answer came back
        assert record.heads[-1].split(b"\r\n", 1)[0] == data.split(b"\r\n", 1)[0]
        assert len(record.heads) == 3


DIFFERENTIAL_ANSWERS = {
    "hop-by-hop": answer(
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"Connection: keep-alive, X-Hop",
        b"Keep-Alive: timeout=5",
        b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
        b"Server: upstream",
        b"X-Hop: 1",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"Content-Length: 2",
        body=b"ok",
    ),
    "404-mixed-case": answer(b"HTTP/1.1 404 Nope", b"X-AbC: DeF", b"content-length: 1", body=b"x"),
    "obs-text-and-inner-spaces": answer(
        b"HTTP/1.1 200 OK", b"X-O: \x80\xff", b"X-A: a  b\tc", b"Content-Length: 1", body=b"x"
    ),
    "empty-body": answer(b"HTTP/1.1 200 OK", b"Content-Length: 0"),
    "trailing-spaces-and-tabs": answer(
        b"HTTP/1.1 200 OK", b"X-T: v \t", b"Content-Length: 1", body=b"x"
    ),
}


@pytest.mark.parametrize(
    "reply", list(DIFFERENTIAL_ANSWERS.values()), ids=list(DIFFERENTIAL_ANSWERS)
)
async def test_both_lanes_pass_on_the_same_answer(reply: bytes) -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(fixed_answer(head) if n == 0 else reply)  # the warm-up gets the first
        await writer.drain()
        return True

    data = b"GET " + P + b"/a HTTP/1.1\r\nHost: x\r\n\r\n"
    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await one_request_each_lane(record, proxied, data)
    assert len(record.heads) == 3


# ------------------------------------------------------------------ replay


async def path_answer(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
    """200 whose body is the request's target, in one write."""
    target = head.split(b" ", 2)[1]
    writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(target), body=target))
    await writer.drain()
    return True


async def test_the_same_head_again_is_replayed_on_the_lean_lane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    real = parse_request  # what nocosup.fastpath calls

    def counting(data: bytes) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(nocosup.fastpath, "parse_request", counting)
    a = b"GET " + P + b"/a?n=1 HTTP/1.1\r\nHost: x\r\nX-Client: c\r\n\r\n"
    b = b"GET " + P + b"/b HTTP/1.1\r\nHost: x\r\n\r\n"
    async with recording_upstream(path_answer) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            routed, lean, sent = proxied.fast_routed, lean_count(), len(record.heads)
            parsed.clear()
            for _ in range(3):
                writer.write(a)
                got = await asyncio.wait_for(read_response(reader), 30)
                assert (status_of(got), body_of(got)) == (200, P + b"/a?n=1")
            assert lean_count() == lean + 3
            assert proxied.fast_routed == routed + 3  # a replay counts as routed
            assert parsed == [a]  # parsed once, then sent again as it was
            heads = record.heads[sent:]
            assert len(heads) == 3 and heads[0] == heads[1] == heads[2]
            assert b"x-client: c\r\n" in heads[0]

            routed, lean, sent = proxied.fast_routed, lean_count(), len(record.heads)
            parsed.clear()
            for data, target in ((b, P + b"/b"), (a, P + b"/a?n=1"), (a, P + b"/a?n=1")):
                writer.write(data)
                got = await asyncio.wait_for(read_response(reader), 30)
                assert (status_of(got), body_of(got)) == (200, target)
            assert lean_count() == lean + 3
            assert proxied.fast_routed == routed + 3
            assert parsed == [b, a]  # b replaced the replay of a; then a replaced b's
            heads = record.heads[sent:]
            assert [h.split(b" ", 2)[1] for h in heads] == [P + b"/b", P + b"/a?n=1", P + b"/a?n=1"]
            assert heads[1] == heads[2]
            assert b"x-client" not in heads[0]
        finally:
            writer.close()


async def test_heads_that_change_every_time_make_few_replays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection whose header lines change with every request (a browser's) makes a
    replay for a doubling gap of requests while none is used (1, 2, 4, ... 32), not for
    each; when its heads repeat, a replay is made within that gap and used again."""
    parsed: list[bytes] = []
    made: list[bytes] = []
    real_parse, real_replay = parse_request, nocosup.fastpath.Replay

    def counting_parse(data: bytes) -> Any:
        parsed.append(data)
        return real_parse(data)

    def counting_replay(data: bytes, *args: Any) -> Any:
        made.append(data)
        return real_replay(data, *args)

    monkeypatch.setattr(nocosup.fastpath, "parse_request", counting_parse)
    monkeypatch.setattr(nocosup.fastpath, "Replay", counting_replay)
    async with recording_upstream(path_answer) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            lean = lean_count()

            async def ask(head: bytes) -> None:
                writer.write(head)
                got = await asyncio.wait_for(read_response(reader), 30)
                assert (status_of(got), body_of(got)) == (200, P + b"/a"), got

            parsed.clear()
            for n in range(40):
                await ask(b"GET " + P + b"/a HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n" % n)
            assert len(parsed) == 40  # none could be replayed
            assert len(made) == 6  # at requests 1, 2, 4, 8, 16 and 32

            same = b"GET " + P + b"/a HTTP/1.1\r\nHost: x\r\nX-N: same\r\n\r\n"
            parsed.clear()
            for _ in range(40):
                await ask(same)
            assert 1 <= len(parsed) <= 32  # until the gap (31) ran out, then replays
            assert len(made) == 7
            assert lean_count() == lean + 80
            heads = record.heads[-40:]
            assert all(head == heads[0] for head in heads)  # replays send what was sent
        finally:
            writer.close()


async def test_another_target_with_the_same_header_lines_is_retargeted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the request line changed: the head is not parsed or routed again, and the
    upstream gets what the express lane sends; a target the replay cannot vouch for (the
    environment chosen in the query, a bare "?", an escaped path) is parsed as usual."""
    parsed: list[bytes] = []
    real = parse_request

    def counting(data: bytes) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(nocosup.fastpath, "parse_request", counting)
    fields = b" HTTP/1.1\r\nHost: x\r\nX-Client: c\r\n\r\n"
    targets = [
        (b"GET", P + b"/a?n=1", False),
        (b"GET", P + b"/b?n=2", True),
        (b"HEAD", P + b"/c", True),
        (b"GET", P + b"/d?__env=env", False),
        (b"GET", P + b"/e?", False),
        (b"GET", P + b"/f", True),  # from the replay of /e?, which the lean lane served
        (b"GET", P + b"/g", True),
        (b"GET", P + b"/h%20i", False),  # parsed, declined: httptools' and the express lane's
        (b"GET", P + b"/j", True),  # the replay of /g still stands
    ]
    sent: dict[bool, list[bytes]] = {}
    for on in (False, True):
        async with recording_upstream(path_answer) as record, proxy_server(record.url) as p:
            await warm_raw(p)
            with lean_lane(on):
                reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
                try:
                    start, routed = len(record.heads), p.fast_routed
                    parsed.clear()
                    for method, target, _retargeted in targets:
                        writer.write(method + b" " + target + fields)
                        head_only = method == b"HEAD"
                        got = await asyncio.wait_for(read_response(reader, head_only), 30)
                        assert status_of(got) == 200, got
                        if not head_only:
                            assert body_of(got) == target.rstrip(b"?")
                    assert p.fast_routed == routed + len(targets)
                finally:
                    writer.close()
                # each run has its own upstream: its port is the one difference allowed
                sent[on] = [re.sub(rb"\r\nhost: [^\r]*", b"", h) for h in record.heads[start:]]
            if on:
                retargeted = [m + b" " + t + fields for m, t, r in targets if r]
                assert all(head not in parsed for head in retargeted)
                assert parsed == [m + b" " + t + fields for m, t, r in targets if not r]
    assert sent[True] == sent[False]


async def test_a_replay_follows_the_gateway_to_a_new_upstream() -> None:
    """The replay rests on the gateway's choice: when it changes (stamp_holds is False),
    the head is routed again, to the new upstream."""
    data = b"GET " + P + b"/a HTTP/1.1\r\nHost: x\r\n\r\n"
    async with (
        recording_upstream(path_answer) as first,
        recording_upstream(path_answer) as second,
        proxy_server(first.url) as proxied,
    ):
        await warm_raw(proxied)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            for _ in range(2):
                writer.write(data)
                assert status_of(await asyncio.wait_for(read_response(reader), 30)) == 200
            assert len(first.heads) == 3 and second.heads == []
            proxied.upstream = second.url  # the gateway now chooses the second
            for _ in range(2):
                writer.write(data)
                got = await asyncio.wait_for(read_response(reader), 30)
                assert (status_of(got), body_of(got)) == (200, P + b"/a")
            assert len(first.heads) == 3 and len(second.heads) == 2
        finally:
            writer.close()


# ------------------------------------------------------------------ escalation


def late_body(size: int) -> Respond:
    """Answers (after the warm-up's) whose head comes first and ``size`` body bytes
    0.2 s later."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            return await _fixed(head, writer, n)
        writer.write(answer(b"HTTP/1.1 200 OK", b"X-Late: 1", b"Content-Length: %d" % size))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"z" * size)
        await writer.drain()
        return True

    return respond


@pytest.mark.parametrize("size", [10, 100_000], ids=["small", "over-the-buffer"])
async def test_an_answer_in_two_reads_is_passed_on_whole(size: int) -> None:
    """The head, then the body 0.2 s later: a small answer is gathered and passed on by
    the lean lane; a larger one is escalated to the express lane. Whole either way."""
    async with recording_upstream(late_body(size)) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        lean, express = lean_count(), LANES.express
        got = await send_raw(proxied.port, b"GET " + P + b"/late HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(got) == 200 and body_of(got) == b"z" * size
        assert b"\r\nx-late: 1\r\n" in got
        gathered = size < leanlane.BUFFER_LIMIT
        assert lean_count() == lean + gathered
        assert LANES.express == express + (not gathered)

        async def idle() -> bool:
            return proxied.pool() == {"active": 0, "idle": 1, "waiting": 0}

        await eventually(idle, "the connection went back to the pool")
        # and is reused: no new upstream connection
        got = await send_raw(proxied.port, b"GET " + P + b"/late HTTP/1.1\r\nHost: x\r\n\r\n")
        assert body_of(got) == b"z" * size
        assert record.connections == 1


@pytest.mark.parametrize("size", [10, 100_000], ids=["small", "over-the-buffer"])
async def test_upstream_closing_mid_body_cuts_the_answer(size: int) -> None:
    """The head and half the body, then the upstream closes: the client gets the head and
    what came of the body, then its connection closes (a cut answer, as on every lane)."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n != 1:
            return await _fixed(head, writer, n)
        writer.write(answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % size))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"h" * (size // 2))
        await writer.drain()
        return False

    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            writer.write(b"GET " + P + b"/cut HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(read_head(reader), 30)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"\r\ncontent-length: %d\r\n" % size in head
            rest = await asyncio.wait_for(reader.read(), 30)  # until the proxy closes
            assert rest == b"h" * (size // 2)
        finally:
            writer.close()

        async def released() -> bool:
            return proxied.pool()["active"] == 0

        await eventually(released, "the broken connection was dropped")
        # the proxy serves on: a new upstream connection (the warm-up's was closed)
        got = await send_raw(proxied.port, b"GET " + P + b"/again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(got) == 200
        assert record.connections == 2


async def test_a_chunked_answer_is_passed_on_whole(declined_answers: list[bytes]) -> None:
    chunks = [b"x" * 5, b"y" * 300, b"z"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            return await _fixed(head, writer, n)
        writer.write(answer(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", body=body))
        await writer.drain()
        return True

    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        lean = lean_count()
        for _ in range(2):
            got = await send_raw(proxied.port, b"GET " + P + b"/c HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(got) == 200
            assert unchunked(got) == b"".join(chunks)
        assert lean_count() == lean
        assert len(declined_answers) == 2
        assert record.connections == 1  # kept alive, reused


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            return await _fixed(head, writer, n)
        writer.write(
            answer(b"HTTP/1.1 200 OK", b"Connection: close", b"Content-Length: 6", body=b"closed")
        )
        await writer.drain()
        return False  # and close

    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        assert record.connections == 1
        lean = lean_count()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            writer.write(b"GET " + P + b"/x HTTP/1.1\r\nHost: x\r\n\r\n")
            got = await asyncio.wait_for(read_response(reader), 30)
            assert status_of(got) == 200 and body_of(got) == b"closed"
            assert b"connection:" not in got.lower()  # the client's connection stays
            assert lean_count() == lean + 1
            assert proxied.pool() == {"active": 0, "idle": 0, "waiting": 0}
            # the client's connection is still good; the next request opens a new one
            writer.write(b"GET " + P + b"/y HTTP/1.1\r\nHost: x\r\n\r\n")
            got = await asyncio.wait_for(read_response(reader), 30)
            assert status_of(got) == 200 and body_of(got) == b"closed"
            assert record.connections == 2
        finally:
            writer.close()


SHUTTING_DOWN = json.dumps(
    {"error": {"code": "SHUTTING_DOWN", "message": "this server is shutting down"}}
).encode()


@pytest.mark.parametrize("lean_on", [True, False], ids=["lean", "express"])
async def test_shutting_down_answer_goes_through_the_gateway_again(lean_on: bool) -> None:
    """A draining upstream's 503 SHUTTING_DOWN is never passed on from the lean or express
    lane: the gateway decides again (here: the same upstream, which now answers)."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            reply = answer(
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Type: application/json",
                b"Retry-After: 2",
                b"Content-Length: %d" % len(SHUTTING_DOWN),
                body=SHUTTING_DOWN,
            )
        else:
            reply = answer(b"HTTP/1.1 200 OK", b"Content-Length: 5", body=b"again")
        writer.write(reply)
        await writer.drain()
        return True

    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        front: Any = proxied.server.config.app  # test_proxy's _FastFront
        gateway = front.gateway
        handled: list[str] = []
        real_handle = gateway.handle

        async def handle(name: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
            handled.append(scope["path"])
            await real_handle(name, scope, receive, send)

        gateway.handle = handle
        lean = lean_count()
        with lean_lane(lean_on):
            got = await send_raw(proxied.port, b"GET " + P + b"/d HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status_of(got), body_of(got)) == (200, b"again")
        assert handled == [LEAN_P + "/d"]  # through the gateway once more
        assert len(record.heads) == 3 and record.heads[1] == record.heads[2]
        assert lean_count() == lean  # not passed on by the lean lane

    other_503 = json.dumps({"error": {"code": "APP_OVERLOADED", "message": "busy"}}).encode()

    async def busy(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0:
            return await _fixed(head, writer, n)
        writer.write(
            answer(
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Length: %d" % len(other_503),
                body=other_503,
            )
        )
        await writer.drain()
        return True

    async with recording_upstream(busy) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        lean = lean_count()
        with lean_lane(lean_on):
            got = await send_raw(proxied.port, b"GET " + P + b"/d HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status_of(got), body_of(got)) == (503, other_503)  # passed on, once
        assert len(record.heads) == 2
        assert lean_count() == lean + lean_on


# ------------------------------------------------------------------ pipelining


async def test_a_request_pipelined_behind_a_lean_exchange(upstream: str) -> None:
    async with proxy_server(upstream) as proxied:
        await warm_raw(proxied)
        answered = LANES.express + lean_count()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            writer.write(f"GET {LEAN_P}/slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()

            async def in_flight() -> bool:
                return proxied.pool()["active"] == 1

            await eventually(in_flight, "the slow request reached the upstream")
            writer.write(f"GET {LEAN_P}/echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            first = await asyncio.wait_for(read_response(reader), 30)
            second = await asyncio.wait_for(read_response(reader), 30)
            assert status_of(first) == 200 and json.loads(body_of(first)) == {"slow": True}
            assert status_of(second) == 200 and json.loads(body_of(second))["query"] == "n=2"
            writer.write(f"GET {LEAN_P}/echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            third = await asyncio.wait_for(read_response(reader), 30)
            assert json.loads(body_of(third))["query"] == "n=3"
        finally:
            writer.close()
        # the first went without a task (lean, or escalated to the express lane)
        assert LANES.express + lean_count() >= answered + 1


async def test_a_request_pipelined_behind_a_lean_answer_in_one_read() -> None:
    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if b"/slow" in head:
            await asyncio.sleep(0.3)
        return await path_answer(head, writer, n)

    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        lean = lean_count()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            writer.write(b"GET " + P + b"/slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()

            async def in_flight() -> bool:
                return len(record.heads) == 2

            await eventually(in_flight, "the slow request reached the upstream")
            writer.write(b"GET " + P + b"/next HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await asyncio.wait_for(read_response(reader), 30)
            second = await asyncio.wait_for(read_response(reader), 30)
            assert body_of(first) == P + b"/slow"
            assert body_of(second) == P + b"/next"
        finally:
            writer.close()
        assert lean_count() >= lean + 1  # the slow one at least
        assert [h.split(b" ", 2)[1] for h in record.heads[1:]] == [P + b"/slow", P + b"/next"]


async def test_a_retargeted_request_leaving_the_lane_keeps_its_own_target() -> None:
    """A retargeted request shares its replay's scopes until it needs its own: sent
    through the gateway again (a 503 SHUTTING_DOWN), it goes with its own target, and
    the replay's next use still sends the replayed target; a retargeted HEAD is one."""

    async def respond(head: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        target = head.split(b" ", 2)[1]
        if target == P + b"/b?x=1" and n == 3:  # the first /b only
            reply = answer(
                b"HTTP/1.1 503 Service Unavailable",
                b"Content-Length: %d" % len(SHUTTING_DOWN),
                body=SHUTTING_DOWN,
            )
        else:
            reply = answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(target), body=target)
            if head.startswith(b"HEAD "):
                reply = reply[: -len(target)]
        writer.write(reply)
        await writer.drain()
        return True

    fields = b" HTTP/1.1\r\nHost: x\r\n\r\n"
    async with recording_upstream(respond) as record, proxy_server(record.url) as proxied:
        await warm_raw(proxied)
        front: Any = proxied.server.config.app
        gateway = front.gateway
        handled: list[tuple[str, str, bytes]] = []
        real_handle = gateway.handle

        async def handle(name: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
            handled.append((scope["method"], scope["path"], scope["query_string"]))
            await real_handle(name, scope, receive, send)

        gateway.handle = handle
        lean = lean_count()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
        try:
            writer.write(b"GET " + P + b"/a" + fields)  # lean, becomes the replay
            assert body_of(await asyncio.wait_for(read_response(reader), 30)) == P + b"/a"
            writer.write(b"HEAD " + P + b"/c" + fields)  # retargeted: a HEAD
            got = await asyncio.wait_for(read_response(reader, head_only=True), 30)
            assert status_of(got) == 200
            assert b"content-length: %d" % len(P + b"/c") in got.lower()
            writer.write(b"GET " + P + b"/b?x=1" + fields)  # retargeted, then 503
            assert body_of(await asyncio.wait_for(read_response(reader), 30)) == P + b"/b?x=1"
            writer.write(b"GET " + P + b"/a" + fields)  # the replay, unchanged
            assert body_of(await asyncio.wait_for(read_response(reader), 30)) == P + b"/a"
        finally:
            writer.close()
        assert handled == [("GET", LEAN_P + "/b", b"x=1")]  # again, with its own target
        assert lean_count() == lean + 3  # all but the one sent again
        targets = [h.split(b"\r\n", 1)[0] for h in record.heads[1:]]
        assert targets == [
            b"GET " + P + b"/a HTTP/1.1",
            b"HEAD " + P + b"/c HTTP/1.1",
            b"GET " + P + b"/b?x=1 HTTP/1.1",
            b"GET " + P + b"/b?x=1 HTTP/1.1",
            b"GET " + P + b"/a HTTP/1.1",
        ]
