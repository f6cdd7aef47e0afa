"""Tenant apps running inside this process: boot, serve, stop, remove.

Boots are single-flight: every caller of :meth:`LocalRuntime.start` (admin API, first
requests, commands) awaits the same task, so an app is never built twice nor seen
half-built. Start, stop and remove of one app are serialised by a per-app lock; different
apps never wait for each other. A failing factory or lifespan puts only that app in
``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nocosup import templates, validation
from nocosup.appctx import AppContext
from nocosup.errors import (
    AppFailed,
    AppInitializing,
    AppNotFound,
    AppStopped,
    NocosupError,
    PayloadTooLarge,
)
from nocosup.lifespan import LifespanRunner
from nocosup.provisioning import TenantDatabase
from nocosup.registry import AppRecord
from nocosup.responses import error_response, send_error
from nocosup.status import BOOTING, AppStatus
from nocosup.storage import remove_app_files

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.runtime")

#: Told of every status change of an app here (``None``: the app left this process).
StatusListener = Callable[[str, AppStatus | None, str | None], None]


@contextlib.asynccontextmanager
async def _no_guard(name: str) -> AsyncIterator[None]:
    yield


@dataclass(eq=False)
class Tenant:
    """One app in this process: its config, its status and, while up, its ASGI app."""

    record: AppRecord
    status: AppStatus = AppStatus.STOPPED
    error: str | None = None
    app: ASGIApp | None = None
    lifespan: LifespanRunner | None = None
    boot: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    inflight: int = 0
    drained: asyncio.Event | None = None
    #: Request body limit in bytes (options.maxBodySize, else NOCOSUP_MAX_BODY_SIZE).
    body_limit: int = 0

    @property
    def name(self) -> str:
        return self.record.name


class LocalRuntime:
    """The apps of one environment that run in this process."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.settings = host.settings
        self.environment = host.settings.environment_name
        self.databases = host.databases
        self.tenants: dict[str, Tenant] = {}
        #: Wraps every boot; a worker swaps in the Redis startup lock so an app boots in
        #: one process at a time across its environments and replicas. A guard that
        #: loses its hold aborts the boot by raising inside it.
        self.boot_guard: Callable[[str], AbstractAsyncContextManager[Any]] = _no_guard
        #: Core listeners (the worker's status reports): called synchronously, before
        #: plugins hear of the change, and never through a hook a plugin could break.
        self.status_listeners: list[StatusListener] = []

    # --- configuration ---------------------------------------------------------------

    def load(self, record: AppRecord) -> Tenant:
        """Know ``record`` (or refresh its config); changes take effect on the next start."""
        tenant = self.tenants.get(record.name)
        if tenant is None:
            tenant = self.tenants[record.name] = Tenant(record)
        else:
            tenant.record = record
        # worked out once per config, not per request
        tenant.body_limit = validation.body_limit(record.options, self.settings.max_body_size)
        return tenant

    def get(self, name: str) -> Tenant:
        tenant = self.tenants.get(name)
        if tenant is None:
            raise AppNotFound(name)
        return tenant

    def context(self, tenant: Tenant) -> AppContext:
        return AppContext(tenant.record, self.environment, self.settings.instance_id, self.host)

    async def create(self, record: AppRecord) -> Tenant:
        """Provision the app's database, then know the app. Raises if provisioning fails."""
        await self.databases.create(TenantDatabase.from_json(record.database))
        tenant = self.load(record)
        await self.host.hooks.notify("app_created", app=self.context(tenant))
        return tenant

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, name: str) -> Tenant:
        """Boot the app unless it runs; concurrent callers share one boot."""
        tenant = self.get(name)
        if tenant.status is AppStatus.RUNNING:
            return tenant
        await asyncio.shield(self._boot_task(tenant))
        return tenant

    def _boot_task(self, tenant: Tenant) -> asyncio.Task[None]:
        if tenant.boot is None or tenant.boot.done():
            self._set_status(tenant, AppStatus.PREPARING)
            tenant.boot = asyncio.create_task(self._boot(tenant), name=f"boot:{tenant.name}")
        return tenant.boot

    async def _boot(self, tenant: Tenant) -> None:
        async with tenant.lock:
            if tenant.status is AppStatus.RUNNING:
                return
            if tenant.status is not AppStatus.PREPARING:
                self._set_status(tenant, AppStatus.PREPARING)
            ctx = self.context(tenant)
            try:
                async with self.boot_guard(tenant.name):
                    self._set_status(tenant, AppStatus.INITIALIZING)
                    if tenant.record.template is not None:
                        app = await templates.build(tenant.record.template, ctx)
                    else:
                        app = await self.host.hooks.app_factory(ctx)
                    if app is None:
                        raise RuntimeError("no plugin built the app (app_factory returned None)")
                    # the lifespan goes to the bare app: middleware wraps requests only
                    tenant.lifespan = LifespanRunner(app, tenant.name)
                    for wrap in reversed(self.host.hooks.tenant_wrappers(ctx)):
                        app = wrap(app)
                    tenant.app = app
                    self._set_status(tenant, AppStatus.INITIALIZED)
                    await self.host.hooks.before_app_start(ctx)
                    await tenant.lifespan.startup()
            except Exception as exc:
                log.exception("app %s failed to start", tenant.name)
                if tenant.lifespan is not None:
                    await tenant.lifespan.abort()
                tenant.app = None
                tenant.lifespan = None
                self._set_status(tenant, AppStatus.ERROR, f"{type(exc).__name__}: {exc}")
                return
            self._set_status(tenant, AppStatus.RUNNING)
        await self.host.hooks.notify("after_app_start", app=ctx)

    async def stop(self, name: str) -> Tenant:
        """Stop the app: refuse new requests, let in-flight ones finish, leave its lifespan."""
        tenant = self.get(name)
        async with tenant.lock:
            if tenant.status in (AppStatus.STOPPED, AppStatus.NOT_FOUND):
                return tenant
            if tenant.status is AppStatus.ERROR or tenant.app is None:
                self._set_status(tenant, AppStatus.STOPPED)
                return tenant
            ctx = self.context(tenant)
            self._set_status(tenant, AppStatus.STOPPING)
            await self.host.hooks.notify("before_app_stop", app=ctx)
            await self._drain(tenant)
            error = None
            try:
                if tenant.lifespan is not None:
                    await tenant.lifespan.shutdown()
            except Exception as exc:
                log.exception("app %s failed to shut down cleanly", tenant.name)
                error = f"{type(exc).__name__}: {exc}"
            tenant.app = None
            tenant.lifespan = None
            self._set_status(tenant, AppStatus.STOPPED, error)
        await self.host.hooks.notify("after_app_stop", app=ctx)
        return tenant

    async def _drain(self, tenant: Tenant) -> None:
        if tenant.inflight == 0:
            return
        tenant.drained = asyncio.Event()
        try:
            await asyncio.wait_for(tenant.drained.wait(), self.settings.stop_grace)
        except TimeoutError:
            log.warning(
                "app %s stopped with %d requests still in flight", tenant.name, tenant.inflight
            )
        finally:
            tenant.drained = None

    async def remove(self, record: AppRecord, drop_database: bool) -> None:
        """Stop the app, forget it, and drop its database and files only if asked.

        Works for an app this process does not know too (a retried delete, a replica that
        never served it): the database to drop is named by ``record``.
        """
        if record.name in self.tenants:
            await self.stop(record.name)
        if drop_database:
            await self.databases.drop(TenantDatabase.from_json(record.database))
            await asyncio.to_thread(remove_app_files, self.settings, record.name)
        self.tenants.pop(record.name, None)
        for listener in self.status_listeners:
            listener(record.name, None, None)
        ctx = AppContext(record, self.environment, self.settings.instance_id, self.host)
        await self.host.hooks.notify("app_removed", app=ctx, database_dropped=drop_database)

    async def stop_all(self) -> None:
        """Stop every app (host shutdown), concurrently."""
        names = [n for n, t in self.tenants.items() if t.status is not AppStatus.STOPPED]
        results = await asyncio.gather(*(self.stop(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("app %s did not stop cleanly: %r", name, result)

    def _set_status(self, tenant: Tenant, status: AppStatus, error: str | None = None) -> None:
        if tenant.status is status and tenant.error == error:
            return
        tenant.status = status
        tenant.error = error
        for listener in self.status_listeners:
            listener(tenant.name, status, error)
        self.host.status_changed(self.context(tenant), status, error)

    # --- serving ---------------------------------------------------------------------

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request for app ``name``: boot it if needed, else answer why not.

        ``scope`` is the host's copy with ``root_path`` already pointing at the app.
        """
        tenant = self.tenants.get(name)
        if tenant is None or tenant.status is not AppStatus.RUNNING:
            try:
                tenant = await self._ready(name, tenant)
            except NocosupError as exc:
                await send_error(scope, receive, send, exc)
                return
        app = tenant.app
        assert app is not None
        if tenant.lifespan is not None:
            scope["state"] = tenant.lifespan.state.copy()
        limiter: _BodyLimit | None = None
        if scope["type"] == "http":
            limit = tenant.body_limit
            declared, chunked = _framing(scope["headers"])
            if declared is not None and declared > limit:
                if declared <= limit + validation.DRAIN:  # a little over: read it, so
                    await drain(receive)  # that the client gets the 413, not a reset
                await send_error(scope, receive, send, PayloadTooLarge(limit))
                return
            # A Content-Length within the limit is held by the server (HTTP/1.1 framing:
            # it never hands over more), and a GET or HEAD without one has no body: only
            # other bodies are counted as they stream.
            if declared is None and (chunked or scope["method"] not in ("GET", "HEAD")):
                limiter = _BodyLimit(limit, scope, receive, send)
                receive, send = limiter.receive, limiter.send
        tenant.inflight += 1
        try:
            await app(scope, receive, send)
        except Exception:
            if limiter is None or not limiter.tripped:
                raise
            # the app saw a disconnect where the body went over: its complaint is expected
            log.info("app %s: request body over %d bytes cut short", name, limiter.limit)
        finally:
            tenant.inflight -= 1
            if tenant.drained is not None and tenant.inflight == 0:
                tenant.drained.set()

    async def _ready(self, name: str, tenant: Tenant | None) -> Tenant:
        """The tenant once running, or the error that explains why it is not."""
        if tenant is None:
            raise AppNotFound(name)
        if tenant.status is AppStatus.ERROR:
            raise AppFailed(name, tenant.error)
        if tenant.status is AppStatus.STOPPING or tenant.record.desired_state == "stopped":
            raise AppStopped(name)
        if tenant.status is AppStatus.STOPPED or tenant.status in BOOTING:
            boot = self._boot_task(tenant)
            done, _ = await asyncio.wait({boot}, timeout=self.settings.boot_wait)
            if not done:
                raise AppInitializing(name)
        # the boot moves the status on: a fresh variable drops mypy's narrowing from above
        status: AppStatus = tenant.status
        if status is AppStatus.ERROR:
            raise AppFailed(name, tenant.error)
        if status is not AppStatus.RUNNING:
            raise AppStopped(name)
        return tenant

    def snapshot(self, name: str) -> dict[str, Any]:
        """Status of one app here, for the API and the worker's reports."""
        tenant = self.tenants.get(name)
        if tenant is None:
            return {"status": AppStatus.NOT_FOUND.value, "error": None}
        return {"status": tenant.status.value, "error": tenant.error}


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length when given and readable, whether a Transfer-Encoding is), in one
    pass over the raw headers (no Headers object on the hot path)."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            declared = int(value) if value.isdigit() and len(value) <= 20 else None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def drain(receive: Receive, budget: int = validation.DRAIN) -> None:
    """Read and drop at most ``budget`` more bytes of a request body."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _BodyLimit:
    """Counts a request body while the app reads it. Past ``limit`` the app is told the
    client left (``http.disconnect``) and the client gets 413 PAYLOAD_TOO_LARGE, unless the
    response had already started (then the response is left incomplete and the server
    drops the connection). Past the limit at most ``validation.DRAIN`` more bytes are read,
    and dropped, so that a client that overshoots a little sees the 413: nothing past the
    limit is held."""

    def __init__(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit = limit
        self._scope = scope
        self.size = 0
        self.tripped = False
        self.started = False
        self._receive = receive
        self._send = send

    async def receive(self) -> Message:
        if self.tripped:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.tripped = True
                if message.get("more_body", False):
                    await drain(self._receive)
                if not self.started:
                    self.started = True
                    response = error_response(PayloadTooLarge(self.limit))
                    await response(self._scope, self._receive, self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.tripped:
            return  # the 413 (or a cut-short response) is what the client gets
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
