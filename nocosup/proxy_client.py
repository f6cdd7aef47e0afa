"""The HTTP/1.1 client behind the proxy: one seam, one lean implementation.

:class:`ProxyClient` is the seam (``nocosup.proxy.Proxy`` takes any implementation);
:class:`LeanClient` is the one nocosup uses: an ``asyncio.Protocol`` per connection, the
``httptools`` response parser (the C parser uvicorn already depends on) and a keep-alive
pool per upstream. It exists because a shared ``httpx.AsyncClient`` costs about 1-3 ms of
CPU per proxied request on our machines and aiohttp about 0.2 ms; this one costs a
fraction of that (``bench/proxy_clients.py`` measures all of them side by side).

It is deliberately small: HTTP/1.1 (over TLS for https upstreams) to a worker we trust, no
redirects, no cookie jar, no decompression, no environment proxies. Bodies stream both
ways with flow control.

Exceptions (all raised from :meth:`ProxyClient.request` or :meth:`UpstreamResponse.read`)::

    UpstreamError
    ├── UpstreamConnectError   the connection could not be opened (refused, unreachable)
    ├── UpstreamTimeoutError   connect, read, write or pool timeout (``phase`` says which)
    └── UpstreamProtocolError  the upstream closed the connection or answered garbage
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ssl
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Body",
    "LeanClient",
    "ProxyClient",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "keep_large_buffers_on_heap",
]

Headers = list[tuple[bytes, bytes]]
#: A request body: all of it in memory, a stream of chunks, or none.
Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(Exception):
    """The upstream exchange failed."""


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened."""


class UpstreamTimeoutError(UpstreamError):
    """A timeout expired; ``phase`` is ``connect``, ``read``, ``write`` or ``pool``."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """The upstream closed the connection early or sent a malformed response."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A parsed base URL such as ``http://127.0.0.1:9001`` (parse once, reuse per request)."""

    url: str
    scheme: str
    host: str
    port: int
    #: Path of the base URL without a trailing slash (usually empty); prefixed to targets.
    base_path: bytes
    #: The ``Host`` header value for this upstream.
    host_header: bytes
    key: tuple[str, str, int] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """Validate and split ``url``; only http and https with a host are accepted."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL with a host, got {url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"upstream URL must not carry credentials or a query: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        netloc = shown if port == default else f"{shown}:{port}"
        return cls(
            url=f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}",
            scheme=parts.scheme,
            host=host,
            port=port,
            base_path=parts.path.rstrip("/").encode("ascii"),
            host_header=netloc.encode("ascii"),
            key=(parts.scheme, host, port),
        )


class UpstreamResponse(ABC):
    """An upstream response whose body is still on the wire.

    The caller owns it and must call :meth:`aclose` (in a ``finally``) whatever happens;
    closing returns the connection to the pool when the body was read to the end and
    drops it otherwise.
    """

    status: int
    #: Response headers as received, names lower-cased.
    headers: Headers

    @property
    @abstractmethod
    def at_eof(self) -> bool:
        """True once it is known that no body bytes remain beyond those already taken."""

    def take(self) -> bytes:
        """Body bytes already received, without waiting (``b""`` when none)."""
        return b""

    @abstractmethod
    async def read(self) -> bytes:
        """The next body bytes; ``b""`` at the end. Raises :class:`UpstreamError`."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the connection unless the body is complete (the client went away);
        a pending :meth:`read` then fails."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the response (idempotent)."""


class ProxyClient(ABC):
    """What the proxy needs from an HTTP client: one request, a streamed response."""

    @abstractmethod
    async def request(
        self,
        method: str,
        upstream: Upstream,
        target: bytes,
        headers: Headers,
        body: Body = None,
    ) -> UpstreamResponse:
        """Send ``method target`` to ``upstream`` with exactly ``headers`` (the caller sets
        Host and Content-Length or ``Transfer-Encoding: chunked`` for a streamed body) and
        return once the response headers arrived. Exceptions raised by a streamed ``body``
        propagate unchanged after the connection is dropped."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close every pooled connection."""


#: The largest body a proxy gathers before it writes the answer, so that the head and
#: the body leave in one write (nocosup.cycle: a process killed between the two would
#: leave its client a head without a body, which no load balancer retries).
GATHER_LIMIT = 64 * 1024


def gathered(headers: Headers) -> bool:
    """Whether an answer with these headers declares a body up to :data:`GATHER_LIMIT`
    (its Content-Length): one to wait for whole before writing anything."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and len(value) <= 6 and int(value) <= GATHER_LIMIT
    return False


# --------------------------------------------------------------------------- lean client

_HIGH_WATER = 256 * 1024  # pause reading the upstream when this much body is unread
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_METHODS = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


class _Stale(UpstreamProtocolError):
    """A connection closed before a byte of the answer came: a kept-alive one the upstream
    dropped while idle, or a new one that a server shutting down accepted from its backlog
    and closed. Nothing says the request ran, so an idempotent one may go again."""


def _unanswered(used: bool) -> str:
    kind = "a kept-alive" if used else "a new"
    return f"upstream closed {kind} connection before answering"


def never_answered(exc: UpstreamError) -> bool:
    """Whether the upstream refused the connection, or closed one before a byte of the
    answer to a request that may be sent again: what a server that is shutting down (or
    gone) does. The caller may send it elsewhere, or answer 503."""
    return isinstance(exc, UpstreamConnectError | _Stale)


class _Conn(asyncio.Protocol):
    """One upstream connection and the state of the exchange it carries.

    The parser callbacks (``on_*``) run inside ``data_received``; the request task waits on
    ``_waiter``, which timers fail with :class:`UpstreamTimeoutError`.
    """

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.in_pool = False
        self.used = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._phase = "read"
        self._timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._parser: httptools.HttpResponseParser | None = None
        #: Called after each read and when the connection is lost, for a caller that
        #: waits for no future (the supervisor's express lane, nocosup.fastpath).
        self.listener: Callable[[], None] | None = None
        #: While set, each read goes to it unparsed (the supervisor's lean lane,
        #: nocosup.leanlane) until :meth:`parse_from` hands the exchange to the parser.
        self.sink: Callable[[bytes], None] | None = None
        self._begin(False)

    def _begin(self, head: bool) -> None:
        self.status = 0
        self.headers: Headers = []
        self.headers_done = False
        self.complete = False
        self.reusable = False
        self.received = False
        self.error: UpstreamError | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self._head = head
        self._interim = False
        self._framed = False  # Content-Length or Transfer-Encoding seen

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.received = True
            self.sink(data)
            return
        parser = self._parser
        if parser is None or self.complete:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
            return
        self.received = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamProtocolError(f"malformed response from upstream: {exc}"))
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
        if self.listener is not None:
            self.listener()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sink is not None and not self.complete:
            # what the sink gathered is parsed (nocosup.leanlane) with this error kept
            self._fail(
                UpstreamProtocolError("upstream closed the connection mid-response")
                if self.received
                else _Stale(_unanswered(self.used))
            )
        elif self._parser is not None and not self.complete:
            if self.headers_done and not self._framed and not self._head:
                self.complete = True  # body delimited by the end of the connection
            elif not self.received:
                self._fail(_Stale(_unanswered(self.used)))
            else:
                self._fail(UpstreamProtocolError("upstream closed the connection mid-response"))
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self.in_pool:
            self.pool.discard(self)
        if self.listener is not None:
            self.listener()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx interim answer (we never send Expect or Upgrade): wait for the real one.
            self._interim = True
            return
        self.status = status
        self.headers_done = True
        if self._head:
            self.complete = True
            self.reusable = self._parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._interim:
            self._interim = False
            self.headers = []
            self._framed = False
            return
        if not self.complete:
            self.complete = True
            self.reusable = self._parser.should_keep_alive()
            self._wake()

    # waiting
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    async def _wait(self, timeout: float | None, phase: str) -> None:
        """Wait for the parser to make progress, at most ``timeout`` seconds.

        The timer is lazy: one armed timer per connection is pushed back by each wait and
        re-armed only when it fires early, instead of a ``call_later`` + ``cancel`` per
        wait (2 µs of the ~11 µs of Python a proxied request costs)."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        if timeout is not None:
            deadline = self.loop.time() + timeout
            self._deadline = deadline
            self._phase = phase
            self._timeout = timeout
            if self._timer is None or self._timer_when > deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_at(deadline, self._on_timer)
                self._timer_when = deadline
        try:
            await waiter
        finally:
            self._waiter = None
            self._deadline = None

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._waiter is None or self.lost:
            return  # nothing is waiting: the next wait arms a new timer
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_when = deadline
            return
        _expire(self._waiter, self._phase, self._timeout)

    # request side
    def start(self, head: bool) -> None:
        self._begin(head)
        self._parser = httptools.HttpResponseParser(self)
        if self.lost:  # closed while it was being handed over
            self.error = _Stale(_unanswered(self.used))

    def start_raw(self, sink: Callable[[bytes], None]) -> None:
        """Begin an exchange whose answer goes to ``sink`` as read, unparsed; the
        listener still hears of the connection's loss (``error`` set as :meth:`start`
        would). Reusable again only once :meth:`finish_raw` says so."""
        self._begin(False)
        self._parser = None
        self.sink = sink
        if self.lost:
            self.error = _Stale(_unanswered(self.used))

    def finish_raw(self, reusable: bool) -> None:
        """The sink had the whole answer: the exchange is complete."""
        self.sink = None
        self.complete = True
        self.reusable = reusable and not self.lost

    def parse_from(self, data: bytes, head: bool) -> None:
        """Leave raw mode: parse ``data`` (what the sink was given) and what comes next,
        as after :meth:`start`; on a connection already lost, with its error."""
        error, lost = self.error, self.lost
        self.sink = None
        self.start(head)
        if lost:  # the error connection_lost chose for what was read
            self.error = error
        self.data_received(data)

    def take_chunks(self) -> list[bytes]:
        """Everything buffered, as received (no copy); resumes reading if paused."""
        chunks = self.chunks
        self.chunks = []
        self.buffered = 0
        if self._read_paused and not self.lost and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return chunks

    def take(self) -> bytes:
        """Everything buffered, joined; resumes reading if the buffer had paused it."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._read_paused and not self.lost and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> bool:
        """Write now; True when the caller must ``await drain()`` (flow control)."""
        if self.lost or self.transport is None:
            return False
        self.transport.write(data)
        return self._write_paused and not self.lost

    async def drain(self, timeout: float | None) -> None:
        """Wait until the upstream has read enough of what was written."""
        if not self._write_paused or self.lost:
            return
        drain = self.loop.create_future()
        self._drain = drain
        handle = (
            self.loop.call_later(timeout, _expire, drain, "write", timeout)
            if timeout is not None
            else None
        )
        try:
            await drain
        finally:
            self._drain = None
            if handle is not None:
                handle.cancel()

    async def write_all(self, data: bytes, timeout: float | None) -> None:
        if self.write(data):
            await self.drain(timeout)

    async def read(self, timeout: float | None) -> bytes:
        while True:
            if self.chunks:
                return self.take()
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(timeout, "read")

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.lost:
            self.transport.close()


def _expire(waiter: asyncio.Future[Any], phase: str, timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            UpstreamTimeoutError(phase, f"upstream {phase} timeout ({timeout:g}s)")
        )


class _Pool:
    """Keep-alive connections to one upstream, at most ``limit`` open at once."""

    def __init__(self, client: LeanClient, upstream: Upstream) -> None:
        self.client = client
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.total = 0  # open or opening connections, idle ones included
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()

    @property
    def active(self) -> int:
        return self.total - len(self.idle)

    def take_idle(self) -> _Conn | None:
        """A pooled connection still fresh enough to reuse, without waiting."""
        idle = self.idle
        if idle:
            expiry = self.client.keepalive_expiry
            now = self.loop.time()
            while idle:
                conn = idle.pop()
                conn.in_pool = False
                if now - conn.idle_since <= expiry and not conn.lost:
                    return conn
                conn.close()
                self._free_slot()
        return None

    def close_idle(self) -> None:
        """Close every pooled connection (they are all suspect once one went stale)."""
        while self.idle:
            conn = self.idle.pop()
            conn.in_pool = False
            conn.close()
            self._free_slot()

    async def acquire(self) -> _Conn:
        """A connection: pooled, new, or the next one released (``pool_timeout``)."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        if self.total < self.client.max_connections:
            self.total += 1
            return await self._connect()
        waiter: asyncio.Future[_Conn | None] = self.loop.create_future()
        self.waiters.append(waiter)
        timeout = self.client.pool_timeout
        handle = (
            self.loop.call_later(timeout, _expire, waiter, "pool", timeout)
            if timeout is not None
            else None
        )
        try:
            got = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over just as we were cancelled: give back
                if handed is None:
                    self._free_slot()
                else:
                    self.release(handed)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if got is None:  # a slot, not a connection: open one (the slot is already counted)
            return await self._connect()
        return got

    async def _connect(self) -> _Conn:
        conn = _Conn(self)
        upstream = self.upstream
        client = self.client
        try:
            async with asyncio.timeout(client.connect_timeout):
                if upstream.scheme == "https":
                    await self.loop.create_connection(
                        lambda: conn,
                        upstream.host,
                        upstream.port,
                        ssl=client.ssl_context(),
                        server_hostname=upstream.host,
                    )
                else:
                    await self.loop.create_connection(lambda: conn, upstream.host, upstream.port)
        except TimeoutError:
            self._free_slot()
            raise UpstreamTimeoutError(
                "connect", f"connecting to {upstream.url} timed out ({client.connect_timeout:g}s)"
            ) from None
        except OSError as exc:
            self._free_slot()
            raise UpstreamConnectError(f"cannot connect to {upstream.url}: {exc}") from exc
        except BaseException:
            self._free_slot()
            conn.close()
            raise
        return conn

    def release(self, conn: _Conn) -> None:
        """Take a connection back: reuse it when its exchange ended cleanly."""
        conn._parser = None
        conn.sink = None
        if conn.reusable and not conn.lost and not self.client.closed:
            conn.used = True
            waiters = self.waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.loop.time()
            conn.in_pool = True
            self.idle.append(conn)
            return
        conn.close()
        self._free_slot()

    def discard(self, conn: _Conn) -> None:
        """An idle connection was closed by the upstream."""
        conn.in_pool = False
        try:
            self.idle.remove(conn)
        except ValueError:
            return
        self._free_slot()

    def _free_slot(self) -> None:
        self.total -= 1
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.total += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in self.idle:
            conn.in_pool = False
            conn.close()
        self.total -= len(self.idle)
        self.idle.clear()


class _LeanResponse(UpstreamResponse):
    __slots__ = ("_conn", "_pool", "_timeout", "headers", "status")

    def __init__(self, conn: _Conn, pool: _Pool, timeout: float | None) -> None:
        self._conn: _Conn | None = conn
        self._pool = pool
        self._timeout = timeout
        self.status = conn.status
        self.headers = conn.headers

    @property
    def at_eof(self) -> bool:
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    def take(self) -> bytes:
        conn = self._conn
        return b"" if conn is None else conn.take()

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        return await conn.read(self._timeout)

    def abort(self) -> None:
        conn = self._conn
        if conn is not None and not conn.complete:
            conn._fail(UpstreamProtocolError("response aborted"))
            conn.close()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose`: nothing here can be interrupted by a cancellation."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if not conn.complete:
            conn.close()  # unread body on the wire: the connection is out of step
        self._pool.release(conn)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def keep_large_buffers_on_heap() -> bool:
    """Let glibc serve buffers up to 1 MiB from the heap and keep up to 8 MiB of freed heap.

    By default glibc maps every allocation >= 128 KiB with ``mmap`` and unmaps it on free,
    and gives the heap top back beyond 128 KiB. A streamed body arrives as 256 KiB reads
    (uvloop's buffer), each a fresh bytes object, so each proxied megabyte cost ~500 page
    faults: ~1.1 ms of system CPU against ~0.1 ms with this set (bench/proxy.py, 1 MB).
    The cost is up to 8 MiB of freed memory kept resident. Process-wide and idempotent;
    a no-op (False) where the C library is not glibc.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl's malloc has no such knobs
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok: bool = mallopt(_M_MMAP_THRESHOLD, 1 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 8 << 20) == 1
    _malloc_tuned = ok
    return ok


class LeanClient(ProxyClient):
    """HTTP/1.1 over asyncio + httptools with a keep-alive pool per upstream.

    :param connect_timeout: seconds to open a connection (``None``: no limit).
    :param read_timeout: seconds to wait for the response head and for each body chunk.
    :param write_timeout: seconds a request body write may wait for the upstream to read.
    :param pool_timeout: seconds to wait for a free connection when ``max_connections``
        are busy.
    :param max_connections: open connections per upstream.
    :param keepalive_expiry: idle seconds after which a pooled connection is not reused;
        keep it below the upstream's keep-alive timeout (uvicorn: 5 s).
    :param ssl_context: for https upstreams; a default context is built on first use.
    :param tune_malloc: call :func:`keep_large_buffers_on_heap` (process-wide) so large
        bodies do not page-fault on every read.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = 60.0,
        write_timeout: float | None = 60.0,
        pool_timeout: float | None = 10.0,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        tune_malloc: bool = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if tune_malloc:
            keep_large_buffers_on_heap()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.pool_timeout = pool_timeout
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self.closed = False

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def stats(self) -> dict[str, dict[str, int]]:
        """Per upstream: connections ``active`` (carrying a request), ``idle``, ``waiting``."""
        return {
            pool.upstream.url: {
                "active": pool.active,
                "idle": len(pool.idle),
                "waiting": sum(1 for w in pool.waiters if not w.done()),
            }
            for pool in self._pools.values()
        }

    async def request(
        self,
        method: str,
        upstream: Upstream,
        target: bytes,
        headers: Headers,
        body: Body = None,
    ) -> UpstreamResponse:
        if self.closed:
            raise RuntimeError("the proxy client is closed")
        pool = self._pools.get(upstream.key)
        if pool is None:
            pool = self._pools[upstream.key] = _Pool(self, upstream)
        head = request_head(method, upstream, target, headers)
        head_only = method == "HEAD"
        # A request can be replayed on a fresh connection when a reused one turns out to
        # have been closed by the upstream, if it is idempotent and its body is in memory.
        replayable = method in _IDEMPOTENT and not _is_stream(body)
        while True:
            conn = pool.take_idle() or await pool.acquire()
            try:
                conn.start(head_only)
                if body is None or body.__class__ is bytes:
                    if conn.write(head + body if body else head):
                        await conn.drain(self.write_timeout)
                else:
                    await conn.write_all(head, self.write_timeout)
                    await self._stream_body(conn, body, headers)  # type: ignore[arg-type]
                while not conn.headers_done:  # inlined: this is the hot path
                    if conn.error is not None:
                        raise conn.error
                    await conn._wait(self.read_timeout, "read")
            except _Stale as stale:
                pool.release(conn)
                # the upstream dropped one connection unanswered: it has likely dropped
                # them all (a server shutting down), so the retry opens a new one
                pool.close_idle()
                if replayable:
                    replayable = False
                    continue
                message = str(stale)
                if method in _IDEMPOTENT and not _is_stream(body):
                    # twice: the upstream is going away. Still "never answered", so the
                    # caller may send it elsewhere (or answer 503)
                    raise _Stale(message) from None
                # a write may have been processed before the close: never replayed
                raise UpstreamProtocolError(message) from None
            except BaseException:
                conn.close()
                pool.release(conn)
                raise
            return _LeanResponse(conn, pool, self.read_timeout)

    def take_idle(self, upstream: Upstream) -> tuple[_Pool, _Conn] | None:
        """A pooled connection to ``upstream`` ready for a request now, with its pool (to
        ``release`` it to), or None when none is idle: for a caller that cannot wait."""
        pool = self._pools.get(upstream.key)
        if pool is None or self.closed:
            return None
        conn = pool.take_idle()
        return None if conn is None else (pool, conn)

    async def _stream_body(self, conn: _Conn, body: AsyncIterator[bytes], headers: Headers) -> None:
        chunked = (b"transfer-encoding", b"chunked") in headers
        timeout = self.write_timeout
        async for chunk in body:
            if conn.lost:
                break  # the upstream answered early and closed; its answer decides
            if not chunk:
                continue
            if chunked:
                await conn.write_all(b"%x\r\n%b\r\n" % (len(chunk), chunk), timeout)
            else:
                await conn.write_all(chunk, timeout)
        else:
            if chunked:
                await conn.write_all(b"0\r\n\r\n", timeout)
            return
        # Left the loop early: the request is incomplete, so the connection is done for.
        conn.reusable = False
        if not conn.headers_done and conn.error is not None:
            raise conn.error

    async def aclose(self) -> None:
        self.closed = True
        for pool in self._pools.values():
            pool.close()


def request_head(method: str, upstream: Upstream, target: bytes, headers: Headers) -> bytes:
    """The request line and ``headers`` of a request to ``upstream``, as sent."""
    bmethod = _METHODS.get(method) or method.encode("ascii")
    lines = [bmethod, b" ", upstream.base_path, target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _is_stream(body: Any) -> bool:
    return body is not None and not isinstance(body, bytes)
