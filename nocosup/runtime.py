"""Tenant apps running inside this process: boot, serve, stop, idle, remove.

Boots are single-flight: every caller of :meth:`LocalRuntime.start` (admin API, first
requests, commands) awaits the same task, so an app is never built twice nor seen
half-built. Start, stop and remove of one app are serialised by a per-app lock; different
apps never wait for each other. A failing factory or lifespan puts only that app in
``error``.

Scale to zero: a request records when it ended on its tenant (a monotonic time, no I/O);
:meth:`LocalRuntime.upkeep` puts an app ``idle`` after its idle timeout without traffic
(requests and WebSockets in flight count as traffic), and the next request boots it again.
Boots pass :class:`~nocosup.admission.BootAdmission` (NOCOSUP_BOOT_CONCURRENCY) and, with
NOCOSUP_MAX_RUNNING_APPS, first make room by putting the least recently used app idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nocosup import templates, validation
from nocosup.admission import BootAdmission, RequestGate
from nocosup.appcommands import CommandRun
from nocosup.appctx import AppContext
from nocosup.errors import (
    AppCapacity,
    AppCommanding,
    AppFailed,
    AppInitializing,
    AppNotFound,
    AppOverloaded,
    AppStopped,
    EnvironmentUnavailable,
    NocosupError,
    PayloadTooLarge,
)
from nocosup.lifespan import LifespanRunner
from nocosup.provisioning import TenantDatabase
from nocosup.registry import AppRecord, iso_time
from nocosup.responses import error_response, send_error
from nocosup.status import ASLEEP, BOOTING, AppStatus
from nocosup.storage import remove_app_files

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.runtime")

_monotonic = time.monotonic
#: Statuses that give up a place among NOCOSUP_MAX_RUNNING_APPS.
_VACANT = frozenset({AppStatus.IDLE, AppStatus.STOPPED, AppStatus.ERROR, AppStatus.NOT_FOUND})
#: Longest pause of the idle check (it runs sooner for short idle timeouts).
IDLE_CHECK = 1.0

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
    #: Seconds without traffic before going idle (options.idleTimeout, else
    #: NOCOSUP_IDLE_TIMEOUT; 0 never).
    idle_timeout: float = 0.0
    #: options.maxConcurrency / maxQueue, or None when the app has no cap.
    gate: RequestGate | None = None
    #: time.monotonic() when its last request ended (0: none yet in this process).
    last_seen: float = 0.0
    #: time.monotonic() when it last came up: idle timing starts there too.
    booted_at: float = 0.0
    #: Being put idle (by its idle timeout or to make room): requests wait, then wake it.
    going_idle: bool = False
    #: Being removed from this process (moved elsewhere, or deleted): new requests get a
    #: 503 with Retry-After while in-flight ones finish.
    leaving: bool = False

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def active_at(self) -> float:
        """When it last served or came up: what idle timing and LRU eviction go by."""
        return self.last_seen if self.last_seen > self.booted_at else self.booted_at

    def asleep(self) -> AppStatus:
        """What it is when not running: ``idle`` when wanted, ``stopped`` when not."""
        return AppStatus.IDLE if self.record.desired_state == "running" else AppStatus.STOPPED


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
        self.admission = BootAdmission(self.settings.boot_concurrency)
        #: Apps holding a place among NOCOSUP_MAX_RUNNING_APPS: booting, running, stopping.
        self.occupied: dict[str, Tenant] = {}
        self._room = asyncio.Lock()

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
        tenant.idle_timeout = validation.idle_timeout(record.options, self.settings.idle_timeout)
        limit, queue = validation.concurrency(record.options)
        if not limit:
            tenant.gate = None
        elif tenant.gate is None:
            tenant.gate = RequestGate(limit, queue)
        else:  # requests in flight keep their slots
            tenant.gate.limit, tenant.gate.queue = limit, queue
        if tenant.status in ASLEEP:
            # a lazy app is idle (wanted, not running); one an operator stopped, stopped
            self._set_status(tenant, tenant.asleep())
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
        reason = "admin" if self.host.started else "host_start"
        await asyncio.shield(self._boot_task(tenant, reason))
        return tenant

    def _boot_task(self, tenant: Tenant, reason: str) -> asyncio.Task[None]:
        """The boot under way, or a new one; ``reason`` is counted (nocosup_boots_total)."""
        if tenant.boot is None or tenant.boot.done():
            self._set_status(tenant, AppStatus.PREPARING)
            boot = self._boot(tenant, reason)
            tenant.boot = asyncio.create_task(boot, name=f"boot:{tenant.name}")
        return tenant.boot

    async def _boot(self, tenant: Tenant, reason: str) -> None:
        began = _monotonic()
        try:
            await self._booted(tenant)
        finally:
            running = tenant.status is AppStatus.RUNNING
            seconds = _monotonic() - began if running else None
            self.host.metrics.boot(tenant.name, self.environment, reason, seconds)

    async def _booted(self, tenant: Tenant) -> None:
        async with self.admission.slot(), tenant.lock:
            if tenant.status is AppStatus.RUNNING:
                return
            if tenant.status is not AppStatus.PREPARING:
                self._set_status(tenant, AppStatus.PREPARING)
            try:
                await self._make_room(tenant)
            except AppCapacity:
                self._set_status(tenant, tenant.asleep())
                raise
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
            tenant.booted_at = _monotonic()
            self._set_status(tenant, AppStatus.RUNNING)
        await self.host.hooks.notify("after_app_start", app=ctx)

    async def _make_room(self, tenant: Tenant) -> None:
        """Take a place among NOCOSUP_MAX_RUNNING_APPS, putting the least recently used
        app without a request in flight idle when all are taken; AppCapacity if none can."""
        limit = self.settings.max_running_apps
        async with self._room:
            while limit and tenant.name not in self.occupied and len(self.occupied) >= limit:
                free = [
                    t
                    for t in self.occupied.values()
                    if t.status is AppStatus.RUNNING
                    and t.inflight == 0
                    and not t.going_idle
                    and t.record.desired_state == "running"
                ]
                if not free:
                    raise AppCapacity(tenant.name, limit)
                victim = min(free, key=lambda t: t.active_at)
                log.info("app %s goes idle to make room for %s", victim.name, tenant.name)
                if await self.put_idle(victim.name):
                    self.host.metrics.app_event("eviction", victim.name, self.environment)
            self.occupied[tenant.name] = tenant

    async def run_command(
        self, name: str, command: str, args: dict[str, Any]
    ) -> tuple[AppStatus, str | None, bool]:
        """Run maintenance ``command`` on app ``name`` here: status ``commanding`` (its
        message the command's progress) meanwhile, the previous status after, ``error``
        with the reason if it fails. Returns (status, error, ok)."""
        tenant = self.get(name)
        ctx = self.context(tenant)
        found = self.host.hooks.app_commands(ctx).get(command)
        if found is None:
            offered = ", ".join(sorted(self.host.hooks.app_commands(ctx))) or "none"
            return tenant.status, f"no command {command!r} here (offered: {offered})", False
        async with tenant.lock:  # no boot or stop of the app meanwhile
            before, before_error = tenant.status, tenant.error

            def progress(message: str) -> None:
                self._set_status(tenant, AppStatus.COMMANDING, message)

            progress(f"{command}: started")
            try:
                await found.run(CommandRun(ctx, progress), args)
            except Exception as exc:
                log.exception("command %s of app %s failed", command, name)
                error = f"{command} failed: {type(exc).__name__}: {exc}"
                if tenant.app is not None:
                    # an app in error does not run: leave its lifespan, as a failed boot does
                    await self._shut_down(tenant, AppStatus.ERROR)
                self._set_status(tenant, AppStatus.ERROR, error)
                return AppStatus.ERROR, error, False
            self._set_status(tenant, before, before_error)
        log.info("command %s of app %s done", command, name)
        return before, None, True

    async def stop(self, name: str) -> Tenant:
        """Stop the app: refuse new requests, let in-flight ones finish, leave its lifespan."""
        tenant = self.get(name)
        async with tenant.lock:
            if tenant.status in (AppStatus.STOPPED, AppStatus.NOT_FOUND):
                return tenant
            if tenant.status is AppStatus.ERROR or tenant.app is None:
                self._set_status(tenant, AppStatus.STOPPED)
                return tenant
            ctx = await self._shut_down(tenant, AppStatus.STOPPED)
        await self.host.hooks.notify("after_app_stop", app=ctx)
        return tenant

    async def put_idle(self, name: str) -> bool:
        """Stop a running app that is wanted running, so the next request boots it again
        (its idle timeout passed, or its place is needed). False when it was not running,
        or a request is in flight."""
        tenant = self.get(name)
        tenant.going_idle = True
        try:
            async with tenant.lock:
                if (
                    tenant.status is not AppStatus.RUNNING
                    or tenant.inflight
                    or tenant.record.desired_state != "running"
                ):
                    return False
                ctx = await self._shut_down(tenant, AppStatus.IDLE)
        finally:
            tenant.going_idle = False
        await self.host.hooks.notify("after_app_stop", app=ctx)
        return True

    async def _shut_down(self, tenant: Tenant, final: AppStatus) -> AppContext:
        """Refuse new requests, let in-flight ones finish, leave the lifespan (the caller
        holds the tenant's lock)."""
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
        self._set_status(tenant, final, error)
        return ctx

    async def upkeep(self) -> None:
        """Put apps idle once their idle timeout passed without traffic; runs as long as
        the host (started by the role)."""
        while True:
            await asyncio.sleep(self._idle_check())
            now = _monotonic()
            for tenant in list(self.occupied.values()):
                timeout = tenant.idle_timeout
                if (
                    timeout
                    and tenant.status is AppStatus.RUNNING
                    and not tenant.inflight
                    and not tenant.going_idle
                    and now - tenant.active_at >= timeout
                ):
                    log.info(
                        "app %s idle for %ss: stopping it until its next request",
                        tenant.name,
                        timeout,
                    )
                    tenant.going_idle = True
                    self.host.spawn(self._idle_stop(tenant.name))

    async def _idle_stop(self, name: str) -> None:
        if await self.put_idle(name):
            self.host.metrics.app_event("idle_stop", name, self.environment)

    def _idle_check(self) -> float:
        """Seconds to the next idle check: a quarter of the shortest idle timeout of a
        running app, at most IDLE_CHECK."""
        timeouts = [t.idle_timeout for t in self.occupied.values() if t.idle_timeout]
        return max(0.05, min(IDLE_CHECK, min(timeouts) / 4)) if timeouts else IDLE_CHECK

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
            self.tenants[record.name].leaving = True
            await self.stop(record.name)
        if drop_database:
            await self.databases.drop(TenantDatabase.from_json(record.database))
            await asyncio.to_thread(remove_app_files, self.settings, record.name)
        self.tenants.pop(record.name, None)
        self.occupied.pop(record.name, None)
        self.host.metrics.forget(record.name)
        for listener in self.status_listeners:
            listener(record.name, None, None)
        ctx = AppContext(record, self.environment, self.settings.instance_id, self.host)
        await self.host.hooks.notify("app_removed", app=ctx, database_dropped=drop_database)

    async def stop_all(self) -> None:
        """Stop every app (host shutdown), concurrently."""
        names = [n for n, t in self.tenants.items() if t.status not in ASLEEP]
        results = await asyncio.gather(*(self.stop(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("app %s did not stop cleanly: %r", name, result)

    def _set_status(self, tenant: Tenant, status: AppStatus, error: str | None = None) -> None:
        if tenant.status is status and tenant.error == error:
            return
        tenant.status = status
        tenant.error = error
        if status in _VACANT:
            self.occupied.pop(tenant.name, None)
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
        gate = tenant.gate
        tenant.inflight += 1  # waiting in line is traffic too: the app stays up for it
        try:
            if gate is not None and scope["type"] == "http":
                if not await gate.enter():
                    self.host.metrics.app_event("overload", name, self.environment)
                    await send_error(
                        scope, receive, send, AppOverloaded(name, gate.limit, gate.queue)
                    )
                    return
                try:
                    await app(scope, receive, send)
                finally:
                    gate.leave()
            else:
                await app(scope, receive, send)
        except Exception:
            if limiter is None or not limiter.tripped:
                raise
            # the app saw a disconnect where the body went over: its complaint is expected
            log.info("app %s: request body over %d bytes cut short", name, limiter.limit)
        finally:
            tenant.inflight -= 1
            tenant.last_seen = _monotonic()
            if tenant.drained is not None and tenant.inflight == 0:
                tenant.drained.set()

    async def _ready(self, name: str, tenant: Tenant | None) -> Tenant:
        """The tenant once running, or the error that explains why it is not."""
        if tenant is None:
            raise AppNotFound(name)
        try:
            # the whole wait (an idle stop to finish, a place in the boot queue, the
            # boot) counts against NOCOSUP_BOOT_WAIT
            async with asyncio.timeout(self.settings.boot_wait):
                await self._wake(tenant)
        except TimeoutError:
            raise AppInitializing(name) from None
        return tenant

    async def _wake(self, tenant: Tenant) -> None:
        """Boot the app for a request (or wait for the boot under way), unless an operator
        stopped it or it failed."""
        name = tenant.name
        for _attempt in range(3):  # an idle stop may end just as the request came in
            status = tenant.status
            if status is AppStatus.RUNNING:
                return
            if status is AppStatus.ERROR:
                raise AppFailed(name, tenant.error)
            if status is AppStatus.COMMANDING:
                raise AppCommanding(name, tenant.error)
            if tenant.record.desired_state == "stopped":
                raise AppStopped(name)
            if status is AppStatus.STOPPING:
                if tenant.leaving:
                    raise EnvironmentUnavailable(
                        f"application {name!r} is leaving environment {self.environment!r}; "
                        "retry shortly"
                    )
                if not tenant.going_idle:
                    raise AppStopped(name)
                async with tenant.lock:  # the idle stop ends: then boot again
                    pass
                continue
            if status in ASLEEP or status in BOOTING:
                reason = "wake" if tenant.booted_at else "first_request"
                await asyncio.shield(self._boot_task(tenant, reason))
        # the boot moves the status on: a fresh variable drops mypy's narrowing from above
        final: AppStatus = tenant.status
        if final is AppStatus.ERROR:
            raise AppFailed(name, tenant.error)
        if final is not AppStatus.RUNNING:
            raise AppStopped(name)

    def snapshot(self, name: str) -> dict[str, Any]:
        """Status of one app here, for the API and the worker's reports."""
        tenant = self.tenants.get(name)
        if tenant is None:
            return {"status": AppStatus.NOT_FOUND.value, "error": None, "last_seen_at": None}
        seen = self.last_seen(tenant)
        return {
            "status": tenant.status.value,
            "error": tenant.error,
            "last_seen_at": iso_time(seen) if seen else None,
        }

    def last_seen(self, tenant: Tenant) -> float | None:
        """Wall-clock time (epoch seconds) of the app's last traffic here: now while a
        request or WebSocket is in flight, None when it has served none."""
        if tenant.inflight:
            return time.time()
        if not tenant.last_seen:
            return None
        return time.time() - (_monotonic() - tenant.last_seen)


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
