"""The supervisor's fast path: proxied requests answered below uvicorn's ASGI layer.

A profile of a multi-environment supervisor under load puts most of a proxied request in
the interpreter, spread over the host's dispatch, the task, futures and awaits of the
metrics, gateway, in-flight tracking, proxy and client layers, the ASGI messages between
them and uvicorn's ``send``. :class:`FastHttpToolsProtocol` (chosen by
:func:`nocosup.server.uvicorn_options` for such a supervisor while
``NOCOSUP_PROXY_FAST_PATH=1``) cuts that short in two steps:

- once httptools has parsed a request head, it asks the app's ``fast_route(scope)``
  (:meth:`nocosup.host.Host.fast_route`) synchronously whether the request is plain tenant
  traffic it can dispatch without awaiting anything; if not (WebSocket upgrade, HTTP/1.0,
  the admin API, a slash redirect, a draining or not yet started host, uvicorn's
  ``limit_concurrency`` reached, an app wrapped by uvicorn middleware), the request goes
  through uvicorn's ASGI path unchanged;
- a bodiless GET or HEAD for which the gateway can choose an environment at once
  (``ProxyGateway.express_plan``) and the client's pool holds an idle connection takes
  the express lane (:class:`_Express`): the request head goes upstream at once and the
  upstream connection's callbacks write the answer to the client (head and first bytes
  in one write, then each read's bytes, with flow control both ways), with no task,
  future or ASGI message; it hands what it does not cover to the ASGI code in a task;
- any other taken request runs the :class:`TenantRoute` ``fast_route`` returned (the same
  metrics, gateway, in-flight tracking and :class:`nocosup.proxy.Proxy` code as the ASGI
  path, so errors, fallbacks and header rules are the same bytes) in a
  :class:`FastCycle`, whose ``send`` writes the response head and the first body bytes
  in one ``write``.

Everything else is uvicorn's own protocol and ours below it: the head-size limit and head
deadline (:class:`nocosup.server.LimitedHttpToolsProtocol`), request bodies (fixed length
or chunked, ``Expect: 100-continue``) read through the cycle's ``receive``, pipelining,
keep-alive (with a lazy timer) and client disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nocosup.cycle import CoalescingCycle
from nocosup.errors import NocosupError
from nocosup.leanlane import LeanExchange, Replay, TasklessExchange, parse_request
from nocosup.metrics import PROXIED_TO
from nocosup.proxy import (
    answer_error,
    path_target,
    request_headers,
    response_headers,
    upstream_error,
)
from nocosup.proxy_client import (
    LeanClient,
    Upstream,
    UpstreamError,
    UpstreamTimeoutError,
    gathered,
    never_answered,
    request_head,
)
from nocosup.server import LimitedHttpToolsProtocol

if TYPE_CHECKING:
    from nocosup.inflight import _Exchange
    from nocosup.metrics import Metrics, RequestStats
    from nocosup.proxy_client import _Conn, _Pool
    from nocosup.role import Gateway

__all__ = ["LANES", "FastCycle", "FastHttpToolsProtocol", "TenantRoute"]

#: The proxy's logger: what the express lane logs reads as what the ASGI path logs.
log = logging.getLogger("nocosup.proxy")

FastRouter = Callable[[Scope], ASGIApp | None]


class FastCycle(CoalescingCycle):
    """The coalescing cycle of the requests this module takes: only nocosup's own code
    sends on it (the proxy, error answers), which always follows a
    ``http.response.start`` with a body message at once (no flush to schedule), with
    header names from the upstream's parser (tokens) or from nocosup itself."""

    flush_soon = False
    trusted_names = True


class TenantRoute:
    """A tenant request :meth:`nocosup.host.Host.fast_route` took: calling it runs the
    request the ASGI way (metrics, then the gateway) on the scope prepared for the tenant;
    its parts let the express lane below answer it without a task."""

    __slots__ = ("gateway", "metrics", "name", "scope")

    def __init__(self, gateway: Gateway, metrics: Metrics, name: str, scope: Scope) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.name = name
        self.scope = scope

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        await self.metrics.serve(self.gateway, self.name, self.scope, receive, send)


class _Express(TasklessExchange):
    """The express lane: one bodiless GET or HEAD forwarded on an idle pooled connection
    and answered from the upstream connection's callbacks, with no task, future or ASGI
    message: the head and the bytes of each read are written as they come (flow control
    both ways: the upstream is not read while the client's buffer is full).

    It takes only that common case and hands the rest to the ASGI code in a task: a
    kept-alive connection the upstream had closed, a ``503 SHUTTING_DOWN`` answer, or the
    environment going offline before the answer began sends the request through the whole
    gateway again (a bodiless request may be replayed: the gateway picks the next
    environment or answers 503); any other failure before the head answers the gateway's
    error (502, 504). After the head, a failure cuts the response short (the client sees
    a truncated body), as on the ASGI path.
    """

    __slots__ = (
        "began",
        "cycle",
        "deadline",
        "paused",
        "pool",
        "released",
        "status",
        "timeout",
        "upstream",
    )

    def __init__(
        self, protocol: FastHttpToolsProtocol, cycle: FastCycle, route: TenantRoute
    ) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.route = route
        self.done = False
        self.status = 0  # until the head went out
        self.paused = False
        self.released = False
        self.entry: _Exchange | None = None
        #: The app's counters whose ``in_flight`` counts this exchange until it ends.
        self.flight: RequestStats | None = None

    def begin(self) -> bool:
        """Send the request upstream; False (nothing done) when it is not for this lane."""
        route = self.route
        scope = route.scope
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        for name, _value in scope["headers"]:
            if name == b"content-length" or name == b"transfer-encoding":
                return False
        planned = idle_plan(route)
        if planned is None:
            return False
        self.env, upstream, self.pool, conn = planned
        self.upstream = upstream
        self.conn = conn
        conn.start(method == "HEAD")
        if conn.error is not None:  # closed while idle: the ASGI path opens a new one
            self.release()
            return False
        headers, _mode = request_headers(scope, upstream)
        scope[PROXIED_TO] = self.env
        self.began = time.perf_counter()
        conn.listener = self.progress
        self.track()
        self.timeout = self.pool.client.read_timeout
        if self.timeout is not None:
            # each read pushes the deadline back; the connection's timer checks it
            self.deadline = self.protocol.loop.time() + self.timeout
            self.protocol.watch(self.deadline)
        self.protocol.express = self
        conn.write(request_head(method, upstream, path_target(scope), headers))
        return True

    @classmethod
    def adopt(
        cls, protocol: FastHttpToolsProtocol, cycle: FastCycle, lean: LeanExchange
    ) -> _Express:
        """Take over the exchange ``lean`` began (its request is upstream, nothing written
        to the client yet; ``lean`` is finished)."""
        express = cls(protocol, cycle, lean.route)
        express.env = env = lean.env
        express.upstream = lean.upstream
        express.pool = lean.pool
        express.conn = conn = lean.conn
        express.began = lean.began
        express.timeout = lean.timeout
        express.deadline = lean.deadline
        lean.route.scope[PROXIED_TO] = env
        express.track()
        conn.listener = express.progress
        protocol.express = express
        return express

    def release(self, close: bool = False) -> None:
        """Give the upstream connection back (closed first if ``close``), once."""
        if not self.released:
            self.released = True
            if close:
                self.conn.close()
            self.pool.release(self.conn)

    def progress(self) -> None:
        """After each read from the upstream, and when its connection is lost."""
        if self.done:
            return
        conn = self.conn
        if self.timeout is not None:
            self.deadline = self.protocol.loop.time() + self.timeout
        try:
            if self.status:
                self.pump()
            elif conn.complete:
                self.respond()
            elif conn.headers_done:
                if conn.error is None and gathered(conn.headers):
                    return  # a small body: written with the head once it is all in
                self.status = conn.status
                self.cycle.write_first(self.start(), conn.take(), True)
                self.pump()
            elif conn.error is not None:
                self.failed(conn.error)
        except RuntimeError as exc:  # what uvicorn's send refuses, it refuses here too
            self.protocol.logger.error("Exception in ASGI application\n", exc_info=exc)
            self.cut()

    def start(self) -> Message:
        conn = self.conn
        return {
            "type": "http.response.start",
            "status": conn.status,
            "headers": response_headers(conn.headers),
        }

    def respond(self) -> None:
        """The whole response is in: one write."""
        conn = self.conn
        body = conn.take()
        if conn.status == 503 and b'"SHUTTING_DOWN"' in body:
            self.finish()
            self.release()
            self.again()  # the environment drains: the gateway's fallback decides
            return
        self.status = conn.status
        start = self.start()
        self.finish()
        self.release()
        self.cycle.write_first(start, body, False)
        self.counted()

    def pump(self) -> None:
        """Pass on the body bytes read so far; end the response when the upstream did."""
        conn = self.conn
        cycle = self.cycle
        if conn.chunks:
            cycle.write_more(conn.take_chunks(), True)
        if conn.complete:
            self.finish()
            self.release()
            cycle.write_more([], False)
            self.counted()
        elif conn.error is not None:
            log.warning(
                "upstream failed mid-response for %s: %s", self.route.scope["path"], conn.error
            )
            self.cut()
        elif cycle.flow.write_paused and not self.paused and conn.transport is not None:
            self.paused = True  # resumed by the client's resume_writing
            conn.transport.pause_reading()

    def resume(self) -> None:
        """The client's buffer drained: read the upstream again."""
        if self.paused and not self.done:
            self.paused = False
            transport = self.conn.transport
            if transport is not None and not self.conn.lost:
                transport.resume_reading()

    def cut(self) -> None:
        """End the exchange unfinished: the client sees an incomplete response."""
        self.finish()
        self.release(close=True)
        self.cycle.transport.close()
        self.counted()

    def client_gone(self) -> None:
        """The client disconnected: drop the upstream exchange."""
        if not self.done:
            self.finish()
            self.release(close=True)
            if self.status:
                self.counted()

    def counted(self) -> None:
        route = self.route
        route.metrics.observe(route.name, self.env, self.status, time.perf_counter() - self.began)
        LANES.express += 1

    def failed(self, exc: UpstreamError) -> None:
        self.finish()
        self.release()
        if never_answered(exc):
            self.pool.close_idle()  # as the client does: the others are likely closed too
            self.again()
        else:
            self._run(_Failed(self.route, self.env, upstream_error(self.upstream, exc)))

    def expire(self) -> None:
        """The connection's timer fired: the read timeout, unless a read came since."""
        if self.done or self.timeout is None:
            return
        if self.protocol.loop.time() < self.deadline:
            self.protocol.watch(self.deadline)
            return
        if self.status:
            log.warning(
                "upstream failed mid-response for %s: read timeout", self.route.scope["path"]
            )
            self.cut()
            return
        self.finish()
        self.release(close=True)
        exc = UpstreamTimeoutError("read", f"upstream read timeout ({self.timeout:g}s)")
        self._run(_Failed(self.route, self.env, upstream_error(self.upstream, exc)))

    def abort(self) -> None:
        """The environment went offline: before the answer the gateway chooses again;
        after its head the response is cut short."""
        if self.done:
            return
        if self.status:
            self.cut()
            return
        self.finish()
        self.release(close=True)
        self.again()

    def again(self) -> None:
        self.route.scope.pop(PROXIED_TO, None)
        self._run(self.route)

    def _run(self, app: ASGIApp) -> None:
        self.protocol._start_asgi_task(self.cycle, app)  # type: ignore[arg-type]


def idle_plan(route: TenantRoute) -> tuple[str, Upstream, _Pool, _Conn] | None:
    """The environment the gateway chooses at once for ``route``'s request (without
    awaiting anything), its upstream and an idle pooled connection to it, taken from
    its pool; None when the gateway cannot choose so (no ``express_plan``, another
    client) or no connection is idle."""
    gateway: Any = route.gateway
    plan = getattr(gateway, "express_plan", None)
    proxy = getattr(gateway, "proxy", None)
    client = getattr(proxy, "client", None)
    if plan is None or not isinstance(client, LeanClient):
        return None
    chosen = plan(route.name, route.scope)
    if chosen is None:
        return None
    env, url = chosen
    upstream: Upstream = proxy.upstream(url)  # type: ignore[union-attr]
    taken = client.take_idle(upstream)
    if taken is None:
        return None
    return env, upstream, taken[0], taken[1]


class _Failed:
    """The gateway's error answer for an express request the upstream failed."""

    def __init__(self, route: TenantRoute, env: str, error: NocosupError) -> None:
        self.route = route
        self.env = env
        self.error = error

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        await route.metrics.serve(self, route.name, route.scope, receive, send)

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        scope[PROXIED_TO] = self.env
        await answer_error(scope, receive, send, self.error)


class LaneCounts:
    """Requests this process answered on the express and on the lean lane (all
    connections). Not class attributes of the protocol: assigning one invalidates the
    interpreter's attribute cache for the class, which every lookup on every connection
    then pays (about 1 µs per request)."""

    __slots__ = ("express", "lean", "replayed")

    def __init__(self) -> None:
        self.express = 0
        self.lean = 0
        #: Of the lean lane's, those sent as a connection's previous request was
        #: (replayed or retargeted), without parsing or routing.
        self.replayed = 0


#: This process's lane counts (``nocosup_proxy_express_requests_total``, ``…lean…``).
LANES = LaneCounts()


class FastHttpToolsProtocol(LimitedHttpToolsProtocol):
    """The head-guarded httptools protocol with the fast path of this module."""

    fast_route: FastRouter | None = None
    #: Whether whole plain heads may take the lean lane in this process (tests turn it
    #: off to test the express lane alone); the host's ``NOCOSUP_PROXY_LEAN_LANE`` too.
    lean_lane: ClassVar[bool] = True

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # uvicorn's middleware (trace logging) would hide the host: then no fast path
        self.fast_route = getattr(self.app, "fast_route", None)
        #: The largest head the lean lane may take (the head guard's limit).
        self.head_limit = self.guard.limits.max_header_size
        settings = getattr(self.app, "settings", None)
        #: The lean lane serves this connection (nocosup.leanlane).
        self.lean: bool = self.lean_lane and bool(getattr(settings, "proxy_lean_lane", True))
        #: The express or lean exchange answering on this connection now, if any.
        self.express: _Express | LeanExchange | None = None
        #: True while httptools' parser holds no part of a request (the lean lane may
        #: then take a whole head it never sees).
        self.at_boundary = True
        #: The lean lane's last request on this connection, to send again as it was.
        self.replay: Replay | None = None
        #: Whether that replay was used (replayed or retargeted) since it was made.
        self.replay_used = False
        #: Lean requests to go before the next replay is made, and the gap that set it:
        #: replacing a replay that was never used doubles the gap (up to
        #: :data:`_REPLAY_GAP_MAX`), a used one resets it. A connection whose header
        #: lines change every time (a browser's) so stops making replays it never uses.
        self.replay_wait = 0
        self.replay_gap = 0
        self.express_timer: asyncio.TimerHandle | None = None
        #: Loop time the connection went idle (None while a request is under way).
        self.idle_since: float | None = None

    def watch(self, deadline: float) -> None:
        """Have the express exchange's ``expire`` called by ``deadline``: one timer per
        connection, re-armed only when it fires early (deadlines only move later), not a
        timer set and cancelled per request."""
        if self.express_timer is None:
            self.express_timer = self.loop.call_at(deadline, self._express_due)

    def _express_due(self) -> None:
        self.express_timer = None
        if self.express is not None:
            self.express.expire()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.express is not None:
            self.express.client_gone()
        for timer in (self.express_timer, self.timeout_keep_alive_task):
            if timer is not None:
                timer.cancel()
        self.express_timer = self.timeout_keep_alive_task = None

    # The keep-alive timeout, lazily: uvicorn sets a timer after every response and
    # cancels it on every read; here one timer per connection checks when it fires.

    def _unset_keepalive_if_required(self) -> None:
        self.idle_since = None  # a read: busy until the next response is complete

    def on_response_complete(self) -> None:
        """uvicorn's, with the head guard re-armed and the lazy keep-alive timer."""
        self.guard.arm()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        now = self.idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_at(
                now + self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        if self.idle_since is None:
            return  # busy: the next complete response arms it again
        due = self.idle_since + self.timeout_keep_alive
        if self.loop.time() < due:
            self.timeout_keep_alive_task = self.loop.call_at(due, self.timeout_keep_alive_handler)
        elif not self.transport.is_closing():
            self.transport.close()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.express is not None:
            self.express.resume()

    def on_headers_complete(self) -> None:
        fast_route = self.fast_route
        parser = self.parser
        if (
            fast_route is None
            or parser.should_upgrade()
            or parser.get_http_version() != "1.1"
            or self._at_concurrency_limit()
        ):
            super().on_headers_complete()
            return
        self.read_head()
        scope = self.scope
        route = fast_route(scope)  # type: ignore[arg-type]
        keep_alive = parser.should_keep_alive()
        if route is None:  # the host's own routes: the ASGI way
            cycle = self.make_cycle(CoalescingCycle, scope, keep_alive, self.expect_100_continue)
            self.serve(cycle, self.app)
            return
        existing = self.cycle
        cycle = self._fast_cycle(scope, keep_alive, self.expect_100_continue)  # type: ignore[arg-type]
        if existing is not None and not existing.response_complete:
            self.serve(cycle, route)  # pipelined: it runs when the response before it is done
            return
        self.cycle = cycle
        if isinstance(route, TenantRoute) and _Express(self, cycle, route).begin():
            return
        self._start_asgi_task(cycle, route)  # type: ignore[arg-type]

    def _fast_cycle(self, scope: Scope, keep_alive: bool, expect_100: bool) -> FastCycle:
        return self.make_cycle(FastCycle, scope, keep_alive, expect_100)

    # --- the lean lane (nocosup.leanlane) -------------------------------------------------

    def on_message_begin(self) -> None:
        self.at_boundary = False
        super().on_message_begin()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.at_boundary = True

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if (
            self.at_boundary
            and self.lean
            and self.express is None
            and data[-4:] == b"\r\n\r\n"
            and (cycle is None or cycle.response_complete)
            and not self.pipeline
            and self.fast_route is not None
            and len(data) <= self.head_limit
            and not self.guard.rejected
            and not self._at_concurrency_limit()
        ):
            replay = self.replay
            if replay is not None:
                if replay.data == data:
                    if self._replay(replay, replay.head):
                        return
                    self.replay = None
                else:
                    target = replay.retarget(data)
                    if target is not None and self._retarget(replay, *target):
                        return
            if self._take_whole_head(data):
                return
        super().data_received(data)

    def _take_whole_head(self, data: bytes) -> bool:
        """Serve ``data``, one whole request head, without httptools when the lean lane
        covers it; False (nothing done) to let httptools parse it."""
        parsed = parse_request(data)
        if parsed is None:
            return False
        method, raw_path, query, headers = parsed
        root = self.root_path
        scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": root,
            "headers": headers,
            "state": self.app_state.copy(),
            "method": method,
            "path": root + raw_path.decode("ascii"),
            "raw_path": root.encode("ascii") + raw_path,
            "query_string": query,
        }
        assert self.fast_route is not None
        route = self.fast_route(scope)
        if route is None:
            return False  # the host's own routes: httptools and ASGI, as always
        self.idle_since = None
        self.guard.cancel()
        if isinstance(route, TenantRoute) and self._lean(data, scope, route, method):
            return True
        # taken, but not for the lean lane: the ASGI way, as on_headers_complete does
        self.cycle = cycle = self._fast_cycle(scope, True, False)
        _bodiless(cycle)
        self._start_asgi_task(cycle, route)  # type: ignore[arg-type]
        return True

    def _lean(self, data: bytes, scope: Scope, route: TenantRoute, method: str) -> bool:
        """Send the request upstream on the lean lane: False (nothing done) when the
        gateway has no choice to make at once or no idle connection to use."""
        gateway: Any = route.gateway
        planned = idle_plan(route)
        if planned is None:
            return False
        env, upstream, pool, conn = planned
        lean = LeanExchange(self, scope, route, env, upstream, pool, conn)
        conn.start_raw(lean.answer)
        if conn.error is not None:  # closed while idle: the ASGI path opens a new one
            conn.sink = None
            pool.release(conn)
            return False
        tenant = route.scope
        headers, _mode = request_headers(tenant, upstream)
        head = request_head(method, upstream, path_target(tenant), headers)
        lean.send(head)
        if self.replay_wait:  # recent replays went unused: keep the one there is
            self.replay_wait -= 1
            return True
        host: Any = self.app
        replayable = getattr(host, "replayable", None)
        stamp_of = getattr(gateway, "plan_stamp", None)
        if replayable is not None and stamp_of is not None and replayable(scope["headers"]):
            stamp = stamp_of(route.name, env)
            if stamp is not None:
                gap = 0
                if self.replay is not None and not self.replay_used:
                    gap = min(self.replay_gap * 2 + 1, _REPLAY_GAP_MAX)
                self.replay_gap = self.replay_wait = gap
                self.replay_used = False
                self.replay = Replay(data, host, route, scope, env, stamp, upstream, pool, head)
        return True

    def _replay(
        self, replay: Replay, head: bytes, target: tuple[str, bytes, bytes] | None = None
    ) -> bool:
        """Send ``head`` for ``replay``'s request (with ``target``'s method, raw path and
        query instead of its own) as ``replay``'s was sent: False (nothing done) when what
        it rested on changed or no idle connection is there to take it."""
        gateway = replay.gateway
        if not (
            replay.host.replays_routes(gateway)
            and gateway.stamp_holds(replay.route.name, replay.env, replay.stamp)
        ):
            return False
        if not replay.prepared:
            replay.prepare()
        pool = replay.pool
        conn = None if pool.client.closed else pool.take_idle()
        if conn is None:
            return False
        lean = LeanExchange(
            self, replay.scope, replay.route, replay.env, replay.upstream, pool, conn
        )
        conn.start_raw(lean.answer)
        if conn.error is not None:
            conn.sink = None
            pool.release(conn)
            return False
        replay.host.fast_path_requests += 1
        LANES.replayed += 1
        self.replay_used = True
        self.idle_since = None
        self.guard.cancel()
        lean.stats = replay.stats
        lean.flight = replay.flight
        if target is not None:
            lean.target = target
            lean.head_only = target[0] == "HEAD"
        lean.send(head)
        return True

    def _retarget(self, replay: Replay, method: str, raw_path: bytes, query: bytes) -> bool:
        """Send the request with ``replay``'s header lines and another target of the same
        app (:meth:`Replay.retarget`) the way ``replay``'s went. Its scopes are made only
        if something needs them (:meth:`LeanExchange.own_scopes`)."""
        target = raw_path + b"?" + query if query else raw_path
        upstream = replay.upstream
        head = b"".join((_METHODS[method], upstream.base_path, target, b" HTTP/1.1", replay.fields))
        return self._replay(replay, head, (method, raw_path, query))

    def escalate(self, lean: LeanExchange, data: bytes | None) -> _Express:
        """Hand ``lean``'s exchange to the express lane: with ``data``, the read it could
        not pass on (parsed from its first byte), else for the caller to act on."""
        lean.finish()
        # the ASGI code may change a scope: this request's own copies (a replay shares them)
        lean.scope, tenant = lean.own_scopes(self.app_state.copy())
        route = lean.route
        lean.route = TenantRoute(route.gateway, route.metrics, route.name, tenant)
        cycle = self._fast_cycle(lean.scope, lean.keep_alive, False)
        _bodiless(cycle)
        if self.cycle is lean:  # type: ignore[comparison-overlap]
            self.cycle = cycle
        express = _Express.adopt(self, cycle, lean)
        if data is not None:
            lean.conn.parse_from(data, lean.head_only)
        return express

    def lean_answered(self) -> None:
        LANES.lean += 1


#: The most lean requests a connection goes without making a replay after misses.
_REPLAY_GAP_MAX = 31
#: Request line starts, by method, for the lean lane's heads.
_METHODS = {"GET": b"GET ", "HEAD": b"HEAD "}


def _bodiless(cycle: FastCycle) -> None:
    """What uvicorn's ``on_message_complete`` does for a request without a body, for a
    cycle whose head httptools never saw: ``receive`` gives the empty body at once."""
    cycle.more_body = False
    cycle.message_event.set()
