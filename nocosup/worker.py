"""A worker environment: runs the commands it is sent and serves its apps.

The worker has no registry of its own: commands carry the app record, and an app it
was not told about (a first request after a restart) is looked up in the config cache.
It only ever runs apps whose ``environments`` include its ``ENVIRONMENT_NAME``.
"""

from __future__ import annotations

import logging

from redis.exceptions import ResponseError
from starlette.types import Receive, Scope, Send

from nocosup.admission import eager_cap
from nocosup.appcache import AppCache
from nocosup.commands import Command, RefusedCommand, Reply
from nocosup.errors import AppNotFound, EnvironmentUnavailable, NocosupError
from nocosup.heartbeat import StatusReporter, parse_status, status_context
from nocosup.provisioning import ForeignDatabase
from nocosup.rediskeys import Keys, split_member
from nocosup.registry import AppRecord
from nocosup.responses import send_error
from nocosup.runtime import LocalRuntime
from nocosup.status import AppStatus

log = logging.getLogger("nocosup.worker")


class Worker:
    def __init__(
        self, runtime: LocalRuntime, cache: AppCache, keys: Keys, reporter: StatusReporter
    ) -> None:
        self.runtime = runtime
        self.cache = cache
        self.keys = keys
        self.reporter = reporter
        self.env = runtime.environment
        self.instance = runtime.settings.instance_id

    def runs_here(self, record: AppRecord) -> bool:
        return self.env in record.environments

    def own_database(self, record: AppRecord) -> bool:
        """Whether ``record`` (from a command or the cache) names the database this worker
        derives for its app from its own settings; logged when it does not."""
        try:
            self.runtime.databases.derive(record.name, record.options, record.database)
        except ForeignDatabase as exc:
            log.warning("ignoring the record of %s: %s", record.name, exc.message)
            return False
        return True

    # --- commands ----------------------------------------------------------------------

    async def handle_command(self, command: Command) -> Reply:
        """Carry out one command; failures become a reply, never an exception."""
        try:
            status, error, ok = await self._execute(command)
        except RefusedCommand:
            raise
        except NocosupError as exc:
            status, error, ok = AppStatus.ERROR.value, exc.message, False
        except Exception as exc:
            log.exception("command %s %s failed", command.action, command.app)
            status, error, ok = AppStatus.ERROR.value, f"{type(exc).__name__}: {exc}", False
        log.info(
            "command %s %s -> %s%s",
            command.action,
            command.app,
            status,
            f" ({error})" if error else "",
        )
        # statuses reach Redis before the reply: whoever reads after the reply sees them
        await self.reporter.flush()
        return Reply(command.id, self.env, self.instance, ok, status, error)

    async def _execute(self, command: Command) -> tuple[str, str | None, bool]:
        if command.action == "ping":
            return "pong", None, True
        assert command.record is not None
        record = AppRecord.from_json(command.record)
        try:
            # the database is derived here, never taken from the command: a record naming
            # another one (a forged remove with drop_database) is refused
            self.runtime.databases.derive(record.name, record.options, record.database)
        except ForeignDatabase as exc:
            raise RefusedCommand(exc.message) from None
        if not self.runs_here(record) and command.action != "remove":
            return AppStatus.NOT_FOUND.value, f"not deployed to environment {self.env!r}", False
        if command.action == "create":
            tenant = await self.runtime.create(record)
            return tenant.status.value, None, True
        if command.action == "remove":
            await self.runtime.remove(record, bool(command.args.get("drop_database")))
            return AppStatus.NOT_FOUND.value, None, True
        self.runtime.load(record)
        if command.action == "update":
            snap = self.runtime.snapshot(record.name)
            return snap["status"], snap["error"], True
        if command.action == "run":
            name, args = command.args.get("command"), command.args.get("args", {})
            if not isinstance(name, str) or not isinstance(args, dict):
                return AppStatus.ERROR.value, "run needs a command name and args object", False
            status, error, ok = await self.runtime.run_command(record.name, name, args)
            return status.value, error, ok
        if command.action == "start":
            tenant = await self.runtime.start(record.name)
            return tenant.status.value, tenant.error, tenant.status is AppStatus.RUNNING
        tenant = await self.runtime.stop(record.name)
        return tenant.status.value, tenant.error, tenant.status is AppStatus.STOPPED

    # --- start-up ----------------------------------------------------------------------

    async def restore(self, only_new: bool = False) -> list[str]:
        """Learn this environment's apps from the cache; boot those that should run now:
        ``with_supervisor`` apps, and apps this environment last reported running.
        ``only_new``: leave the apps this worker knows already alone."""
        records = [r for r in await self.cache.all() if self.runs_here(r) and self.own_database(r)]
        if only_new:
            records = [r for r in records if r.name not in self.runtime.tenants]
        eager = []
        for record in records:
            self.runtime.load(record)
            if record.desired_state != "running":
                continue
            if record.start_mode == "with_supervisor" or await self._was_running(record.name):
                eager.append(record.name)
        running = sum(1 for t in self.runtime.tenants.values() if t.app is not None)
        return eager[: eager_cap(self.runtime.settings, len(eager), running)]

    async def _was_running(self, app: str) -> bool:
        """Whether a replica of this environment last reported ``app`` running; unreadable
        reports (and a status key that is not a hash) count as not running."""
        try:
            fields = await self.cache.redis.hgetall(self.keys.status(app))
        except ResponseError as exc:
            log.warning("statuses of %s unreadable, taken as not running: %r", app, exc)
            return False
        for field, raw in fields.items():
            report = parse_status(raw, self.reporter.signer, status_context(app, str(field)))
            if report is None:
                log.warning("skipping an unreadable status of %s (%.80r)", app, field)
                continue
            env, _ = split_member(str(field))
            if env == self.env and report["status"] == AppStatus.RUNNING.value:
                return True
        return False

    # --- serving -----------------------------------------------------------------------

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``/apps/{name}/...``; learn the app from the cache on first sight."""
        if name not in self.runtime.tenants:
            try:
                record = await self.cache.get(name)
            except Exception as exc:
                log.warning("config cache unreachable looking up %s: %r", name, exc)
                record = None
            if record is not None and not self.runs_here(record):
                # moved away (or never here): the supervisor routes anew, so retry there
                where = ", ".join(record.environments)
                gone = EnvironmentUnavailable(
                    f"application {name!r} is not deployed to environment {self.env!r} (it "
                    f"is on {where}); retry shortly"
                )
                await send_error(scope, receive, send, gone)
                return
            if record is None or not self.own_database(record):
                await send_error(scope, receive, send, AppNotFound(name))
                return
            self.runtime.load(record)
        await self.runtime.handle(name, scope, receive, send)
