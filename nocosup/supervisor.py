"""The supervisor's app management: the logic behind the admin API, in either mode.

It writes the registry (the source of truth) and drives a process adapter (local or
remote). Operations on one app are serialised by a per-app lock, so a delete never
interleaves with a start of the same app; different apps never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from nocosup import validation as v
from nocosup.appctx import AppContext
from nocosup.environments import EnvironmentDirectory
from nocosup.errors import AppStateConflict, DatabaseError, InvalidInput, NocosupError
from nocosup.plugins import await_me_maybe
from nocosup.process import EnvResult, ProcessAdapter, failure_type
from nocosup.registry import AppRecord, Registry
from nocosup.status import AppStatus

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.supervisor")


class Supervisor:
    def __init__(
        self,
        host: Host,
        registry: Registry,
        process: ProcessAdapter,
        environments: EnvironmentDirectory,
    ) -> None:
        self.host = host
        self.settings = host.settings
        self.registry = registry
        self.process = process
        self.environments = environments
        self._locks: dict[str, asyncio.Lock] = {}

    # --- start-up --------------------------------------------------------------------

    async def restore(self) -> None:
        """Learn every app from the registry and start those that start with the supervisor."""
        records = await self.registry.list()
        await self.process.restore(records)
        eager = [
            r for r in records if r.desired_state == "running" and r.start_mode == "with_supervisor"
        ]
        for record in eager:
            self.host.spawn(self._start_logged(record))

    async def _start_logged(self, record: AppRecord) -> None:
        try:
            results = await self.process.start(record)
        except Exception:
            log.exception("could not start %s with the supervisor", record.name)
            return
        for r in results:
            if not r.ok:
                log.error("app %s did not start in %s: %s", record.name, r.environment, r.error)

    def _changed(self, record: AppRecord, action: str, **details: Any) -> None:
        """Tell live listeners (the web page) at once, and plugins in order, that an app's
        registration changed (``action``: created, updated or removed)."""
        self.host.events.publish({"type": "app_changed", "app": record.name, "action": action})
        hook = {"created": "app_registered", "updated": "app_updated"}.get(
            action, "app_unregistered"
        )
        app = AppContext(record, None, self.settings.instance_id, self.host)
        self.host.notify_later(hook, app=app, **details)

    def _locked(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # --- reads -----------------------------------------------------------------------

    async def list_apps(self) -> list[dict[str, Any]]:
        records = await self.registry.list()
        statuses = await await_me_maybe(self.process.statuses(records))
        return [self._app_json(r, statuses.get(r.name, {})) for r in records]

    async def get_app(self, name: str) -> dict[str, Any]:
        record = await self.registry.get(v.app_name(name))
        return await self._describe(record)

    async def _describe(self, record: AppRecord) -> dict[str, Any]:
        statuses = await await_me_maybe(self.process.statuses([record]))
        return self._app_json(record, statuses.get(record.name, {}))

    def _app_json(self, record: AppRecord, per_env: dict[str, dict[str, Any]]) -> dict[str, Any]:
        out = record.to_json()
        out["statuses"] = {
            env: per_env.get(env, {}).get("status", AppStatus.NOT_FOUND.value)
            for env in record.environments
        }
        out["errors"] = {env: info["error"] for env, info in per_env.items() if info.get("error")}
        out["last_seen_at"] = {
            env: per_env.get(env, {}).get("last_seen_at") for env in record.environments
        }
        return out

    # --- writes ----------------------------------------------------------------------

    async def create_app(self, data: dict[str, Any]) -> dict[str, Any]:
        """Validate everything, claim the name, provision the database; undo on failure."""
        v.check_fields(data, v.CREATE_FIELDS)
        if "name" not in data:
            raise InvalidInput("name is required", field="name")
        name = v.app_name(data["name"])
        title = v.title(data.get("title"), name)
        options = v.options(data.get("options"))
        spec = self.host.databases.spec_for(
            name, options.get("dbConnType"), options.get("dbProvisioner")
        )
        options["dbConnType"] = spec.conn_type
        environments = await self._placement(v.environments(data.get("environments")))
        database = spec.to_json()
        record = AppRecord(
            name=name, title=title, environments=environments, options=options, database=database
        )
        async with self._locked(name):
            await self.registry.insert(record)
            try:
                await self.process.create(record)
            except BaseException as exc:
                await self._undo_create(record, exc)
                raise
        self._changed(record, "created")
        app = await self._describe(record)
        if record.start_mode == "with_supervisor":
            # created either way: a failed first start shows in statuses and results
            results = await self.process.start(record)
            app = await self._describe(record)
            app["results"] = _results_json(results)
        return app

    async def _undo_create(self, record: AppRecord, exc: BaseException) -> None:
        log.warning("creating %s failed, removing it again: %r", record.name, exc)
        with contextlib.suppress(Exception):
            await self.process.remove(record, drop_database=False)
        await self.registry.delete(record.name)
        if not isinstance(exc, NocosupError):
            raise DatabaseError(f"could not create application {record.name!r}: {exc}") from exc

    async def _placement(self, wanted: list[str] | None) -> list[str]:
        """Check the environments asked for, or choose one."""
        known = {e["name"]: e for e in await self.environments.list()}
        if wanted is None:
            return [await self._least_loaded(known)]
        for name in wanted:
            if name not in known:
                raise InvalidInput(
                    f"environment {name!r} is not registered; known: "
                    f"{', '.join(sorted(known)) or 'none'}",
                    field="environments",
                )
        return wanted

    async def _least_loaded(self, known: dict[str, dict[str, Any]]) -> str:
        online = [n for n, e in known.items() if e["status"] == "online"]
        if not online:
            raise InvalidInput(
                "no environment is online to place the application on", field="environments"
            )
        if len(online) == 1:
            return online[0]
        load = dict.fromkeys(online, 0)
        for record in await self.registry.list():
            for env in record.environments:
                if env in load:
                    load[env] += 1
        return min(online, key=lambda n: (load[n], n))

    async def update_app(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        v.check_fields(data, v.PATCH_FIELDS)
        async with self._locked(name):
            record = await self.registry.get(v.app_name(name))
            changes: dict[str, Any] = {}
            if "title" in data:
                changes["title"] = v.title(data["title"], record.title)
            if "options" in data:
                if not isinstance(data["options"], dict):
                    raise InvalidInput(
                        "options must be a JSON object (a merge patch)", field="options"
                    )
                merged = v.options(v.merge_patch(record.options, data["options"]))
                for key in ("dbConnType", "dbProvisioner"):
                    if merged.get(key) != record.options.get(key):
                        raise InvalidInput(
                            f"options.{key} cannot change after creation", field=f"options.{key}"
                        )
                changes["options"] = merged
            if changes:
                record = await self.registry.update(record.changed(**changes))
                await self.process.update(record)
                self._changed(record, "updated", changed=sorted(changes))
        return await self._describe(record)

    async def delete_app(
        self, name: str, drop_database: bool, force: bool = False
    ) -> dict[str, Any]:
        """Remove the app everywhere; keep it registered if an environment could not
        remove it, unless ``force`` (an environment gone for good keeps its data)."""
        async with self._locked(name):
            record = await self.registry.get(v.app_name(name))
            stopped = record.changed(desired_state="stopped")
            await self.registry.update(stopped)
            results = await self.process.remove(stopped, drop_database)
            failed = [r for r in results if not r.ok]
            if failed and not force:
                detail = "; ".join(f"{r.environment}: {r.error or r.status}" for r in failed)
                raise failure_type(failed)(
                    f"application {name!r} could not be removed everywhere, so it is kept "
                    f"({detail}); retry, or pass force=true to forget it anyway",
                    results=_results_json(results),
                )
            await self.registry.delete(name)
            if failed:
                await self.process.forget(stopped)
        self._locks.pop(name, None)
        dropped = drop_database and not failed
        self._changed(stopped, "removed", database_dropped=dropped)
        return {
            "name": name,
            "removed": True,
            "database_dropped": dropped,
            "results": _results_json(results),
        }

    async def start_app(self, name: str, wait: bool = True) -> tuple[dict[str, Any], bool]:
        """Start the app; returns (app JSON, finished)."""
        async with self._locked(name):
            record = await self.registry.get(v.app_name(name))
            if record.desired_state != "running":
                record = await self.registry.update(record.changed(desired_state="running"))
                self._changed(record, "updated", changed=["desired_state"])
        if not wait:
            self.host.spawn(self._start_logged(record))
            # let it take its first step, so the 202 shows the start under way (locally)
            await asyncio.sleep(0)
            return await self._describe(record), False
        return await self._start(record), True

    async def _start(self, record: AppRecord) -> dict[str, Any]:
        results = await self.process.start(record)
        return await self._checked(record, results, "start")

    async def stop_app(self, name: str, wait: bool = True) -> tuple[dict[str, Any], bool]:
        async with self._locked(name):
            record = await self.registry.get(v.app_name(name))
            if record.desired_state != "stopped":
                record = await self.registry.update(record.changed(desired_state="stopped"))
                self._changed(record, "updated", changed=["desired_state"])
        if not wait:
            self.host.spawn(self.process.stop(record))
            await asyncio.sleep(0)
            return await self._describe(record), False
        results = await self.process.stop(record)
        return await self._checked(record, results, "stop"), True

    async def _check_still_wanted(
        self, record: AppRecord, verb: str, results: list[EnvResult]
    ) -> None:
        """A start (stop) that did not end running (stopped) because a stop (start) of the
        same app came in meanwhile is a conflict between the two requests (409), not a
        failure of the environments."""
        try:
            fresh = await self.registry.get(record.name)
        except NocosupError:
            return
        wanted = "running" if verb == "start" else "stopped"
        if fresh.desired_state != wanted:
            other = "stop" if verb == "start" else "start"
            raise AppStateConflict(
                f"application {record.name!r} did not {verb}: a {other} of it came in "
                f"meanwhile (desired state now {fresh.desired_state!r})",
                app=await self._describe(fresh),
                results=_results_json(results),
            )

    async def _checked(
        self, record: AppRecord, results: list[EnvResult], verb: str
    ) -> dict[str, Any]:
        app = await self._describe(record)
        failed = [r for r in results if not r.ok]
        if failed:
            await self._check_still_wanted(record, verb, results)
            detail = "; ".join(f"{r.environment}: {r.error or r.status}" for r in failed)
            raise failure_type(failed)(
                f"application {record.name!r} did not {verb}: {detail}",
                app=app,
                results=_results_json(results),
            )
        app["results"] = _results_json(results)
        return app


def _results_json(results: list[EnvResult]) -> dict[str, Any]:
    return {r.environment: r.to_json() for r in results}
