"""The Starlette host: one ASGI app carrying the role chosen by ``APP_MODE``.

Requests for tenants (``/apps/{name}/...``, or a path no host route serves with an
``X-App`` header) are dispatched before Starlette's router with one dict lookup in the
role's gateway, so the cost does not grow with the number of apps. Everything else
(``/api``, ``/healthz``, the page, plugin routes) goes through Starlette.

The tenant dispatch is the one place where the admin boundary is drawn for both modes
(in-process and proxied): ``X-App`` never reaches a host route, and the page's session
cookie (and an ``Authorization`` header carrying the admin token) is taken out before a
tenant sees the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sqlite3
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nocosup import __version__
from nocosup.appctx import AppContext
from nocosup.auth import COOKIE_NAME
from nocosup.config import Settings
from nocosup.domains import APP_HEADER, ROUTED_APP, DomainRoutes
from nocosup.errors import (
    AppNotFound,
    ConfigError,
    DatabaseUnavailable,
    NocosupError,
    NotFound,
    ShuttingDown,
    error_body,
)
from nocosup.events import EventBus
from nocosup.fastpath import TenantRoute
from nocosup.forwarded import FORWARDING, PEER
from nocosup.forwarded import resolve as resolve_forwarded
from nocosup.metrics import Metrics, metrics_endpoint
from nocosup.plugins import load_plugins
from nocosup.provisioning import TenantDatabases
from nocosup.responses import error_response, send_error
from nocosup.role import Role
from nocosup.status import AppStatus

log = logging.getLogger("nocosup.host")

ReadinessCheck = Callable[[], Awaitable[object]]
#: Request headers that may carry admin credentials, or the proxy's app choice, filtered
#: by Host._tenant_headers.
_GUARDED = frozenset({b"cookie", b"authorization", APP_HEADER})
#: Headers that make the host look twice at a request: forwarding headers (resolved or
#: dropped by nocosup.forwarded) and the guarded ones.
_NOTABLE = FORWARDING | _GUARDED
#: Notable headers a replayed request may carry (:meth:`Host.replayable`).
_REPLAYABLE_NOTABLE = frozenset({b"cookie", b"authorization"})
_SHUTTING_DOWN = ShuttingDown("this server is shutting down; retry shortly")
#: Plugin notifications queued at most (status and environment changes, registry events).
MAX_NOTICES = 10_000
#: The scope keys a tenant gets: those of the ASGI spec (HTTP and WebSocket). What an outer
#: framework adds when the host is mounted in it (Starlette's ``router``, ``endpoint``,
#: ``path_params``, ``app_root_path``, FastAPI's ``fastapi_astack``, a session
#: middleware's ``session``) is left out: a tenant's ``url_for`` would look in the outer
#: router and ``request.base_url`` would drop the mount's prefix.
TENANT_SCOPE_KEYS = frozenset(
    {
        "type",
        "asgi",
        "http_version",
        "method",
        "scheme",
        "path",
        "raw_path",
        "query_string",
        "root_path",
        "headers",
        "client",
        "server",
        "subprotocols",
        "state",
        "extensions",
        # the TCP peer behind a trusted proxy's client: the proxy to workers adds it to
        # X-Forwarded-For
        PEER,
        # the app a custom domain chose: the proxy tells the worker (X-Nocosup-App)
        ROUTED_APP,
    }
)


class Host(Starlette):
    """The ASGI app of one nocosup process: its plugins, its role, its tenant traffic."""

    def __init__(
        self, settings: Settings, plugins: Sequence[object] = (), root_path: str = ""
    ) -> None:
        self.settings = settings
        #: Where the host is served as clients see it ("" at the root; "/tenants" when
        #: mounted there): the build-time prefix tenants get (AppContext.prefix).
        self.root_path = _root_path(root_path)
        self.hooks = load_plugins(settings, plugins)
        self.pm = self.hooks.pm
        self.databases = TenantDatabases(settings, self.hooks.provisioners(settings))
        self.events = EventBus()
        #: Custom domains of the apps (kept current by the supervisor; empty on workers).
        self.domain_routes = DomainRoutes(settings.admin_host)
        #: What GET /metrics reports: counted on the tenant request path and by the role.
        self.metrics = Metrics(settings.environment_name)
        #: Named probes run by /readyz; the role adds its own when it starts.
        self.readiness: dict[str, ReadinessCheck] = {}
        #: Seconds a probe named here may fail before /readyz fails: meanwhile the host
        #: is "degraded" (200). Redis gets the heartbeat TTL: a blip must not pull every
        #: pod out of its Service at once while their tenants are still servable.
        self.readiness_grace: dict[str, float] = {}
        #: When each probe began failing (loop time), for readiness_grace.
        self.failing_since: dict[str, float] = {}
        self.role: Role = self._make_role()
        self.started = False
        #: Set when the server began a graceful shutdown: new tenant requests get 503
        #: SHUTTING_DOWN (Retry-After) while those in flight finish.
        self.draining = False
        #: Tenant requests the server's fast path took (``fast_route``).
        self.fast_path_requests = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._start_lock = asyncio.Lock()
        self._notices: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(MAX_NOTICES)
        self._notifier: asyncio.Task[None] | None = None
        self._notified = self.hooks.implemented()
        routes = [
            Route("/healthz", _healthz),
            Route("/readyz", _readyz),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *self.role.routes(),
            *self.hooks.routes(self),
        ]
        super().__init__(
            routes=routes,
            exception_handlers={
                NocosupError: _nocosup_error,
                HTTPException: _http_error,
                sqlite3.OperationalError: _sqlite_error,
                Exception: _unexpected_error,
            },
        )
        # Starlette's slash redirects build an absolute URL from the Host header: ours
        # are relative (see _slash_redirect).
        self.router.redirect_slashes = False
        self.router.default = self._slash_redirect

    def _make_role(self) -> Role:
        roles = self.hooks.roles()
        role = roles.get(self.settings.mode)
        if role is None:
            raise ConfigError(
                f"APP_MODE: no loaded plugin provides the {self.settings.mode!r} role "
                f"(provided: {', '.join(sorted(roles)) or 'none'}); is its plugin disabled "
                "(NOCOSUP_DISABLE_PLUGINS) or nocosup not installed?"
            )
        return role(self)

    async def start(self) -> None:
        """Start the role, then the plugins' ``startup`` hooks (idempotent)."""
        async with self._start_lock:
            if self.started:
                return
            await self.role.start()
            await self.hooks.startup(self)
            self.started = True
            log.info(
                "nocosup %s started as %s (environment %s, instance %s)",
                __version__,
                self.settings.mode,
                self.settings.environment_name,
                self.settings.instance_id,
            )

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.hooks.notify("shutdown", host=self)
        await self.role.stop()
        await self._close_notifier()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Join the lifespan of the app the host is mounted in: start on entry, stop every
        tenant (their lifespan shutdown runs) on exit.

        A mounted app gets no lifespan events from Starlette, so without this a mounted
        host starts on its first request and never stops its tenants. Use
        ``async with host.lifespan():`` inside the outer app's lifespan function, or pass
        it whole: ``FastAPI(lifespan=host.lifespan)`` (``app`` is the outer app, unused).
        """
        try:
            await self.start()
        except BaseException:
            await self._stop_quietly()
            raise
        try:
            yield
        finally:
            await self.stop()

    def begin_draining(self) -> None:
        """The server is shutting down gracefully (uvicorn calls this through the
        protocols of ``nocosup.server``): ``/readyz`` fails from now on, and unless the
        role serves while draining, new tenant requests get 503."""
        if not self.draining:
            self.draining = True
            log.info("draining: new requests get 503 SHUTTING_DOWN until shutdown")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; failures are logged, the task ends with the host."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- what happened: live listeners at once, plugins in order from one task ----------

    def status_changed(self, app: AppContext, status: AppStatus, error: str | None) -> None:
        """An app changed status in ``app.environment``: tell live listeners and plugins."""
        self.events.publish(
            {
                "type": "app_status",
                "app": app.name,
                "environment": app.environment,
                "status": status.value,
                "error": error,
            }
        )
        self.notify_later("app_status_changed", app=app, status=status, error=error)

    def environment_changed(self, environment: dict[str, Any]) -> None:
        self.events.publish({"type": "environment", "environment": environment})
        self.notify_later("environment_status_changed", environment=environment, host=self)

    def notify_later(self, hook: str, **kwargs: Any) -> None:
        """Deliver a notification from a background task, after those queued before it:
        the caller never waits for a plugin, and plugins see events in order."""
        if hook not in self._notified:
            return
        try:
            self._notices.put_nowait((hook, kwargs))
        except asyncio.QueueFull:
            # a listener that cannot keep up loses events rather than memory
            log.warning("plugin notifications are %d behind: %s dropped", MAX_NOTICES, hook)
            return
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._deliver(), name="notifications")

    async def _deliver(self) -> None:
        while True:
            hook, kwargs = await self._notices.get()
            try:
                await self.hooks.notify(hook, **kwargs)
            finally:
                self._notices.task_done()

    async def _close_notifier(self, timeout: float = 5) -> None:
        """Let queued notifications out (for a while), then end the delivering task."""
        if self._notifier is None:
            return
        try:
            await asyncio.wait_for(self._notices.join(), timeout)
        except TimeoutError:
            log.warning("%d plugin notifications dropped at shutdown", self._notices.qsize())
        self._notifier.cancel()
        await asyncio.gather(self._notifier, return_exceptions=True)
        self._notifier = None

    def serves(self, scope: Scope) -> bool:
        """Whether one of the host's own routes (role, plugins, page) matches the path of
        ``scope``, whatever its method or type: ``X-App`` never overrides one."""
        probe = {**scope, "type": "http", "method": scope.get("method", "GET")}
        return any(route.matches(probe)[0] is not Match.NONE for route in self.router.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            # most requests carry no header that needs work here (no forwarding header,
            # no cookie, no Authorization, no X-Nocosup-App): one pass tells
            notable = notable_headers(scope["headers"])
            if notable:
                scope = resolve_forwarded(scope, self.settings)
            target = self.tenant_target(scope, notable)
            if target is not None:
                if not self.started:
                    # Mounted inside another app, the host gets no lifespan: start lazily.
                    await self.start()
                name, prefix, redirect = target
                if redirect:
                    await _add_slash(scope, receive, send)
                    return
                gateway = self.role.gateway
                if gateway is None:
                    await send_error(scope, receive, send, AppNotFound(name))
                    return
                if self.draining and not self.role.serves_while_draining:
                    await send_error(scope, receive, send, _SHUTTING_DOWN)
                    return
                scope = self.tenant_scope(scope, prefix, notable)
                await self.metrics.serve(gateway, name, scope, receive, send)
                return
            if not self.started and scope["type"] == "http":
                await self.start()
            if self.settings.admin_host and not _admin_host_matches(scope, self.settings):
                await send_error(scope, receive, send, NotFound(f"no route for {scope['path']}"))
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)

    def tenant_target(self, scope: Scope, notable: bool = True) -> tuple[str, str, bool] | None:
        """(app name, root_path for the app, needs a trailing slash) when ``scope`` (its
        forwarded headers resolved) is tenant traffic: a custom domain, a worker's
        ``X-Nocosup-App``, ``/apps/{name}/...``, or ``X-App`` on a path no host route
        serves; else None. ``notable``: False when no header :func:`notable_headers` looks for
        is there (then no ``X-Nocosup-App`` either)."""
        target = self._routed_target(scope) if self.domain_routes.apps else None
        if target is None and notable and self.role.serves_forwarded_app:
            target = _forwarded_target(scope)
        if target is None:
            target = _tenant_target(scope)
        if target is None:
            name = _header_app(scope)
            if name is not None and not self.serves(scope):
                target = name, scope.get("root_path", ""), False
        return target

    def tenant_scope(self, scope: Scope, prefix: str, notable: bool = True) -> Scope:
        """What a tenant gets of ``scope``: the ASGI keys only, ``root_path`` = ``prefix``,
        and no admin credentials or proxy app choice among the headers (``notable``:
        False when :func:`notable_headers` found none of them)."""
        if TENANT_SCOPE_KEYS.issuperset(scope):  # served directly: ~130 ns
            scope = dict(scope)
        else:  # mounted in another app: ~1.5 us
            scope = {k: v for k, v in scope.items() if k in TENANT_SCOPE_KEYS}
        scope["root_path"] = prefix
        if notable:
            for key, _value in scope["headers"]:
                if key in _GUARDED:
                    scope["headers"] = self._tenant_headers(scope["headers"])
                    break
        return scope

    def fast_route(self, scope: Scope) -> ASGIApp | None:
        """The request ``scope`` as an ASGI callable bound to its tenant, for the server's
        fast path (``nocosup.fastpath``), or None when it must go through :meth:`__call__`.

        Synchronous, so the protocol decides right after parsing the head. It takes only
        what dispatches the way ``__call__`` would with nothing awaited first: a started,
        not draining host whose gateway serves the fast path (the multi-environment
        supervisor's proxy) and a tenant request that needs no slash redirect. The
        callable runs the same metrics and gateway code as ``__call__``."""
        if not self.started or self.draining:
            return None
        gateway = self.role.gateway
        if gateway is None or not getattr(gateway, "fast_path", False):
            return None
        notable = notable_headers(scope["headers"])
        if notable:
            scope = resolve_forwarded(scope, self.settings)
        target = self.tenant_target(scope, notable)
        if target is None or target[2]:
            return None
        name, prefix, _redirect = target
        self.fast_path_requests += 1
        return TenantRoute(gateway, self.metrics, name, self.tenant_scope(scope, prefix, notable))

    def replays_routes(self, gateway: object) -> bool:
        """Whether a :meth:`fast_route` answer for a request :meth:`replayable` took,
        served by ``gateway``, holds for the same request again: the host still serves the
        fast path through ``gateway`` and no custom domain can claim the request first.
        The lean lane (nocosup.fastpath) asks before replaying."""
        return (
            self.started
            and not self.draining
            and self.role.gateway is gateway
            and not self.domain_routes.apps
        )

    def replayable(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a request with ``headers`` is routed, and its headers given to the
        tenant, by their bytes alone: no forwarding header (resolved against the peer),
        no ``X-Nocosup-App``. ``Cookie`` and ``Authorization`` may be there: what the
        tenant gets of them (the page's session cookie and the admin token dropped)
        depends on their bytes and on the admin token, fixed for the process's life.
        See :meth:`replays_routes`."""
        if self.domain_routes.apps:
            return False
        for key, _value in headers:
            if key in _NOTABLE and key not in _REPLAYABLE_NOTABLE:
                return False
        return True

    def _routed_target(self, scope: Scope) -> tuple[str, str, bool] | None:
        """The app whose custom domain the Host names, at the host's own root_path (every
        path is the app's there); the scope is marked so the proxy tells the worker."""
        name = self.domain_routes.match(scope)
        if name is None:
            return None
        scope[ROUTED_APP] = name
        return name, scope.get("root_path", ""), False

    def _tenant_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """What a tenant may see of the request headers: no session cookie, no proxy's
        app choice, and no ``Authorization`` that carries the admin token (a script that
        sent it to an app by mistake must not hand it over)."""
        headers = [(k, v) for k, v in headers if k != APP_HEADER]
        headers = without_admin_cookie(headers)
        token: str | None = getattr(self.state, "admin_token", None) or self.settings.admin_token
        if not token or not any(k == b"authorization" for k, _v in headers):
            return headers
        return [
            (k, v)
            for k, v in headers
            if k != b"authorization" or not _carries_token(v, token.encode("latin-1", "replace"))
        ]

    async def _slash_redirect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No route matched: if the path with (or without) a trailing slash has one, a 307
        to it, relative (``root_path`` + path + query, never a URL built from the Host
        header); otherwise 404."""
        root: str = scope.get("root_path", "")
        path: str = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] == "http" and path not in ("", "/"):
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            probe = {**scope, "path": root + other}
            if other and any(r.matches(probe)[0] is not Match.NONE for r in self.router.routes):
                await RedirectResponse(_relative(root + other, scope), 307)(scope, receive, send)
                return
        await self.router.not_found(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The lifespan protocol by hand: a NocosupError fails start-up with its message
        alone (what the operator must fix), anything else with its traceback."""
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.start()
        except NocosupError as exc:
            log.error("start-up failed: %s", exc.message)
            await self._stop_quietly()
            await send({"type": "lifespan.startup.failed", "message": exc.message})
            return
        except BaseException:
            await self._stop_quietly()
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await self.stop()
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})

    async def _stop_quietly(self) -> None:
        """Release what a failed start-up opened (started is False, so stop() skips)."""
        try:
            await self.hooks.notify("shutdown", host=self)
            await self.role.stop()
            await self._close_notifier()
        except Exception:
            log.exception("cleaning up after a failed start-up failed too")


def create_host(
    settings: Settings | None = None, plugins: Sequence[object] = (), root_path: str = ""
) -> Host:
    """Build the host for ``settings`` (read from the environment when omitted).

    ``plugins`` are plugin objects (modules, instances) registered after the entry-point
    plugins, for an application that embeds nocosup and for tests. ``root_path`` is the
    path the host is mounted at (``app.mount("/tenants", create_host(root_path="/tenants"))``),
    so that apps know their public prefix when they are built (``AppContext.prefix``).
    """
    return Host(settings or Settings.from_env(), plugins, root_path)


def _root_path(value: str) -> str:
    """``value`` as a path prefix: "" or "/a/b", without a trailing slash."""
    value = value.rstrip("/")
    if value and (not value.startswith("/") or "//" in value or any(c in value for c in "?#")):
        raise ConfigError(f"root_path must be a path such as '/tenants'; got {value!r}")
    return value


def notable_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request carries a header the host must act on: a forwarding header, a
    cookie, ``Authorization`` or ``X-Nocosup-App`` (most tenant requests carry none)."""
    for key, _value in headers:
        if key in _NOTABLE:
            return True
    return False


def without_admin_cookie(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` minus the page's session cookie; every other cookie is kept byte for
    byte, and a ``Cookie`` header left empty is dropped."""
    marker = COOKIE_NAME.encode()
    if not any(k == b"cookie" and marker in v for k, v in headers):
        return headers
    out: list[tuple[bytes, bytes]] = []
    for key, value in headers:
        if key == b"cookie" and marker in value:
            kept = [part for part in value.split(b";") if part.split(b"=", 1)[0].strip() != marker]
            value = b";".join(kept).lstrip(b" ")
            if not value.strip():
                continue
        out.append((key, value))
    return out


def _carries_token(value: bytes, token: bytes) -> bool:
    scheme, _, given = value.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def _admin_host_matches(scope: Scope, settings: Settings) -> bool:
    """With NOCOSUP_ADMIN_HOST set, the admin API (``/api``) and the page (``/``,
    ``/ui``) answer only requests whose Host is that host; other routes answer any."""
    root: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    if not (path in ("", "/") or path.startswith(("/api/", "/ui/")) or path in ("/api", "/ui")):
        return True
    host = b""
    for key, value in scope["headers"]:
        if key == b"host":
            host = value
            break
    wanted = settings.admin_host or ""
    given = host.decode("latin-1").strip().lower()
    if given == wanted:
        return True
    if not wanted.endswith("]") and ":" in wanted:
        return False  # a port was configured: Host must carry it
    name = given.rsplit(":", 1)[0] if not given.endswith("]") else given
    return name == wanted


def _header_app(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"x-app":
            name: str = value.decode("latin-1").strip()
            return name
    return None


def _forwarded_target(scope: Scope) -> tuple[str, str, bool] | None:
    """A worker's request routed by domain on the supervisor: the app named by the
    proxy's ``X-Nocosup-App`` (kept by nocosup.forwarded only from a trusted proxy), at
    the root path, whatever the path."""
    for key, value in scope["headers"]:
        if key == APP_HEADER:
            name: str = value.decode("latin-1").strip()
            return (name, scope.get("root_path", ""), False) if name else None
    return None


def _relative(path: str, scope: Scope) -> str:
    """``path`` plus the query string, as a Location that cannot leave this origin."""
    location = "/" + path.lstrip("/")
    if scope.get("query_string"):
        location += "?" + scope["query_string"].decode("latin-1")
    return location


def _tenant_target(scope: Scope) -> tuple[str, str, bool] | None:
    """(app name, root_path for the app, needs a trailing slash) for a path under
    ``/apps/``, else None (``X-App`` is looked at by the caller)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path.startswith("/apps/"):
        slash = path.find("/", 6)
        if slash == -1:
            name = path[6:]
            return (name, root + "/apps/" + name, True) if name else None
        name = path[6:slash]
        if name:
            return name, root + "/apps/" + name, False
    return None


async def _add_slash(scope: Scope, receive: Receive, send: Send) -> None:
    """``/apps/demo`` -> ``/apps/demo/``, relative (root_path, path, query; never the
    Host header), 307 so the method is kept."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008, "reason": "use /apps/{name}/..."})
        return
    root: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    await RedirectResponse(_relative(root + path + "/", scope), status_code=307)(
        scope, receive, send
    )


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__, "mode": request.app.settings.mode})


#: Seconds each /readyz probe may take; they run at once, so the answer comes within
#: about this (documented: 5 s), whatever hangs behind a probe.
READY_PROBE_TIMEOUT = 3.0


async def _probe(probe: ReadinessCheck) -> str | None:
    """None when ``probe`` passed, else why not (a timeout included)."""
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT):
            await probe()
    except TimeoutError:
        return f"TimeoutError: no answer within {READY_PROBE_TIMEOUT:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _readyz(request: Request) -> Response:
    host: Host = request.app
    checks: dict[str, Any] = {"started": host.started}
    ok = host.started
    if host.draining:  # shutting down: a load balancer should send nothing new here
        return JSONResponse({"status": "draining", "checks": checks}, status_code=503)
    degraded: list[str] = []
    names = list(host.readiness)
    results = await asyncio.gather(*(_probe(host.readiness[n]) for n in names))
    now = asyncio.get_running_loop().time()
    for name, problem in zip(names, results, strict=True):
        if problem is None:
            checks[name] = True
            host.failing_since.pop(name, None)
            continue
        checks[name] = problem
        since = host.failing_since.setdefault(name, now)
        if now - since < host.readiness_grace.get(name, 0):
            degraded.append(name)  # tolerated for a while: the host still serves
        else:
            ok = False
    status = "unavailable" if not ok else "degraded" if degraded else "ready"
    body: dict[str, Any] = {"status": status, "checks": checks}
    if degraded and ok:
        body["degraded"] = degraded
    return JSONResponse(body, status_code=200 if ok else 503)


async def _nocosup_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NocosupError)
    return error_response(exc)


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    message = exc.detail if exc.status_code != 404 else f"no route for {request.url.path}"
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


#: SQLite's primary result codes for a file another connection holds.
_SQLITE_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


async def _sqlite_error(request: Request, exc: Exception) -> Response:
    """A SQLite registry another process kept locked past the busy timeout
    (``NOCOSUP_DB_STATEMENT_TIMEOUT``; several ``--workers`` on one file): a passing
    condition, 503 with Retry-After. Any other SQLite error is unexpected."""
    assert isinstance(exc, sqlite3.OperationalError)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _SQLITE_BUSY:
        raise exc
    log.warning("SQLite busy on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        DatabaseUnavailable(f"the registry database stayed locked by another process ({exc})")
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("INTERNAL_ERROR", "internal error; see the server log"), status_code=500
    )
