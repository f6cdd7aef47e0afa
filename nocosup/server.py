"""The server layer of ``nocosup serve``: uvicorn's options and its HTTP protocols with the
two limits uvicorn lacks.

uvicorn 0.54 bounds the header block only with h11 (``h11_max_incomplete_event_size``,
answered with a plain-text 400), not at all with httptools, and it has no deadline for a
request head: a connection that sends nothing, or a header a byte a minute, is held
forever. The protocols here (one per parser) add both, the same way for either parser:

- a request line and headers over ``NOCOSUP_MAX_HEADER_SIZE`` bytes get 431
  ``HEADERS_TOO_LARGE`` (JSON) and the connection is closed; the parser never buffers
  more than the limit plus one read;
- a connection that has not sent a complete request head ``NOCOSUP_HEADER_TIMEOUT``
  seconds after it opened (or after its previous response) is closed.

The httptools protocol also writes each response's head with its first body bytes
(:mod:`nocosup.cycle`). Everything else is uvicorn's own: ``limit_concurrency`` (503 past
``NOCOSUP_MAX_CONNECTIONS``), ``ws_max_size`` (close 1009 past
``NOCOSUP_MAX_WS_MESSAGE``), ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import h11
import httptools
from starlette.types import Scope
from uvicorn._types import HTTPScope
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nocosup.config import Settings
from nocosup.cycle import CoalescingCycle
from nocosup.errors import HeadersTooLarge

#: ``--http`` choices: our protocol classes, by the parser they wrap.
PROTOCOLS = {
    "h11": "nocosup.server:LimitedH11Protocol",
    "httptools": "nocosup.server:LimitedHttpToolsProtocol",
}
#: The httptools protocol of a multi-environment supervisor with NOCOSUP_PROXY_FAST_PATH=1.
FAST_PROTOCOL = "nocosup.fastpath:FastHttpToolsProtocol"
_Cycle = TypeVar("_Cycle", bound=CoalescingCycle)
#: Seconds an idle keep-alive connection stays open between requests (uvicorn's default).
KEEP_ALIVE = 5


@dataclass(frozen=True)
class HeadLimits:
    max_header_size: int
    header_timeout: float


def head_limits(config: Config) -> HeadLimits:
    """The limits ``nocosup serve`` attached to ``config`` (defaults for a bare Config)."""
    limits = getattr(config, "nocosup_head_limits", None)
    if isinstance(limits, HeadLimits):
        return limits
    defaults = Settings()
    return HeadLimits(defaults.max_header_size, defaults.header_timeout)


def uvicorn_options(settings: Settings, http: str) -> dict[str, Any]:
    """The uvicorn options every ``nocosup serve`` process gets from ``settings``."""
    if http == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:  # pragma: no cover - httptools is a dependency
            http = "h11"
        else:
            http = "httptools"
    protocol = PROTOCOLS[http]
    if http == "httptools" and fast_path(settings):
        protocol = FAST_PROTOCOL
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": settings.max_header_size,
        "ws_max_size": settings.max_ws_message,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": KEEP_ALIVE,
    }


def fast_path(settings: Settings) -> bool:
    """Whether this process answers proxied requests on the fast path (nocosup.fastpath):
    a supervisor whose apps run on workers, unless NOCOSUP_PROXY_FAST_PATH=0."""
    return (
        settings.proxy_fast_path
        and settings.mode == "supervisor"
        and settings.process_adapter == "remote"
    )


def attach_limits(config: Config, settings: Settings) -> Config:
    """Hand the head limits to the protocols (the attribute survives the pickling of the
    config into ``--workers`` processes)."""
    config.nocosup_head_limits = HeadLimits(  # type: ignore[attr-defined]
        settings.max_header_size, settings.header_timeout
    )
    return config


class _HeadGuard:
    """The head-size count and the head deadline of one connection."""

    def __init__(
        self, protocol: H11Protocol | HttpToolsProtocol, body_flowing: Callable[[], bool]
    ) -> None:
        self.protocol = protocol
        #: True while the body of the previous request still arrives (after its response
        #: went out, the server reads and drops the rest): those bytes are not a head.
        self.body_flowing = body_flowing
        self.limits = head_limits(protocol.config)
        self.seen = 0
        self.tail = b""
        self.waiting_for: object = None
        self.timer: asyncio.TimerHandle | None = None
        self.rejected = False

    def arm(self) -> None:
        """A new request head may start: count it from zero. Its deadline starts with its
        first bytes when they are not the whole head (most heads arrive whole: no timer
        at all); an idle keep-alive connection is uvicorn's ``timeout_keep_alive``'s."""
        self.cancel()
        self.seen = 0
        self.tail = b""
        # a new cycle object appears once the parser has read a complete head
        self.waiting_for = self.protocol.cycle

    def start_clock(self) -> None:
        """Give the head in progress ``header_timeout`` seconds to be complete."""
        if self.timer is None:
            self.timer = self.protocol.loop.call_later(self.limits.header_timeout, self.expire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pending(self) -> bool:
        transport = self.protocol.transport
        return (
            self.protocol.cycle is self.waiting_for
            and transport is not None
            and transport.get_protocol() is self.protocol
            and not self.body_flowing()
        )

    def admit(self, data: bytes) -> bool:
        """Whether ``data`` may go to the parser: False once the head is over its limit."""
        if self.rejected:
            return False
        if not self.pending():
            return True
        if self.tail:  # the end of the head may straddle two reads
            joined = self.tail + data
            end = joined.find(b"\r\n\r\n")
            used = self.seen + (len(data) if end < 0 else end + 4 - len(self.tail))
        else:
            joined = data
            end = data.find(b"\r\n\r\n")
            used = self.seen + (len(data) if end < 0 else end + 4)
        if used > self.limits.max_header_size:
            self.reject()
            return False
        if end < 0:
            self.seen += len(data)
            self.tail = joined[-3:]
            self.start_clock()
        else:
            self.cancel()  # the head is complete: its request runs without a deadline
        return True

    def reject(self) -> None:
        self.rejected = True
        self.cancel()
        error = HeadersTooLarge(self.limits.max_header_size)
        body = json.dumps(error.body()).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)
        )
        transport = self.protocol.transport
        transport.write(head + body)
        transport.close()

    def expire(self) -> None:
        self.timer = None
        transport = self.protocol.transport
        if transport.is_closing() or transport.get_protocol() is not self.protocol:
            return
        if self.pending():
            transport.close()
        elif self.protocol.cycle is self.waiting_for:
            # the previous body is still arriving: look again after another period
            self.timer = self.protocol.loop.call_later(self.limits.header_timeout, self.expire)


class _Guarded:
    """The head guard's hooks into a uvicorn HTTP protocol (mixed in before it)."""

    guard: _HeadGuard

    def _guard(self, body_flowing: Callable[[], bool]) -> None:
        """Call from ``connection_made``, after the parent's."""
        self.guard = _HeadGuard(self, body_flowing)  # type: ignore[arg-type]
        self.guard.arm()
        self.guard.start_clock()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self.guard.admit(data):
            super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        self.guard.arm()
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        """uvicorn begins a graceful shutdown (SIGTERM): tell the host, so that a request
        that still reaches it while in-flight ones drain gets 503, not a late answer."""
        begin = getattr(getattr(self, "app", None), "begin_draining", None)
        if callable(begin):
            begin()
        super().shutdown()  # type: ignore[misc]


class LimitedH11Protocol(_Guarded, H11Protocol):
    """uvicorn's h11 protocol with a head-size limit (431) and a head deadline."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard(lambda: self.conn.their_state is h11.SEND_BODY)


class LimitedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
    """uvicorn's httptools protocol with a head-size limit (431) and a head deadline, whose
    responses go out with their head and first body bytes in one write
    (:class:`nocosup.cycle.CoalescingCycle`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a request's body still arrives while its cycle expects more of it
        self._guard(lambda: self.cycle is not None and self.cycle.more_body)

    def on_headers_complete(self) -> None:
        """uvicorn's, with a coalescing cycle; upgrades (WebSocket) and the
        ``limit_concurrency`` 503 stay uvicorn's own."""
        parser = self.parser
        if parser.should_upgrade() or self._at_concurrency_limit():
            super().on_headers_complete()
            return
        version = self.read_head()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        cycle = self.make_cycle(CoalescingCycle, self.scope, keep_alive, self.expect_100_continue)
        self.serve(cycle, self.app)

    def _at_concurrency_limit(self) -> bool:
        """uvicorn's ``limit_concurrency`` reached: its 503 answers the request."""
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def read_head(self) -> str:
        """Fill the scope from the parsed request head, as uvicorn does; its HTTP version."""
        parser = self.parser
        scope = self.scope
        version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if version != "1.1":
            scope["http_version"] = version
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed.query or b""
        return version

    def make_cycle(
        self, kind: type[_Cycle], scope: HTTPScope | Scope, keep_alive: bool, expect_100: bool
    ) -> _Cycle:
        """A ``kind`` cycle for one request on this connection."""
        return kind(
            scope=scope,  # type: ignore[arg-type]
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=expect_100,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )

    def serve(self, cycle: CoalescingCycle, app: Any) -> None:
        """Make ``cycle`` the connection's current one and run ``app`` on it: now, or once
        the response before it is complete (a pipelined request)."""
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
