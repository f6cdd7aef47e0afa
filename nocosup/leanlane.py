"""The supervisor's lean lane: a plain GET or HEAD answered with a handful of Python calls.

The express lane (:mod:`nocosup.fastpath`) already answers a bodiless request from the
upstream connection's callbacks, but it still pays for uvicorn's request parser callbacks
and cycle object, and for httptools' response parser callbacks: most of the Python a small
proxied request costs. The lean lane takes the commonest request of all before any of that:

- a read that holds exactly one complete request head, ``GET`` or ``HEAD`` over HTTP/1.1,
  that one regular expression accepts whole (strict tokens and field values, a path
  without ``%`` or ``#``, no body framing, ``Expect``, ``Upgrade`` or ``Connection`` other
  than ``keep-alive``): :func:`parse_request`; anything else is left to httptools, which
  answers it exactly as before (the ``400`` included);
- routed by the host's own ``fast_route`` and the gateway's ``express_plan`` (the same
  choice and the same tenant scope as every other path), forwarded on an idle pooled
  connection with the same request head (``nocosup.proxy.request_headers``);
- and an answer of at most 64 KiB, ``HTTP/1.1`` with one ``Content-Length`` and no
  ``Transfer-Encoding``, that :data:`_RESPONSE_HEAD` accepts, gathered over the reads it
  takes (uvicorn writes a head and its body apart): written back head and body at once,
  framed as uvicorn frames it, with the upstream's hop-by-hop headers dropped by
  ``nocosup.proxy.response_headers``.

Whatever it meets that it does not cover (a larger answer, chunked, without a length, a
``503 SHUTTING_DOWN``, a read timeout, the connection closed, the environment going
offline) it hands, mid-exchange and with the bytes read so far, to the express lane
(:meth:`nocosup.fastpath.FastHttpToolsProtocol.escalate`), whose code then decides as it
always did. Tests run the proxy's whole suite through this lane and compare the bytes each
lane sends both ways.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from nocosup.proxy import response_headers

if TYPE_CHECKING:
    from nocosup.fastpath import FastHttpToolsProtocol, TenantRoute
    from nocosup.inflight import _Exchange
    from nocosup.metrics import RequestStats
    from nocosup.proxy_client import Upstream, _Conn, _Pool

__all__ = ["LeanExchange", "Replay", "TasklessExchange", "parse_answer", "parse_request"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A field value: no control character but tab (obs-text allowed, as httptools allows it).
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_FIELDS = rb"((?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*)"
_REQUEST_LINE = rb"(GET|HEAD) (/[!-~]*) HTTP/1\.1"
_REQUEST_HEAD = re.compile(_REQUEST_LINE + rb"\r\n" + _FIELDS + rb"\r\n")
_LINE = re.compile(_REQUEST_LINE)
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9]) " + _VALUE + rb"\r\n" + _FIELDS + rb"\r\n"
)
#: Request headers that send a head to httptools: body framing, or what uvicorn acts on.
_DECLINED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
_OWS = b" \t"

Headers = list[tuple[bytes, bytes]]


def parse_request(data: bytes) -> tuple[str, bytes, bytes, Headers] | None:
    """(method, raw path, query, headers with lower-case names) of ``data`` when it is
    exactly one request head this lane takes, else None (httptools parses it)."""
    m = _REQUEST_HEAD.fullmatch(data)
    if m is None:
        return None
    method, target, block = m.groups()
    path, _, query = target.partition(b"?")
    if b"%" in path or b"#" in target:
        return None
    headers: Headers = []
    if block:
        for line in block[:-2].split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.lstrip(_OWS)  # httptools keeps trailing whitespace
            if name in _DECLINED:
                return None
            if name == b"connection" and value.rstrip(_OWS).lower() != b"keep-alive":
                return None
            headers.append((name, value))
    return ("GET" if method == b"GET" else "HEAD"), path, query, headers


def parse_answer(data: bytes, head_only: bool) -> tuple[int, bytes, bytes, bool] | bool:
    """(status, the header lines to pass on, body, keep-alive) when ``data`` is one whole
    answer this lane passes on (to a HEAD request when ``head_only``); True when it is the
    beginning of one that fits :data:`BUFFER_LIMIT` (read on: servers such as uvicorn write
    the head and the body apart); False when this lane does not pass it on.

    Heads are remembered (:data:`_ANSWERS`): the same endpoint answers with the same head
    within a second (its ``Date``), so most answers cost one lookup, not a parse."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) < BUFFER_LIMIT
    key = data[:end]
    known = _ANSWERS.get(key)
    if known is None:
        known = _parse_head(data[: end + 4])
        if known is None:
            return False
        if end <= _ANSWER_KEY_LIMIT:
            if len(_ANSWERS) >= _ANSWERS_KEPT:
                _ANSWERS.clear()
            _ANSWERS[key] = known
    status, fields, length, keep_alive = known
    body = len(data) - end - 4
    if head_only:
        return (status, fields, b"", keep_alive) if body == 0 else False
    if body == length:
        return status, fields, data[end + 4 :], keep_alive
    return body < length and end + 4 + length <= BUFFER_LIMIT


#: The largest answer (head and body) the lean lane gathers over several reads.
BUFFER_LIMIT = 64 * 1024
#: Answer heads parsed lately: (status, header lines to pass on, length, keep-alive).
_ANSWERS: dict[bytes, tuple[int, bytes, int, bool]] = {}
_ANSWERS_KEPT = 256
_ANSWER_KEY_LIMIT = 4096


def _parse_head(head: bytes) -> tuple[int, bytes, int, bool] | None:
    m = _RESPONSE_HEAD.fullmatch(head)
    if m is None:
        return None
    status = int(m[1])
    if status == 204 or status == 304:
        return None
    headers: Headers = []
    length = -1
    keep_alive = True
    block: bytes = m[2]
    if block:
        for line in block[:-2].split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.lstrip(_OWS)  # httptools keeps trailing whitespace
            if name == b"content-length":
                digits = value.rstrip(_OWS)
                if length >= 0 or not digits.isdigit() or len(digits) > 15:
                    return None
                length = int(digits)
            elif name == b"transfer-encoding":
                return None
            elif name == b"connection":
                if b"close" in [t.strip(_OWS) for t in value.lower().split(b",")]:
                    keep_alive = False
            headers.append((name, value))
    if length < 0:
        return None
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in response_headers(headers))
    return status, fields, length, keep_alive


class _Unset:
    """The cycle's ``message_event`` for uvicorn's connection_lost: nothing waits on it."""

    __slots__ = ()

    def set(self) -> None:
        return None


_UNSET = _Unset()
#: The server's default headers (Date changes each second: a new list), joined once.
_defaults: list[Any] = [None, b""]


def _default_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    if headers is not _defaults[0]:
        _defaults[1] = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        _defaults[0] = headers
    joined: bytes = _defaults[1]
    return joined


class TasklessExchange:
    """What an exchange answered from the connections' callbacks, with no task (the lean
    and the express lane), owes the rest of the process from sending to finishing: the
    gateway tracks it (an environment going offline calls its ``abort``), and the app's
    ``in_flight`` counts it, as :meth:`nocosup.metrics.Metrics.serve` counts a task."""

    # what the lanes' exchanges share; each sets them in its own __init__
    __slots__ = ("conn", "done", "entry", "env", "flight", "protocol", "route")

    done: bool
    conn: _Conn
    protocol: FastHttpToolsProtocol
    route: TenantRoute
    env: str
    entry: _Exchange | None
    #: The app's counters here; known beforehand (a replay) or found by :meth:`track`.
    flight: RequestStats | None

    def abort(self) -> None:
        raise NotImplementedError

    def track(self) -> None:
        route = self.route
        self.entry = route.gateway.inflight.track(self.env, self.abort)  # type: ignore[attr-defined]
        flight = self.flight
        if flight is None:
            flight = self.flight = route.metrics.stats(route.name)
        flight.in_flight += 1

    def finish(self) -> None:
        """The exchange no longer needs the upstream's callbacks or the deadline."""
        self.done = True
        self.conn.listener = None
        self.protocol.express = None
        if self.entry is not None:
            self.route.gateway.inflight.untrack(self.entry)  # type: ignore[attr-defined]
            self.entry = None
        if self.flight is not None:
            self.flight.in_flight -= 1
            self.flight = None


class LeanExchange(TasklessExchange):
    """One request on the lean lane. Until its answer is written it is also the
    connection's ``cycle`` for uvicorn (which reads ``response_complete``,
    ``keep_alive``, ``disconnected`` and sets ``message_event``) and its ``express``
    for the protocol (client gone, writes resumed, the read deadline)."""

    __slots__ = (
        "began",
        "buffer",
        "deadline",
        "disconnected",
        "head_only",
        "keep_alive",
        "pool",
        "response_complete",
        "scope",
        "stats",
        "target",
        "timeout",
        "upstream",
    )

    message_event = _UNSET
    more_body = False

    def __init__(
        self,
        protocol: FastHttpToolsProtocol,
        scope: Scope,
        route: TenantRoute,
        env: str,
        upstream: Upstream,
        pool: _Pool,
        conn: _Conn,
    ) -> None:
        self.protocol = protocol
        self.scope = scope
        self.route = route
        self.env = env
        self.upstream = upstream
        self.pool = pool
        self.conn = conn
        self.head_only = scope["method"] == "HEAD"
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True
        self.done = False
        self.buffer = b""
        self.entry: _Exchange | None = None
        self.timeout: float | None = None
        self.deadline = 0.0
        self.began = 0.0
        #: The app's counters when known beforehand (a replay), else found at the end.
        self.stats: RequestStats | None = None
        #: The app's counters here, whose ``in_flight`` counts this exchange (set by
        #: :meth:`send`; a replay knows them beforehand).
        self.flight: RequestStats | None = None
        #: (method, raw path, query) of a retargeted request, in place of the scopes'.
        self.target: tuple[str, bytes, bytes] | None = None

    def own_scopes(self, state: dict[str, Any] | None = None) -> tuple[Scope, Scope]:
        """This request's own copies of its scope and tenant scope (the target of a
        retarget in place; headers copied; ``state`` if given): what may change them
        gets them, and the templates a replay shares stay as they were."""
        parts: dict[str, Any] = {}
        if self.target is not None:
            method, raw_path, query = self.target
            root: str = self.protocol.root_path
            parts = {
                "method": method,
                "path": root + raw_path.decode("ascii"),
                "raw_path": root.encode("ascii") + raw_path,
                "query_string": query,
            }
        if state is not None:
            parts["state"] = state
        scope, tenant = self.scope, self.route.scope
        headers = list(scope["headers"])
        tenant_headers = (
            headers if tenant["headers"] is scope["headers"] else list(tenant["headers"])
        )
        return (
            {**scope, **parts, "headers": headers},
            {**tenant, **parts, "headers": tenant_headers},
        )

    def send(self, head: bytes) -> None:
        """Send the request ``head`` upstream; answers come to :meth:`answer`."""
        protocol = self.protocol
        self.began = time.perf_counter()
        self.track()
        timeout = self.timeout = self.pool.client.read_timeout
        if timeout is not None:
            self.deadline = protocol.loop.time() + timeout
            if protocol.express_timer is None:
                protocol.watch(self.deadline)
        protocol.express = self
        protocol.cycle = self  # type: ignore[assignment]
        self.conn.listener = self.lost
        self.conn.write(head)

    def answer(self, data: bytes) -> None:
        """A read from the upstream: the whole answer goes out in one write; anything else
        goes to the express lane with ``data``."""
        if self.buffer:
            data = self.buffer + data
        parsed = parse_answer(data, self.head_only)
        if parsed is True:  # the rest is on its way
            self.buffer = data
            if self.timeout is not None:  # each read pushes the deadline back
                self.deadline = self.protocol.loop.time() + self.timeout
            return
        if parsed is False:
            self.buffer = b""
            self.protocol.escalate(self, data)
            return
        status, fields, body, reusable = parsed
        if status == 503 and b'"SHUTTING_DOWN"' in body:
            self.protocol.escalate(self, data)
            return
        protocol = self.protocol
        self.finish()
        conn = self.conn
        conn.finish_raw(reusable)
        self.pool.release(conn)
        if self.disconnected:
            return
        if protocol.access_log:
            scope = self.own_scopes()[0] if self.target is not None else self.scope
            protocol.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),  # type: ignore[arg-type]
                scope["method"],
                get_path_with_query_string(scope),  # type: ignore[arg-type]
                scope["http_version"],
                status,
            )
        given = protocol.server_state.default_headers
        defaults = _defaults[1] if given is _defaults[0] else _default_headers(given)
        end = b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n"
        transport = protocol.transport
        transport.write(b"".join((STATUS_LINE[status], defaults, fields, end, body)))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
        seconds = time.perf_counter() - self.began
        stats = self.stats
        if stats is None:
            route = self.route
            route.metrics.observe(route.name, self.env, status, seconds)
        else:
            stats.observe(status, seconds)
        protocol.lean_answered()

    def lost(self) -> None:
        """The upstream connection closed before the whole answer came: the express
        lane's call, on what was read (a head and part of the body: a cut answer)."""
        if self.done:
            return
        data, self.buffer = self.buffer, b""
        express = self.protocol.escalate(self, data or None)
        if not data:  # else the parser's callbacks told it already
            express.progress()

    def abort(self) -> None:
        """The environment went offline before the answer."""
        if not self.done:
            self.protocol.escalate(self, None).abort()

    def expire(self) -> None:
        """The connection's timer fired: the read timeout, unless not due yet."""
        if self.done or self.timeout is None:
            return
        if self.protocol.loop.time() < self.deadline:
            self.protocol.watch(self.deadline)
            return
        self.protocol.escalate(self, None).expire()

    def client_gone(self) -> None:
        if not self.done:
            self.finish()
            self.conn.sink = None
            self.conn.close()
            self.pool.release(self.conn)

    def resume(self) -> None:
        """Nothing waits for the client's buffer: the answer is one write."""


class Replay:
    """What the lean lane did with a connection's last request head, to do again when the
    same bytes come next (a client polling, a browser's keep-alive reloads), or the same
    header lines with another target in the same app (:meth:`retarget`: a page's next
    request, a query string that changes), while what it rested on holds: the host's
    routing (``replays_routes``) and the gateway's choice of environment
    (``stamp_holds``), which the protocol asks first. The scopes are templates: an
    exchange that leaves the lane copies them before anything may change them.

    Neither the routing nor the header lines sent upstream depend on the target within
    an app when no header is notable (``Host.replayable``): the app comes from the path's
    ``/apps/{name}/`` alone, and ``nocosup.proxy.request_headers`` from the header lines,
    the peer and the app's prefix."""

    __slots__ = (
        "app_path",
        "data",
        "env",
        "fields",
        "flight",
        "gateway",
        "head",
        "host",
        "pool",
        "route",
        "scope",
        "stamp",
        "stats",
        "tail",
        "upstream",
    )

    def __init__(
        self,
        data: bytes,
        host: Any,
        route: TenantRoute,
        scope: Scope,
        env: str,
        stamp: tuple[Any, ...],
        upstream: Upstream,
        pool: _Pool,
        head: bytes,
    ) -> None:
        self.data = data
        self.host = host
        self.gateway: Any = route.gateway
        self.route = route
        self.scope = scope
        self.env = env
        self.stamp = stamp
        self.upstream = upstream
        self.pool = pool  # a client keeps one pool per upstream for good
        self.head = head
        #: The head after its request line: what a retargeted head must end with.
        self.tail = data[data.find(b"\r\n") :]
        #: Made by :meth:`prepare` when first needed: most replays are never used (a
        #: browser's next head differs), so making one costs a few attribute stores.
        self.fields = self.app_path = b""
        self.stats: RequestStats | None = None
        self.flight: RequestStats | None = None

    @property
    def prepared(self) -> bool:
        return self.stats is not None

    def prepare(self) -> None:
        """What a replay or a retarget uses: the app's counters, the upstream head's
        header lines, the targets a retarget may take."""
        data, route = self.data, self.route
        #: The app's counters in ``env`` and here (``in_flight``): the same objects for
        #: as long as the app exists.
        self.stats = route.metrics.stats(route.name, self.env)
        self.flight = route.metrics.stats(route.name)
        cut = len(data) - len(self.tail)
        head = self.head
        self.fields = head[head.find(b"\r\n") :]
        #: The raw path prefix of the app's targets; empty (no retarget) when the head
        #: chose the environment in its query or the app is not routed by its path.
        prefix: str = route.scope.get("root_path", "")
        _method, target = data[:cut].split(b" ", 2)[:2]
        self.app_path = (
            prefix.encode("ascii") + b"/"
            if prefix.startswith("/")
            and target.startswith(prefix.encode("ascii") + b"/")
            and b"__env=" not in target
            else b""
        )

    def retarget(self, data: bytes) -> tuple[str, bytes, bytes] | None:
        """(method, raw path, query) of ``data`` when only its request line differs from
        the replayed head and it names a target of the same app this lane takes."""
        tail = self.tail
        if not data.endswith(tail):
            return None  # other header lines (checked before preparing anything)
        if not self.prepared:
            self.prepare()
        app_path = self.app_path
        if not app_path:
            return None
        # the request line is what comes before the tail; the pattern allows no CR or LF
        m = _LINE.fullmatch(data, 0, len(data) - len(tail))
        if m is None:
            return None
        method, target = m.groups()
        path, mark, query = target.partition(b"?")
        if (
            not path.startswith(app_path)
            or b"%" in path
            or b"#" in target
            or b"__env=" in query
            or (mark and not query)  # "?" alone: the proxy sends the target without it
        ):
            return None
        return ("GET" if method == b"GET" else "HEAD"), path, query
