"""The Starlette host: one ASGI app carrying the role chosen by ``APP_MODE``.

Requests for tenants (``/apps/{name}/...`` or any path with an ``X-App`` header) are
dispatched before Starlette's router with one dict lookup in the role's gateway, so the
cost does not grow with the number of apps. Everything else (``/api``, ``/healthz``,
plugin routes) goes through Starlette.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from nocosup import __version__
from nocosup.appctx import AppContext
from nocosup.config import Settings
from nocosup.errors import AppNotFound, ConfigError, NocosupError, error_body
from nocosup.events import EventBus
from nocosup.plugins import load_plugins
from nocosup.provisioning import TenantDatabases
from nocosup.responses import error_response, send_error
from nocosup.role import Role
from nocosup.status import AppStatus

log = logging.getLogger("nocosup.host")

ReadinessCheck = Callable[[], Awaitable[object]]
#: Plugin notifications queued at most (status and environment changes, registry events).
MAX_NOTICES = 10_000


class Host(Starlette):
    """The ASGI app of one nocosup process: its plugins, its role, its tenant traffic."""

    def __init__(self, settings: Settings, plugins: Sequence[object] = ()) -> None:
        self.settings = settings
        self.hooks = load_plugins(settings, plugins)
        self.pm = self.hooks.pm
        self.databases = TenantDatabases(settings, self.hooks.provisioners(settings))
        self.events = EventBus()
        #: Named probes run by /readyz; the role adds its own when it starts.
        self.readiness: dict[str, ReadinessCheck] = {}
        self.role: Role = self._make_role()
        self.started = False
        self._background: set[asyncio.Task[Any]] = set()
        self._start_lock = asyncio.Lock()
        self._notices: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(MAX_NOTICES)
        self._notifier: asyncio.Task[None] | None = None
        self._notified = self.hooks.implemented()
        routes = [
            Route("/healthz", _healthz),
            Route("/readyz", _readyz),
            *self.role.routes(),
            *self.hooks.routes(self),
        ]
        super().__init__(
            routes=routes,
            exception_handlers={
                NocosupError: _nocosup_error,
                HTTPException: _http_error,
                Exception: _unexpected_error,
            },
        )

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            target = _tenant_target(scope)
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
                scope = dict(scope)
                scope["root_path"] = prefix
                scope["app"] = self
                await gateway.handle(name, scope, receive, send)
                return
            if not self.started and scope["type"] == "http":
                await self.start()
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)

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


def create_host(settings: Settings | None = None, plugins: Sequence[object] = ()) -> Host:
    """Build the host for ``settings`` (read from the environment when omitted).

    ``plugins`` are plugin objects (modules, instances) registered after the entry-point
    plugins, for an application that embeds nocosup and for tests.
    """
    return Host(settings or Settings.from_env(), plugins)


def _tenant_target(scope: Scope) -> tuple[str, str, bool] | None:
    """(app name, root_path for the app, needs a trailing slash) or None for host routes."""
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
    for key, value in scope["headers"]:
        if key == b"x-app":
            return value.decode("latin-1").strip(), root, False
    return None


async def _add_slash(scope: Scope, receive: Receive, send: Send) -> None:
    """``/apps/demo`` -> ``/apps/demo/``, keeping the query string (307 keeps the method)."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008, "reason": "use /apps/{name}/..."})
        return
    location = scope["path"] + "/"
    if scope.get("query_string"):
        location += "?" + scope["query_string"].decode("latin-1")
    await RedirectResponse(location, status_code=307)(scope, receive, send)


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__, "mode": request.app.settings.mode})


async def _readyz(request: Request) -> Response:
    host: Host = request.app
    checks: dict[str, Any] = {"started": host.started}
    ok = host.started
    for name, probe in host.readiness.items():
        try:
            await asyncio.wait_for(probe(), 5)
            checks[name] = True
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"
            ok = False
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


async def _nocosup_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NocosupError)
    return error_response(exc)


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    message = exc.detail if exc.status_code != 404 else f"no route for {request.url.path}"
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("INTERNAL_ERROR", "internal error; see the server log"), status_code=500
    )
